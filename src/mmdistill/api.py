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
from typing import Callable, Mapping, Sequence

import pydantic
from torch import nn

from .config import EnsembleConfig, LossTermConfig, TrainConfig, format_validation_error
from .data.dataset import DataSplits
from .distill.engine import FitResult, Trainer, resolve_device
from .distill.ensemble import STRATEGIES, TeacherEnsemble
from .distill.hooks import OUTPUT
from .distill.tasks import DistillationTask, SupervisedTask, Term
from .errors import ConfigError, DataError
from .losses import build_loss


def make_terms(terms: Sequence[Term | LossTermConfig | dict | str],
               teacher_names: Sequence[str] = (), *, student: nn.Module | None = None,
               teachers: Sequence[nn.Module] = ()) -> list[Term]:
    """Terms from ``Term`` objects, config entries (``{"name": "kd", "weight": 1, "temperature": 4}``)
    or bare loss names; a config entry's ``source`` is looked up in ``teacher_names``.

    A feature loss's entry without ``student``/``teacher`` paths is placed through the models'
    feature points (:func:`~mmdistill.models.points.placements` of the loss's ``default_layer``),
    one term per (student path, teacher path) pair, so ``student`` and ``teachers`` are needed then;
    a logit loss reads the logits."""
    from .losses import LOSSES
    from .models.points import placements

    out = []
    for i, term in enumerate(terms):
        if isinstance(term, Term):
            out.append(term)
            continue
        where = f"distill.terms[{i}]"
        try:
            if isinstance(term, str):
                term = LossTermConfig(name=term)
            elif isinstance(term, dict):
                term = LossTermConfig.model_validate(term)
        except pydantic.ValidationError as err:
            raise ConfigError(format_validation_error(err, where)) from None
        source = None
        if term.source is not None:
            if term.source not in teacher_names:
                raise ConfigError(f"{where}.source: no teacher named {term.source!r}"
                                  f" (teachers: {', '.join(teacher_names) or 'unnamed'})")
            source = list(teacher_names).index(term.source)
        pairs = [(term.student, term.teacher)]
        if (term.student is None) != (term.teacher is None):
            missing = "teacher" if term.teacher is None else "student"
            raise ConfigError(f"{where}.{missing}: give both student: and teacher: paths, or neither to place "
                              f"the term through the models' feature points")
        if term.student is None:
            cls = LOSSES.get(term.name)
            if cls.inputs == "logits":
                pairs = [(OUTPUT, OUTPUT)]
            else:
                if student is None or not teachers:
                    raise ConfigError(f"{where}: feature loss {term.name!r} has no student:/teacher: paths and no "
                                      f"models to place it by; give the paths")
                if source is None and len(teachers) > 1:
                    raise ConfigError(f"{where}.source: with several teachers a feature term names the teacher "
                                      f"it reads ({', '.join(teacher_names)})")
                pairs = placements(cls.default_layer, student, teachers[source or 0], loss=where)
        for s_path, t_path in pairs:
            out.append(Term(name=term.name, loss=build_loss(term.name, term.options, where=where),
                            weight=term.weight, student_path=s_path, teacher_path=t_path,
                            warmup=term.warmup, teacher=source))
    return out


def train(model: nn.Module, data: DataSplits, cfg: TrainConfig = TrainConfig(), *, device: str = "auto",
          seed: int = 0, run_dir: Path | None = None, save: Callable | None = None, label: str = "teacher",
          resume: bool = False) -> FitResult:
    """Train ``model`` with cross-entropy on ``data.train`` (model selection on ``data.val``).

    Unlabelled training samples are left out (cross-entropy has nothing to learn from them).
    ``resume``: continue the run whose training state ``run_dir`` holds (see :class:`Trainer`)."""
    trainer = Trainer(cfg, device=resolve_device(device), seed=seed, run_dir=run_dir, save=save, label=label,
                      resume=resume)
    train_set = data.train.labelled_only(f"{data.train.name} (labelled)")
    if len(train_set) == 0:
        raise DataError(f"{data.train.name}: no labelled training sample; training with labels needs some")
    return trainer.fit(SupervisedTask(model), train_set, data.val)


def distill(student: nn.Module, teachers: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
            data: DataSplits, *, terms: Sequence[Term | LossTermConfig | dict | str] = ("kd",), gamma: float = 1.0,
            ensemble: EnsembleConfig | dict | str = "average", cfg: TrainConfig = TrainConfig(),
            device: str = "auto", seed: int = 0, run_dir: Path | None = None, save: Callable | None = None,
            label: str = "student", resume: bool = False) -> FitResult:
    """Distil ``teachers`` into ``student``: minimise gamma * CE + sum_i weight_i * term_i.

    ``teachers``: one model, a list, or ``{name: model}`` (names are what a term's ``source`` and
    the logged teacher weights use). With several teachers, logit terms without a ``source``
    compare the student with their per-sample fusion by ``ensemble`` (a strategy name or
    ``{"strategy": "fixed", "weights": {name: w}}``, see :mod:`mmdistill.distill.ensemble`).
    ``result.task`` keeps the task, e.g. for :meth:`~DistillationTask.sample_weights`.
    ``resume``: continue the run whose training state ``run_dir`` holds (see :class:`Trainer`).
    """
    if isinstance(teachers, nn.Module):
        teachers = [teachers]
    names = list(teachers) if isinstance(teachers, Mapping) else [f"teacher{i}" for i in range(len(teachers))]
    models = list(teachers.values()) if isinstance(teachers, Mapping) else list(teachers)
    if isinstance(ensemble, str):
        ensemble = {"strategy": ensemble}
    try:
        ens = STRATEGIES.parse(ensemble)
    except ValueError as err:
        raise ConfigError(f"distill.ensemble.{err}") from None
    try:
        fusion = TeacherEnsemble(names, ens.strategy, weights=getattr(ens, "weights", None),
                                 temperature=getattr(ens, "temperature", 1.0),
                                 options=ens.model_dump(exclude={"strategy", "weights"}))
    except ValueError as err:
        raise ConfigError(f"distill.ensemble: {err}") from None
    task = DistillationTask(student, models, make_terms(terms, names, student=student, teachers=models), gamma=gamma,
                            teacher_names=names, ensemble=fusion)
    trainer = Trainer(cfg, device=resolve_device(device), seed=seed, run_dir=run_dir, save=save, label=label,
                      resume=resume)
    result = trainer.fit(task, data.train, data.val)
    result.extra_params = sum(p.numel() for p in task.extra_parameters())
    result.task = task
    return result
