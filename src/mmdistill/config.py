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
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, StrictBool, StrictInt

from .errors import ConfigError

# Strict: YAML ``true`` is a bool, never the integer 1 (``epochs: true`` is an error naming the key).
PositiveInt = Annotated[int, Field(strict=True, gt=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- models -------------------------------------------------------------------------------
class ConvEncoderConfig(Strict):
    type: Literal["conv"]
    channels: list[PositiveInt] = [32, 64]
    dim: PositiveInt | None = None
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    pool: PositiveInt = 1
    stride: Literal[1, 2] = 1  # stride of the first convolution
    separable: bool = False  # depthwise-separable blocks after the first


class MLPEncoderConfig(Strict):
    type: Literal["mlp"]
    hidden: list[PositiveInt] = [128]
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    input_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0


EncoderConfig = Annotated[Union[ConvEncoderConfig, MLPEncoderConfig], Field(discriminator="type")]


class PlainFusionConfig(Strict):
    type: Literal["concat", "late"] = "concat"


class ProjectedFusionConfig(Strict):
    type: Literal["attention", "gated"]
    dim: PositiveInt = 64


FusionConfig = Annotated[Union[PlainFusionConfig, ProjectedFusionConfig], Field(discriminator="type")]


class HeadConfig(Strict):
    hidden: list[PositiveInt] = []
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0


class ModelConfig(Strict):
    """A multimodal model: one encoder per modality it sees, a fusion, a classification head."""

    encoders: Annotated[dict[str, EncoderConfig], Field(min_length=1)]
    fusion: FusionConfig = PlainFusionConfig()
    head: HeadConfig = HeadConfig()
    # the modalities the model sees (default: every encoder's); e.g. [audio] for an audio-only
    # student built from an audio-visual recipe
    modalities: list[str] | None = None

    @pydantic.model_validator(mode="after")
    def _known_modalities(self):
        if self.modalities is not None:
            if not self.modalities:
                raise ValueError("modalities: give at least one modality")
            for m in self.modalities:
                if m not in self.encoders:
                    raise ValueError(f"modalities: {m!r} has no encoder (encoders: {', '.join(self.encoders)})")
        return self

    def selected_encoders(self) -> dict[str, Any]:
        names = self.modalities if self.modalities is not None else list(self.encoders)
        return {m: self.encoders[m] for m in names}


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

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# --- training -----------------------------------------------------------------------------
class OptimizerConfig(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: StrictBool = False


class SchedulerConfig(Strict):
    name: Literal["none", "cosine", "step", "exponential"] = "none"
    step_size: PositiveInt = 10
    gamma: PositiveFloat = 0.1
    warmup_epochs: Annotated[int, Field(strict=True, ge=0)] = 0
    # epoch: the factor changes once per epoch; step: after every optimiser step, with the epoch
    # counted fractionally (cosine then decays smoothly, as in Hinton et al.'s recipe)
    interval: Literal["epoch", "step"] = "epoch"


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


class TrainConfig(Strict):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt = 1024
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    grad_clip: PositiveFloat | None = None
    mixup: NonNegativeFloat = 0.0  # Beta(alpha, alpha) mixup across all modalities; 0 = off
    modality_dropout: dict[str, Annotated[float, Field(ge=0, le=1)]] = {}  # modality -> drop rate
    # modality -> largest random time shift, as a fraction of the last (time) axis; the student sees
    # shifted inputs, teachers the aligned ones
    time_shift: dict[str, Annotated[float, Field(gt=0, lt=1)]] = {}
    cache_teacher: StrictBool = True  # compute frozen teachers' outputs once per run (not with mixup)
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
    student: str = "logits"
    teacher: str = "logits"
    warmup: Annotated[float, Field(ge=0, le=1)] = 0.0  # fraction of training over which weight ramps up from 0
    # which teacher (by name) the term reads; None: the only teacher, or, for logits with several
    # teachers, their per-sample fusion (``distill.ensemble``)
    source: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TeacherConfig(Strict):
    checkpoint: str
    name: str | None = None  # how terms (``source``) and logs refer to it; default teacher0, teacher1, ...


class EnsembleConfig(Strict):
    """How the logits of several teachers are fused per sample (see :mod:`mmdistill.distill.ensemble`)."""

    strategy: Literal["average", "fixed", "confidence", "entropy"] = "average"
    weights: dict[str, PositiveFloat] | None = None  # ``fixed``: teacher name -> weight (normalised)
    temperature: PositiveFloat = 1.0  # ``entropy``: softmax(-H / temperature) over teachers


class DistillConfig(Strict):
    """total = gamma * CE(student, label) + sum_i weight_i * term_i(student, teacher).

    One ``teacher`` or a list of ``teachers``; with several, logit terms without a ``source``
    compare the student with the teachers' per-sample fusion (``ensemble``).
    """

    teacher: TeacherConfig | None = None
    teachers: list[TeacherConfig] = []
    ensemble: EnsembleConfig = EnsembleConfig()
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
        if self.ensemble.strategy == "fixed":
            given = self.ensemble.weights or {}
            for n in names:
                if n not in given:
                    raise ValueError(f"ensemble.weights: strategy fixed needs a weight for teacher {n!r}")
            for n in given:
                if n not in names:
                    raise ValueError(f"ensemble.weights.{n}: no such teacher (teachers: {', '.join(names)})")
        elif self.ensemble.weights is not None:
            raise ValueError(f"ensemble.weights: only used by strategy fixed (strategy is {self.ensemble.strategy})")
        return self

    def teacher_list(self) -> list[TeacherConfig]:
        return [self.teacher] if self.teacher is not None else list(self.teachers)

    def teacher_names(self) -> list[str]:
        return [t.name or f"teacher{i}" for i, t in enumerate(self.teacher_list())]


class RunConfig(Strict):
    seed: StrictInt = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    distill: DistillConfig | None = None


_TAGS = {"conv", "mlp", "concat", "late", "attention", "gated"}
_LIST_TAGS = set(AUGMENT_KINDS)  # tags of list entries (``train.augment.image[0]``), dropped after an index


def format_validation_error(err: pydantic.ValidationError, prefix: str = "") -> str:
    """One line naming the first offending key, e.g. ``train.epochs: Input should be ...``."""
    first = err.errors()[0]
    loc = [str(p) if not isinstance(p, int) else f"[{p}]" for p in first["loc"]]
    loc = [p for i, p in enumerate(loc) if not (p in _TAGS and i + 1 < len(loc))
           and not (p in _LIST_TAGS and i and loc[i - 1].startswith("["))]
    key = ".".join(loc).replace(".[", "[")
    if prefix:
        key = f"{prefix}.{key}" if key else prefix
    msg = first["msg"]
    if first["type"] == "value_error":  # a model validator's "subkey: message" names the key below
        msg = msg.removeprefix("Value error, ")
        sub, sep, rest = msg.partition(": ")
        if sep and " " not in sub:
            key, msg = (f"{key}.{sub}" if key else sub).replace(".[", "["), rest
        return f"{key}: {msg}" if key else msg
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict):
        msg = f"{msg} (got {first['input']!r})"
    return f"{key}: {msg}" if key else msg


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


def parse_config(raw: dict, source: str = "config") -> RunConfig:
    """Validate a raw config dict, including each dataset's and loss term's own options."""
    try:
        cfg = RunConfig.model_validate(raw)
    except pydantic.ValidationError as err:
        raise ConfigError(f"{source}: {format_validation_error(err)}") from None
    from .data import validate_data_options
    from .losses import build_loss

    try:
        validate_data_options(cfg.data)
        if cfg.distill:
            for i, term in enumerate(cfg.distill.terms):
                build_loss(term.name, term.options, where=f"distill.terms[{i}]")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    raw = apply_overrides(read_yaml(path), overrides or [])
    return parse_config(raw, source=str(path))
