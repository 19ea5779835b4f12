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
from .distill.callbacks import Callback
from .distill.distributed import resolve_device
from .distill.engine import FitResult, Trainer
from .distill.ensemble import STRATEGIES, TeacherEnsemble
from .distill.hooks import OUTPUT
from .distill.tasks import DistillationTask, SupervisedTask, Term
from .errors import ConfigError, DataError
from .losses import build_loss
from .options import MAX_COUNT, MAX_SEED


# --- argument checks of the public functions: TypeError / ValueError naming the argument -------------
def _type_name(value) -> str:
    return "None" if value is None else type(value).__name__


def check_module(name: str, value) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name}: expected a torch.nn.Module, got {_type_name(value)}")
    return value


def check_splits(name: str, value) -> DataSplits:
    if not isinstance(value, DataSplits):
        hint = " (a dataset: pass the DataSplits that build_data returns)" if hasattr(value, "loader") else ""
        raise TypeError(f"{name}: expected DataSplits (from build_data), got {_type_name(value)}{hint}")
    return value


def check_train_config(name: str, value) -> TrainConfig:
    """A TrainConfig, or a dict of its keys (validated)."""
    if isinstance(value, TrainConfig):
        return value
    if isinstance(value, Mapping):
        try:
            return TrainConfig.model_validate(dict(value))
        except pydantic.ValidationError as err:
            raise ValueError(f"{name}: {format_validation_error(err, 'train')}") from None
    raise TypeError(f"{name}: expected a TrainConfig (or a dict of its keys), got {_type_name(value)}")


def check_seed(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an integer, got {_type_name(value)}")
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name}: expected an integer from 0 to {MAX_SEED}, got {value}")
    return value


def check_device(name: str, value) -> str:
    import re

    if isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
        return value
    if not isinstance(value, (str, type(None))) and type(value).__name__ == "device":
        return str(value)
    raise ValueError(f"{name}: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")


def check_number(name: str, value, *, least: float = 0.0) -> float:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {_type_name(value)}")
    if not math.isfinite(value) or value < least:
        raise ValueError(f"{name}: expected a finite number >= {least:g}, got {value}")
    return float(value)


def check_count(name: str, value, *, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an integer, got {_type_name(value)}")
    if not least <= value <= MAX_COUNT:
        raise ValueError(f"{name}: expected an integer from {least} to {MAX_COUNT}, got {value}")
    return value


def check_specs(name: str, value) -> dict:
    from .data.dataset import ModalitySpec

    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, ModalitySpec)
                                                 for k, v in value.items()):
        raise TypeError(f"{name}: expected {{modality: ModalitySpec}} (e.g. data.specs), got {_type_name(value)}")
    if not value:
        raise ValueError(f"{name}: no modality")
    return dict(value)


def build_model(cfg, specs, num_classes: int, *, seed: int | None = None) -> nn.Module:
    """Build a model of any kind (:func:`mmdistill.models.build_model`) from its config (a dict or
    a config object), the data's ``specs`` and ``num_classes``, its arguments checked first."""
    from .models import build_model as build

    if cfg is None or not isinstance(cfg, (Mapping, pydantic.BaseModel)):
        raise TypeError(f"cfg: expected a model config (a dict such as {{'encoders': ...}}), got {_type_name(cfg)}")
    check_specs("specs", specs)
    check_count("num_classes", num_classes, least=2)
    if seed is not None:
        check_seed("seed", seed)
    return build(cfg, specs, num_classes, seed=seed)


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

    if isinstance(terms, (str, dict, Term, LossTermConfig)) or not isinstance(terms, Sequence):
        raise TypeError(f"terms: expected a list of terms (loss names, dicts or Term objects), got "
                        f"{_type_name(terms)}; e.g. terms=['kd']")
    out = []
    for i, term in enumerate(terms):
        if isinstance(term, Term):
            check_number(f"terms[{i}].weight", term.weight)
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
          resume: bool = False, callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train ``model`` with cross-entropy on ``data.train`` (model selection on ``data.val``).

    Unlabelled training samples are left out (cross-entropy has nothing to learn from them).
    ``resume``: continue the run whose training state ``run_dir`` holds (see :class:`Trainer`).
    ``callbacks``: extra :class:`~mmdistill.distill.callbacks.Callback` s for the loop."""
    check_module("model", model)
    check_splits("data", data)
    cfg = check_train_config("cfg", cfg)
    check_seed("seed", seed)
    check_device("device", device)
    trainer = Trainer(cfg, device=resolve_device(device), seed=seed, run_dir=run_dir, save=save, label=label,
                      resume=resume, callbacks=callbacks)
    train_set = data.train.labelled_only(f"{data.train.name} (labelled)")
    if len(train_set) == 0:
        raise DataError(f"{data.train.name}: no labelled training sample; training with labels needs some")
    return trainer.fit(SupervisedTask(model), train_set, data.val)


def distill(student: nn.Module, teachers: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
            data: DataSplits, *, terms: Sequence[Term | LossTermConfig | dict | str] = ("kd",), gamma: float = 1.0,
            ensemble: EnsembleConfig | dict | str = "average", cfg: TrainConfig = TrainConfig(),
            device: str = "auto", seed: int = 0, run_dir: Path | None = None, save: Callable | None = None,
            label: str = "student", resume: bool = False, callbacks: Sequence[Callback] = ()) -> FitResult:
    """Distil ``teachers`` into ``student``: minimise gamma * CE + sum_i weight_i * term_i.

    ``teachers``: one model, a list, or ``{name: model}`` (names are what a term's ``source`` and
    the logged teacher weights use). With several teachers, logit terms without a ``source``
    compare the student with their per-sample fusion by ``ensemble`` (a strategy name or
    ``{"strategy": "fixed", "weights": {name: w}}``, see :mod:`mmdistill.distill.ensemble`).
    ``result.task`` keeps the task, e.g. for :meth:`~DistillationTask.sample_weights`.
    ``resume``: continue the run whose training state ``run_dir`` holds (see :class:`Trainer`).
    ``callbacks``: extra :class:`~mmdistill.distill.callbacks.Callback` s for the loop.
    """
    check_module("student", student)
    check_splits("data", data)
    cfg = check_train_config("cfg", cfg)
    check_seed("seed", seed)
    check_device("device", device)
    gamma = check_number("gamma", gamma)
    if isinstance(teachers, nn.Module):
        teachers = [teachers]
    if not isinstance(teachers, (Sequence, Mapping)) or isinstance(teachers, str):
        raise TypeError(f"teachers: expected a model, a list of models or {{name: model}}, got {_type_name(teachers)}")
    if not teachers:
        raise ValueError("teachers: at least one teacher is needed")
    for i, (key, teacher) in enumerate(teachers.items() if isinstance(teachers, Mapping) else enumerate(teachers)):
        check_module(f"teachers[{key!r}]" if isinstance(teachers, Mapping) else f"teachers[{i}]", teacher)
        if teacher is student:
            raise ValueError("teachers: the student is also given as a teacher; distil from a separate, trained model")
    if isinstance(terms, str):
        terms = [terms]
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
    placed = make_terms(terms, names, student=student, teachers=models)
    if gamma == 0 and not any(t.weight > 0 for t in placed):
        raise ValueError("gamma: 0 with no term of positive weight leaves nothing to train")
    task = DistillationTask(student, models, placed, gamma=gamma,
                            teacher_names=names, ensemble=fusion)
    trainer = Trainer(cfg, device=resolve_device(device), seed=seed, run_dir=run_dir, save=save, label=label,
                      resume=resume, callbacks=callbacks)
    result = trainer.fit(task, data.train, data.val)
    result.extra_params = sum(p.numel() for p in task.extra_parameters())
    result.task = task
    return result
