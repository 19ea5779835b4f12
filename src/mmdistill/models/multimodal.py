"""The multimodal classifier: per-modality encoders -> fusion -> head, and its config.

Each part is looked up in its registry (:data:`~.encoders.ENCODERS`, :data:`~.fusion.FUSIONS`,
:data:`HEADS`) by ``type`` and validated against that entry's options model, so a part a user
registers (in a module listed under ``imports:``) is used by name from YAML. A head is built as
``builder(in_dim, num_classes, **options)``.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping

import pydantic
import torch
from pydantic import Field
from torch import nn

from ..data.batch import presence
from ..data.dataset import ModalitySpec
from ..data.kinds import KINDS
from ..errors import ConfigError
from ..options import PositiveInt, Strict, format_validation_error
from ..registry import Registry, options_of
from .encoders import ENCODERS, add_mlp
from .fusion import FUSIONS, PlainFusionConfig
from .kinds import MODEL_KINDS
from .points import FeaturePoint

HEADS: Registry = Registry("head", default="mlp", builder_args=2)


class HeadConfig(Strict):
    # the default head; not written into dumps, so configs and checkpoints read as they always have
    type: Literal["mlp"] = Field("mlp", exclude=True)
    hidden: list[PositiveInt] = []
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0


class ModelConfig(Strict):
    """A multimodal model: one encoder per modality it sees, a fusion, a classification head."""

    encoders: Annotated[dict[str, ENCODERS.field()], Field(min_length=1)]
    fusion: FUSIONS.field() = PlainFusionConfig()
    head: HEADS.field() = HeadConfig()
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


class MultimodalModel(nn.Module):
    """``forward(batch) -> logits [B, num_classes]`` for a batch dict with a presence mask.

    Submodules have stable dotted paths for feature hooks: ``encoders.<modality>``, ``fusion``,
    ``head``. Modalities the model does not see are ignored; modalities it sees but the batch
    lacks (or marks absent) are treated as missing, never as an error.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], fusion: nn.Module, head: nn.Module,
                 input_shapes: Mapping[str, tuple[int, ...]]):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.head = head
        self.modalities = list(encoders)
        self.input_shapes = {m: tuple(input_shapes[m]) for m in self.modalities}

    def forward(self, batch: Mapping) -> torch.Tensor:
        embeddings, present = {}, {}
        reference = next((batch[m] for m in self.modalities if m in batch), None)
        if reference is None:
            raise ValueError(f"batch has none of the model's modalities {self.modalities}")
        size, device = reference.shape[0], reference.device
        for m in self.modalities:
            x = batch.get(m)
            if x is None:
                x = torch.zeros((size, *self.input_shapes[m]), device=device)
            embeddings[m] = self.encoders[m](x)
            present[m] = presence(batch, m).to(device) if m in batch else torch.zeros(size, dtype=torch.bool, device=device)
        return self.head(self.fusion(embeddings, present))

    def feature_points(self) -> list[FeaturePoint]:
        """Each modality's embedding (``encoders.<m>``) and, for encoders with one
        (``map_module``), its last activation map; the fused embedding (``fusion``)."""
        points = []
        for m, encoder in self.encoders.items():
            points.append(FeaturePoint(f"encoders.{m}", "embedding", m))
            if getattr(encoder, "map_module", None):
                points.append(FeaturePoint(f"encoders.{m}.{encoder.map_module}", "map", m))
        return points + [FeaturePoint("fusion", "fused")]


@HEADS.register("mlp", options=HeadConfig)
def build_head(in_dim: int, num_classes: int, hidden=(), dropout: float = 0.0) -> nn.Module:
    layers: list[nn.Module] = []
    in_dim = add_mlp(layers, in_dim, hidden, dropout)
    if dropout and not hidden:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(in_dim, num_classes))
    return nn.Sequential(*layers)


@MODEL_KINDS.register("multimodal", options=ModelConfig)
def build_model(cfg, specs: Mapping[str, ModalitySpec], num_classes: int, *, seed: int | None = None) -> MultimodalModel:
    """Build a :class:`MultimodalModel` from a :class:`~mmdistill.config.ModelConfig` (or dict).

    With ``seed``, the initial weights depend on that seed alone (the global RNG is left as it
    was); without, they come from the global RNG, as in plain PyTorch.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(cfg, specs, num_classes)
    if not isinstance(cfg, ModelConfig):
        try:
            cfg = ModelConfig.model_validate(cfg)
        except pydantic.ValidationError as err:
            raise ConfigError(format_validation_error(err, "model")) from None
    check_fits_in_memory(lambda: _assemble(cfg, specs, num_classes))
    return _assemble(cfg, specs, num_classes)


def _assemble(cfg, specs, num_classes: int) -> MultimodalModel:
    encoders = {}
    for name, enc_cfg in cfg.selected_encoders().items():
        if name not in specs:
            raise ConfigError(f"model.encoders.{name}: the data has no modality {name!r} "
                              f"(it has {', '.join(specs)})")
        try:
            encoders[name] = ENCODERS.get(enc_cfg.type)(specs[name].shape, **options_of(enc_cfg, "type"))
        except ValueError as err:  # the encoder cannot read this modality's shape (its own check)
            kind = specs[name].kind
            suits = KINDS[kind].encoder if kind in KINDS else enc_cfg.type
            hint = f"; the {suits} encoder suits {kind} data" if suits != enc_cfg.type else ""
            raise ConfigError(f"model.encoders.{name}: modality {name!r} ({kind}, shape "
                              f"{list(specs[name].shape)}): {err}{hint}") from None
    dims = {m: e.out_dim for m, e in encoders.items()}
    fusion = FUSIONS.get(cfg.fusion.type)(dims, num_classes, **options_of(cfg.fusion, "type"))
    if getattr(fusion, "produces_logits", False):
        if getattr(cfg.head, "hidden", None):
            raise ConfigError(f"model.head.hidden: fusion {cfg.fusion.type!r} outputs logits and takes no head layers")
        head = nn.Identity()
    else:
        head = HEADS.get(cfg.head.type)(fusion.out_dim, num_classes, **options_of(cfg.head, "type"))
    return MultimodalModel(encoders, fusion, head, {m: specs[m].shape for m in encoders})


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


_CONFIG_KEY = {"encoders": "model.encoders", "fusion": "model.fusion", "head": "model.head"}


def check_fits_in_memory(build) -> None:
    """Build the model ``build()`` makes on the meta device (no memory) and raise ConfigError, naming
    its largest tensor's config key, when its weights alone would not fit in this machine's memory
    (e.g. ``hidden: [100000000000]``, or a checkpoint claiming 10**9 classes)."""
    limit = memory_bytes()
    if not limit:
        return
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            probe = build()
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001  (a module that cannot be built on meta: the real build reports problems)
        return
    tensors = list(probe.named_parameters()) + list(probe.named_buffers())
    total = sum(t.numel() * t.element_size() for _, t in tensors)
    if total > limit:
        name, big = max(tensors, key=lambda kv: kv[1].numel())
        parts = name.split(".")
        key = _CONFIG_KEY.get(parts[0], "model") + (f".{parts[1]}" if parts[0] == "encoders" else "")
        raise ConfigError(f"{key}: the model's weights need {total / 1e9:,.1f} GB ({name} alone is "
                          f"{list(big.shape)}), more than this machine's {limit / 1e9:,.1f} GB of memory")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
