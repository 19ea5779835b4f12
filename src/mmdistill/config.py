"""The validated run configuration (YAML -> pydantic).

Engineering settings (``train``: epochs, optimiser, device) are kept apart from method settings
(``distill``: teacher, loss terms), as TextBrewer does. Every section forbids unknown keys, so a
typo is an error naming the key, never a silent default. A section's options model lives beside
the code that uses it (``train``: :mod:`mmdistill.distill.engine`, ``train.optimizer``:
:mod:`mmdistill.optim`, ...); this module composes them and reads YAML.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat

from .data.augment import AUGMENT_KINDS
from .data.registry import DATASETS
from .distill.engine import TrainConfig
from .distill.ensemble import STRATEGIES, EnsembleConfig
from .errors import ConfigError
from .losses.base import LOSSES
from .models.encoders import ConvEncoderConfig, MLPEncoderConfig  # noqa: F401  (the built-in encoders' options)
from .models.fusion import PlainFusionConfig, ProjectedFusionConfig  # noqa: F401
from .models.kinds import MODEL_KINDS, FactoryModelConfig  # noqa: F401
from .models.multimodal import HeadConfig, ModelConfig  # noqa: F401  (the multimodal model kind's config)
from .optim import OptimizerConfig, SchedulerConfig  # noqa: F401  (train.optimizer's and train.scheduler's options)
from .options import Seed, Strict
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

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str
    root: str | None = None
    label_fraction: Annotated[float, Field(gt=0, le=1)] | None = None
    unlabelled: "DataConfig | None" = None
    # the folder of the config file this section came from: relative paths it names are searched
    # there first, then under the data root (:func:`mmdistill.data.root.find_path`)
    _config_dir: Path | None = pydantic.PrivateAttr(default=None)

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
        DATASETS.validate(self.name, self.options)
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def config_dir(self) -> Path | None:
        """The folder of the config file this section was read from (None: not from a file)."""
        return self._config_dir

    def read_from(self, config_dir: str | Path) -> "DataConfig":
        """This section as read from a config file in ``config_dir``, its transfer set too: it
        remembers the folder, where relative paths are searched first (then under the data root)."""
        self._config_dir = Path(config_dir)
        if self.unlabelled is not None:
            self.unlabelled.read_from(config_dir)
        return self


def beside_config(data: Any, config_dir: str | Path) -> Any:
    """A raw ``data`` section read from a config file in ``config_dir``, with every relative path
    its dataset's options name (``path``, a tokenizer, ...) that exists beside the config made
    absolute, so the run records where the file is; paths that do not stay as written and are
    searched under the data root. The same for ``unlabelled``; anything malformed is left for
    validation to report."""
    import os

    from .data.root import path_options, replace_paths

    if not isinstance(data, dict):
        return data
    out = dict(data)
    if isinstance(out.get("unlabelled"), dict):
        out["unlabelled"] = beside_config(out["unlabelled"], config_dir)
    if not isinstance(out.get("name"), str) or out["name"] not in DATASETS:
        return out
    options = {k: v for k, v in out.items() if k not in DataConfig.model_fields}
    new = {}
    for keys, value in path_options(options, getattr(DATASETS.options(out["name"]), "PATHS", {})):
        beside = Path(config_dir) / Path(value).expanduser()
        if not Path(value).expanduser().is_absolute() and beside.exists():
            new[keys] = os.path.abspath(beside)
    return {**out, **replace_paths(options, new)}


# --- training -----------------------------------------------------------------------------
# ``train``: the loop's options, :class:`mmdistill.distill.engine.TrainConfig`; its optimisers and
# learning-rate schedules (``train.optimizer``, ``train.scheduler``): mmdistill.optim; its input
# augmentations (``train.augment``): mmdistill.data.augment; ``train.view_cache``: mmdistill.distill.views


# --- distillation -------------------------------------------------------------------------
class LossTermConfig(BaseModel):
    """One weighted distillation term; keys other than these are the loss's own options."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str
    weight: NonNegativeFloat = 1.0  # a negative weight would maximise the term: push the student away
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
        LOSSES.validate(self.name, self.options)
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
        if self.gamma == 0 and not any(t.weight > 0 for t in self.terms):
            raise ValueError("gamma: 0 with no loss term of positive weight leaves nothing to train; "
                             "give gamma > 0 or a term")
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
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig
    # the multimodal model (encoders, fusion, head) or another model kind selected by its key
    # (``factory``, see :mod:`mmdistill.models.kinds`)
    model: MODEL_KINDS.field()
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


#: how deeply a config may nest (sections, lists, mappings); real configs use under 10 levels
MAX_DEPTH = 32


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor`` may be overridden by later keys
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                first = seen.get(key)
                seen.setdefault(key, line)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not None:
                where = f"lines {first} and {line}" if first != line else f"line {line}"
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice ({where})",
                                                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


#: how many values a config may hold once YAML aliases are expanded (``&a [*b, *b, ...]`` bombs)
MAX_VALUES = 100_000


def _shape(value, memo: dict) -> tuple[int, int]:
    """(nesting height, number of values once aliases are expanded) of a parsed YAML value; shared
    (aliased) objects are measured once, so an alias bomb costs nothing to measure."""
    if not isinstance(value, (dict, list)):
        return 0, 1
    if id(value) not in memo:
        children = list(value.values()) if isinstance(value, dict) else value
        shapes = [_shape(v, memo) for v in children]
        memo[id(value)] = (1 + max((h for h, _ in shapes), default=0), 1 + sum(n for _, n in shapes))
    return memo[id(value)]


def _deep_key(value, memo: dict, limit: int) -> str:
    """The dotted key where ``value`` nests deeper than ``limit`` levels (follows the deepest child)."""
    key = ""
    while isinstance(value, (dict, list)) and limit >= 0:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        k, value = max(items, key=lambda kv: _shape(kv[1], memo)[0])
        key = f"{key}[{k}]" if isinstance(k, int) else f"{key}.{k}" if key else str(k)
        limit -= 1
    return key or "(top level)"


def parse_yaml(text: str | bytes, where: str):
    """YAML text to plain values, one line naming ``where`` on any problem: not UTF-8/16/32 text,
    invalid YAML (with its line), a key given twice in a mapping, or nesting deeper than
    :data:`MAX_DEPTH` (which would otherwise exhaust Python's recursion limit)."""
    if isinstance(text, bytes):
        try:  # YAML's encodings: UTF-8 (with or without a BOM), UTF-16/32 with a BOM
            text = text.decode("utf-32" if text[:4] in (b"\xff\xfe\0\0", b"\0\0\xfe\xff") else
                               "utf-16" if text[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{where}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                              "save it as UTF-8") from None
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        if isinstance(err, yaml.constructor.ConstructorError) and "given twice" in problem:
            raise ConfigError(f"{where}:{line} {problem}") from None
        raise ConfigError(f"{where}:{line} invalid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply (more than {MAX_DEPTH} levels)") from None
    memo: dict = {}
    height, count = _shape(value, memo)
    if height > MAX_DEPTH + 1:
        raise ConfigError(f"{where}: {_deep_key(value, memo, MAX_DEPTH)}: nested too deeply (more than {MAX_DEPTH} "
                          "levels)")
    if count > MAX_VALUES:
        raise ConfigError(f"{where}: holds {count:,} values once its aliases (*name) are expanded, more than "
                          f"{MAX_VALUES:,}; a config is smaller")
    return value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """A copy of ``raw`` with ``key=value`` overrides applied; values are parsed as YAML (``3``,
    ``0.1``, ``[32, 64]``). ``raw`` itself is left as it was, so a recipe can be overridden twice."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            value = parse_yaml(text, f"--set {key.strip()}")
        except ConfigError as err:
            if "invalid YAML" not in str(err):
                raise
            value = text  # not YAML: the text itself (a path, a name)
        set_key(raw, key.strip(), value)
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    raw = parse_yaml(data, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections (data, model, train, ...)")
    return raw


def parse_config(raw: dict, source: str = "config", base: str | Path | None = None) -> RunConfig:
    """Validate a raw config dict, including each registry entry's own options (datasets, loss
    terms, encoders, ...). ``imports`` are loaded first, file paths relative to ``base`` (the
    config file's folder) and recorded resolved; so are the data's file paths found beside the
    config, the others are searched under the data root (:func:`beside_config`)."""
    imports = raw.get("imports") if isinstance(raw, dict) else None
    if imports is not None:
        if not isinstance(imports, list):
            raise ConfigError(f"{source}: imports: expected a list of module names or .py files (got {imports!r})")
        try:
            raw = {**raw, "imports": load_imports(imports, base)}
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    if base is not None and isinstance(raw, dict) and "data" in raw:
        raw = {**raw, "data": beside_config(raw["data"], base)}
    try:
        cfg = RunConfig.model_validate(raw)
    except pydantic.ValidationError as err:
        raise ConfigError(f"{source}: {format_validation_error(err)}") from None
    if base is not None:
        cfg.data.read_from(base)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    import os

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a config file path, got {type(path).__name__}")
    raw = apply_overrides(read_yaml(path), overrides or [])
    return parse_config(raw, source=str(path), base=Path(path).parent)
