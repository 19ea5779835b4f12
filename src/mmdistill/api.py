"""The Python API: train a model, distil teachers into a student, evaluate.

::

    from mmdistill import DataConfig, TrainConfig, build_data, build_model, distill, evaluate_model, train

    data = build_data(DataConfig(name="av_digits", level="hard"), val_fraction=0.1)
    teacher = build_model({"encoders": {"image": {"type": "conv", "channels": [16, 32, 64]},
                                        "audio": {"type": "conv", "channels": [16, 32, 64]}},
                           "fusion": {"type": "attention", "dim": 64}}, data.specs, data.num_classes)
    train(teacher, data, TrainConfig(epochs=12))
    student = build_model({"encoders": {"image": {"type": "conv", "channels": [16, 16]},
                                        "audio": {"type": "conv", "channels": [16, 16]}}},
                          data.specs, data.num_classes)
    distill(student, teacher, data, terms=[{"name": "kd", "weight": 1.0, "temperature": 4.0}])
    print(evaluate_model(student, data.test, teacher=teacher))

Teachers and students may be any ``nn.Module`` whose ``forward`` takes the batch dict.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from torch import nn

from .config import LossTermConfig, TrainConfig
from .data.dataset import DataSplits
from .distill.engine import FitResult, Trainer, resolve_device
from .distill.tasks import DistillationTask, SupervisedTask, Term
from .losses import build_loss


def make_terms(terms: Sequence[Term | LossTermConfig | dict | str]) -> list[Term]:
    """Terms from ``Term`` objects, config entries (``{"name": "kd", "weight": 1, "temperature": 4}``)
    or bare loss names."""
    out = []
    for i, term in enumerate(terms):
        if isinstance(term, Term):
            out.append(term)
            continue
        if isinstance(term, str):
            term = LossTermConfig(name=term)
        elif isinstance(term, dict):
            term = LossTermConfig.model_validate(term)
        out.append(Term(name=term.name, loss=build_loss(term.name, term.options, where=f"distill.terms[{i}]"),
                        weight=term.weight, student_path=term.student, teacher_path=term.teacher,
                        warmup=term.warmup))
    return out


def train(model: nn.Module, data: DataSplits, cfg: TrainConfig = TrainConfig(), *, device: str = "auto",
          seed: int = 0, run_dir: Path | None = None, save: Callable | None = None, label: str = "teacher") -> FitResult:
    """Train ``model`` with cross-entropy on ``data.train`` (model selection on ``data.val``)."""
    trainer = Trainer(cfg, device=resolve_device(device), seed=seed, run_dir=run_dir, save=save, label=label)
    return trainer.fit(SupervisedTask(model), data.train, data.val)


def distill(student: nn.Module, teachers: nn.Module | Sequence[nn.Module], data: DataSplits, *,
            terms: Sequence[Term | LossTermConfig | dict | str] = ("kd",), gamma: float = 1.0,
            cfg: TrainConfig = TrainConfig(), device: str = "auto", seed: int = 0, run_dir: Path | None = None,
            save: Callable | None = None, label: str = "student") -> FitResult:
    """Distil ``teachers`` into ``student``: minimise gamma * CE + sum_i weight_i * term_i."""
    task = DistillationTask(student, teachers, make_terms(terms), gamma=gamma)
    trainer = Trainer(cfg, device=resolve_device(device), seed=seed, run_dir=run_dir, save=save, label=label)
    result = trainer.fit(task, data.train, data.val)
    result.extra_params = sum(p.numel() for p in task.extra_parameters())
    return result
