"""The multimodal classifier: per-modality encoders -> fusion -> head."""
from __future__ import annotations

from typing import Mapping

import pydantic
import torch
from torch import nn

from ..data.batch import presence
from ..data.dataset import ModalitySpec
from ..errors import ConfigError
from .encoders import ENCODERS
from .fusion import FUSIONS
from .points import FeaturePoint


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


def build_head(in_dim: int, num_classes: int, hidden=(), dropout: float = 0.0) -> nn.Module:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    if dropout and not hidden:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(in_dim, num_classes))
    return nn.Sequential(*layers)


def build_model(cfg, specs: Mapping[str, ModalitySpec], num_classes: int, *, seed: int | None = None) -> MultimodalModel:
    """Build a :class:`MultimodalModel` from a :class:`~mmdistill.config.ModelConfig` (or dict).

    With ``seed``, the initial weights depend on that seed alone (the global RNG is left as it
    was); without, they come from the global RNG, as in plain PyTorch.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(cfg, specs, num_classes)
    from ..config import ModelConfig, format_validation_error

    # wiring: replaced by MODEL_KINDS on merge
    from .hf import HFModelConfig, build_hf_model
    from .timm import TimmModelConfig, build_timm_model

    if isinstance(cfg, HFModelConfig) or (isinstance(cfg, dict) and "hf" in cfg):
        return build_hf_model(cfg, specs, num_classes)
    if isinstance(cfg, TimmModelConfig) or (isinstance(cfg, dict) and "timm" in cfg):
        return build_timm_model(cfg, specs, num_classes)
    if not isinstance(cfg, ModelConfig):
        try:
            cfg = ModelConfig.model_validate(cfg)
        except pydantic.ValidationError as err:
            raise ConfigError(format_validation_error(err, "model")) from None
    encoders = {}
    for name, enc_cfg in cfg.selected_encoders().items():
        if name not in specs:
            raise ConfigError(f"model.encoders.{name}: the data has no modality {name!r} "
                              f"(it has {', '.join(specs)})")
        options = enc_cfg.model_dump(exclude={"type"})
        encoders[name] = ENCODERS.get(enc_cfg.type)(specs[name].shape, **options)
    dims = {m: e.out_dim for m, e in encoders.items()}
    fusion_cfg = cfg.fusion.model_dump(exclude={"type"})
    fusion = FUSIONS.get(cfg.fusion.type)(dims, num_classes, **fusion_cfg)
    if fusion.produces_logits:
        if cfg.head.hidden:
            raise ConfigError(f"model.head.hidden: fusion {cfg.fusion.type!r} outputs logits and takes no head layers")
        head = nn.Identity()
    else:
        head = build_head(fusion.out_dim, num_classes, cfg.head.hidden, cfg.head.dropout)
    return MultimodalModel(encoders, fusion, head, {m: specs[m].shape for m in encoders})


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
