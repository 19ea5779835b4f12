"""The validated run configuration (YAML -> pydantic).

Engineering settings (``train``: epochs, optimiser, device) are kept apart from method settings
(``distill``: teacher, loss terms), as TextBrewer does. Every section forbids unknown keys, so a
typo is an error naming the key, never a silent default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pydantic
import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, NonNegativeFloat, PositiveFloat, SerializeAsAny,
                      StrictBool, StrictInt)

from .data.registry import check_options
from .distill.ensemble import STRATEGIES, EnsembleConfig
from .errors import ConfigError
from .losses.base import LOSSES, check_loss_options
from .models.encoders import ConvEncoderConfig, MLPEncoderConfig  # noqa: F401  (the built-in encoders' options)
from .models.fusion import PlainFusionConfig, ProjectedFusionConfig  # noqa: F401
from .models.kinds import FactoryModelConfig, parse_model_config  # noqa: F401
from .models.multimodal import HeadConfig, ModelConfig  # noqa: F401  (the multimodal model kind's config)
from .optim import OPTIMIZERS, SCHEDULERS, OptimizerConfig, SchedulerConfig
from .options import PositiveInt, Strict
from .options import format_validation_error as _format_validation_error
from .plugins import load_imports

# Every section that names a registry entry (``model.encoders.<m>.type``, ``model.fusion.type``,
# ``model.head.type``, ``train.optimizer.name``, ``train.scheduler.name``,
# ``distill.ensemble.strategy``, ``data.name``, ``distill.terms[i].name``) is validated against that
# entry's own options model (see :mod:`mmdistill.registry`), so the config is open: an entry a
# user registers in a module listed under ``imports:`` is accepted by name.


# --- data ---------------------------------------------------------------------------------
class DataConfig(BaseModel):
    """``name`` picks the dataset; every other key is one of that dataset's options, except:

    * ``label_fraction`` (0 < f <= 1): keep a stratified, seeded (run seed) fraction of the
      training split's labels, at least one per class; the other samples become unlabelled;
    * ``unlabelled``: a second data config, a transfer set: every sample it yields (its own
      train/test split ignored) joins the training split as unlabelled; its labels, if any, are
      ignored. Its modalities must match the data's.
    """

    model_config = ConfigDict(extra="allow")
    name: str
    root: str | None = None
    label_fraction: Annotated[float, Field(gt=0, le=1)] | None = None
    unlabelled: "DataConfig | None" = None

    @pydantic.model_validator(mode="after")
    def _flat_transfer_set(self):
        if self.unlabelled is not None:
            for key in ("unlabelled", "label_fraction"):
                if getattr(self.unlabelled, key) is not None:
                    raise ValueError(f"unlabelled.{key}: a transfer set has no labels to use; remove the key")
        return self

    @pydantic.model_serializer(mode="wrap")
    def _dump(self, handler):
        # unset unlabelled-data keys are left out, so configs (and keys derived from them, such as
        # the demo's teacher cache) stay what they were before these keys existed
        out = handler(self)
        for key in ("label_fraction", "unlabelled"):
            if isinstance(out, dict) and out.get(key) is None:
                out.pop(key, None)
        return out

    @pydantic.model_validator(mode="after")
    def _dataset_options(self):
        """The dataset's own options against its options model (:data:`~mmdistill.data.DATASETS`)."""
        check_options(self.name, self.options)
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# --- training -----------------------------------------------------------------------------
# optimisers and learning-rate schedules (``train.optimizer``, ``train.scheduler``): mmdistill.optim


# --- input augmentation (``train.augment``), per modality ----------------------------------------
class TranslateAugment(Strict):
    """Images: move by (dx, dy), each uniform in [-pixels, pixels], zero fill (= pad + random crop)."""

    type: Literal["translate"]
    pixels: PositiveInt = 2


class BandMaskAugment(Strict):
    """Spectrograms (SpecAugment): ``count`` bands of time steps / frequency bins set to zero, each
    uniform in [min_width, width] wide."""

    type: Literal["time_mask", "freq_mask"]
    width: PositiveInt
    count: PositiveInt = 1
    min_width: Annotated[int, Field(ge=0)] = 0

    @pydantic.model_validator(mode="after")
    def _widths(self):
        if self.min_width > self.width:
            raise ValueError(f"min_width: {self.min_width} is more than width {self.width}")
        return self


class TimeShiftAugment(Strict):
    """Spectrograms: shift along time by up to ``fraction`` of the length either way, edge repeated."""

    type: Literal["time_shift"]
    fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1


AugmentConfig = Annotated[Union[TranslateAugment, BandMaskAugment, TimeShiftAugment], Field(discriminator="type")]
#: which modality kinds (:data:`mmdistill.data.dataset.MODALITY_KINDS`) each augmentation applies to
AUGMENT_KINDS = {"translate": ("image",), "time_mask": ("audio",), "freq_mask": ("audio",), "time_shift": ("audio",)}


class EarlyStoppingConfig(Strict):
    """Stop when validation accuracy (the training loss's negative without a validation split) has
    not improved by more than ``min_delta`` for ``patience`` epochs; the model keeps its best weights."""

    patience: PositiveInt
    min_delta: NonNegativeFloat = 0.0


class TrainConfig(Strict):
    # at most this many epochs; the learning-rate schedule spans them even when early stopping ends
    # the run sooner. A run whose best epoch is in the last tenth of them, and which did not stop
    # early, is flagged as not converged (``converged: false`` in summary.json, and a log line)
    epochs: PositiveInt = 10
    # e.g. {patience: 5, min_delta: 0.002}: stop after ``patience`` epochs without an improvement of
    # the validation accuracy by more than ``min_delta`` (a fraction: 0.002 = 0.2 points); the same
    # decision on every process under torchrun; null (default): run all ``epochs``
    early_stopping: EarlyStoppingConfig | None = None
    batch_size: PositiveInt = 128
    # distilling with unlabelled samples: each step's batch is ``labelled_batch_size`` labelled
    # samples (cross-entropy reads these) followed by ``batch_size`` samples drawn from the whole
    # training set with their labels hidden (the transfer batch); distillation terms read every
    # sample of it. An epoch is one pass of the transfer batches over the training set. null
    # (default): one batch of ``batch_size`` samples, cross-entropy on its labelled members
    labelled_batch_size: PositiveInt | None = None
    eval_batch_size: PositiveInt = 1024
    optimizer: OPTIMIZERS.field() = OptimizerConfig()
    scheduler: SCHEDULERS.field() = SchedulerConfig()
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    grad_clip: PositiveFloat | None = None
    mixup: NonNegativeFloat = 0.0  # Beta(alpha, alpha) mixup across all modalities; 0 = off
    modality_dropout: dict[str, Annotated[float, Field(ge=0, le=1)]] = {}  # modality -> drop rate
    # modality -> largest random time shift, as a fraction of the last (time) axis; the student sees
    # shifted inputs, teachers the aligned ones
    time_shift: dict[str, Annotated[float, Field(gt=0, lt=1)]] = {}
    cache_teacher: StrictBool = True  # compute frozen teachers' outputs once per run (not with mixup)
    # where that cache lives: ``memory`` (tensors), or ``mmap``: np.memmap files in a temporary folder
    # (inside the run directory when there is one), deleted when the fit ends; ``cache_dtype``
    # float16 halves its size (outputs are read back as float32)
    cache_storage: Literal["memory", "mmap"] = "memory"
    cache_dtype: Literal["float32", "float16"] = "float32"
    # modality -> input augmentations, applied in order to every training batch (teachers being
    # trained and distilled students see them); e.g. {image: [{type: translate, pixels: 2}]}
    augment: dict[str, list[AugmentConfig]] = {}
    # what distillation teachers see under ``augment``: ``same`` augmented input as the student, or
    # the ``clean`` one. The teacher-output cache is only valid for clean inputs: ``same`` disables it
    augment_teacher: Literal["same", "clean"] = "same"
    progress: StrictBool = True
    # extra sinks for the per-epoch metrics (metrics.jsonl is always written): tensorboard writes
    # event files to RUN_DIR/tensorboard (needs the optional extra: pip install 'mmdistill[tensorboard]')
    log: list[Literal["tensorboard"]] = []
    # mixed precision of the training step (forward and losses): ``bf16`` or ``fp16`` run it under
    # torch.autocast on the device, ``fp16`` with a GradScaler; weights, optimiser state,
    # checkpoints and validation stay float32, and the losses compute in float32. fp32 is the
    # default: bf16 changes the numerics, and it is only faster where the hardware computes in bf16
    # (1.41x on the Hinton pair, 1.32x on AV-Digits, on an AVX512-BF16 CPU: benchmarks/results/throughput.md)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # torch.compile the student's forward (and the teachers' when they are not cached); needs a C++
    # compiler on CPU. Off by default: on CPU it was slower on the Hinton MLPs (0.90x) though faster
    # on the AV-Digits CNN (1.36x, benchmarks/results/throughput.md), it compiles for tens of
    # seconds, and compiled dropout draws other random numbers than eager
    compile: StrictBool = False

    @pydantic.field_validator("log")
    @classmethod
    def _sinks_installed(cls, sinks):
        import importlib.util

        if "tensorboard" in sinks and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("tensorboard is not installed; pip install 'mmdistill[tensorboard]' "
                             "(or remove it from train.log)")
        return sinks


# --- distillation -------------------------------------------------------------------------
class LossTermConfig(BaseModel):
    """One weighted distillation term; keys other than these are the loss's own options."""

    model_config = ConfigDict(extra="allow")
    name: str
    weight: float = 1.0
    # module paths the term compares; None: "logits" for a logit loss, and for a feature loss the
    # models' declared feature points of the loss's kind (models.points.placements), one term
    # per shared modality for per-modality kinds
    student: str | None = None
    teacher: str | None = None
    warmup: Annotated[float, Field(ge=0, le=1)] = 0.0  # fraction of training over which weight ramps up from 0
    # which teacher (by name) the term reads; None: the only teacher, or, for logits with several
    # teachers, their per-sample fusion (``distill.ensemble``)
    source: str | None = None

    @pydantic.model_validator(mode="after")
    def _loss_options(self):
        """The loss's own options against its options model (validated here, built once, later)."""
        if self.name not in LOSSES:
            raise ValueError(f"name: unknown loss {self.name!r} (known: {', '.join(LOSSES)})")
        check_loss_options(self.name, self.options)
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TeacherConfig(Strict):
    checkpoint: str
    name: str | None = None  # how terms (``source``) and logs refer to it; default teacher0, teacher1, ...


class DistillConfig(Strict):
    """total = gamma * CE(student, label) + sum_i weight_i * term_i(student, teacher).

    One ``teacher`` or a list of ``teachers``; with several, logit terms without a ``source``
    compare the student with the teachers' per-sample fusion (``ensemble``).
    """

    teacher: TeacherConfig | None = None
    teachers: list[TeacherConfig] = []
    ensemble: STRATEGIES.field() = EnsembleConfig()  # see :mod:`mmdistill.distill.ensemble`
    gamma: NonNegativeFloat = 1.0
    terms: list[LossTermConfig] = [LossTermConfig(name="kd")]

    @pydantic.model_validator(mode="after")
    def _check_teachers(self):
        if (self.teacher is None) == (not self.teachers):
            raise ValueError("give exactly one of teacher (one checkpoint) or teachers (a list)")
        names = self.teacher_names()
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise ValueError(f"teachers: the name {duplicate!r} is used twice")
        for i, term in enumerate(self.terms):
            if term.source is not None and term.source not in names:
                raise ValueError(f"terms[{i}].source: no teacher named {term.source!r} (teachers: {', '.join(names)})")
        weights = getattr(self.ensemble, "weights", None)
        if self.ensemble.strategy == "fixed":
            given = weights or {}
            for n in names:
                if n not in given:
                    raise ValueError(f"ensemble.weights: strategy fixed needs a weight for teacher {n!r}")
            for n in given:
                if n not in names:
                    raise ValueError(f"ensemble.weights.{n}: no such teacher (teachers: {', '.join(names)})")
        elif weights is not None and isinstance(self.ensemble, EnsembleConfig):
            raise ValueError(f"ensemble.weights: only used by strategy fixed (strategy is {self.ensemble.strategy})")
        return self

    def teacher_list(self) -> list[TeacherConfig]:
        return [self.teacher] if self.teacher is not None else list(self.teachers)

    def teacher_names(self) -> list[str]:
        return [t.name or f"teacher{i}" for i, t in enumerate(self.teacher_list())]


class RunConfig(Strict):
    # the user's modules, imported before the rest is validated (see :mod:`mmdistill.plugins`)
    imports: list[str] = []
    seed: StrictInt = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig
    # the multimodal model (encoders, fusion, head) or another model kind selected by its key
    # (``factory``, see :mod:`mmdistill.models.kinds`)
    model: Annotated[SerializeAsAny[BaseModel], BeforeValidator(parse_model_config)]
    train: TrainConfig = TrainConfig()
    distill: DistillConfig | None = None

    @pydantic.model_serializer(mode="wrap")
    def _without_empty_imports(self, handler):
        """``imports`` only when given, so the dump (run.json, teacher cache keys) of a config
        without it is what it always was."""
        out = handler(self)
        if isinstance(out, dict) and not out.get("imports"):
            out.pop("imports", None)
        return out


_LIST_TAGS = set(AUGMENT_KINDS)  # tags of list entries (``train.augment.image[0]``), dropped after an index


def format_validation_error(err: pydantic.ValidationError, prefix: str = "") -> str:
    """One line naming the first offending key, e.g. ``train.epochs: Input should be ...``."""
    return _format_validation_error(err, prefix, tags=_LIST_TAGS)


def set_key(raw: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in a nested dict/list structure, creating dicts on the way."""
    parts = dotted.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{'.'.join(parts[:i + 1])}: no such list item")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"{'.'.join(parts[:i])}: is not a section, cannot set {dotted}")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` overrides; values are parsed as YAML (``3``, ``0.1``, ``[32, 64]``)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        set_key(raw, key.strip(), value)
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections (data, model, train, ...)")
    return raw


def parse_config(raw: dict, source: str = "config", base: str | Path | None = None) -> RunConfig:
    """Validate a raw config dict, including each registry entry's own options (datasets, loss
    terms, encoders, ...). ``imports`` are loaded first, file paths relative to ``base`` (the
    config file's folder) and recorded resolved."""
    imports = raw.get("imports") if isinstance(raw, dict) else None
    if imports is not None:
        if not isinstance(imports, list):
            raise ConfigError(f"{source}: imports: expected a list of module names or .py files (got {imports!r})")
        try:
            raw = {**raw, "imports": load_imports(imports, base)}
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    try:
        return RunConfig.model_validate(raw)
    except pydantic.ValidationError as err:
        raise ConfigError(f"{source}: {format_validation_error(err)}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    raw = apply_overrides(read_yaml(path), overrides or [])
    return parse_config(raw, source=str(path), base=Path(path).parent)
