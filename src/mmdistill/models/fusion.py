"""Fusion modules: combine per-modality embeddings, honouring the presence mask.

Each takes ``embeddings: {modality: [B, D_m]}`` and ``present: {modality: BoolTensor[B]}`` and
returns ``[B, out_dim]``. A sample whose modality is absent contributes nothing from it; a
sample with every modality absent gets zeros rather than NaN.

A fusion is built as ``cls(dims, num_classes, **options)`` (its options read from the constructor or given)
(``dims``: modality -> embedding size); it sets ``out_dim``, and ``produces_logits = True`` when
its output is already the class scores (no head follows).
"""
from __future__ import annotations

from typing import Literal, Mapping

import torch
from torch import nn

from ..options import PositiveInt, Strict
from ..registry import Registry

FUSIONS: Registry[type[nn.Module]] = Registry("fusion", default="concat", builder_args=2)


class PlainFusionConfig(Strict):
    type: Literal["concat", "late"] = "concat"


class ProjectedFusionConfig(Strict):
    type: Literal["attention", "gated"]
    dim: PositiveInt = 64


@FUSIONS.register("concat", options=PlainFusionConfig)
class ConcatFusion(nn.Module):
    """Early fusion: concatenate the embeddings (absent ones as zeros)."""

    produces_logits = False

    def __init__(self, dims: Mapping[str, int], num_classes: int):
        super().__init__()
        self.names = list(dims)
        self.out_dim = sum(dims.values())

    def forward(self, embeddings, present):
        return torch.cat([embeddings[m] * present[m].unsqueeze(1).to(embeddings[m].dtype) for m in self.names], dim=1)


@FUSIONS.register("late", options=PlainFusionConfig)
class LateFusion(nn.Module):
    """Late fusion: a linear classifier per modality; logits averaged over the present modalities."""

    produces_logits = True

    def __init__(self, dims: Mapping[str, int], num_classes: int):
        super().__init__()
        self.names = list(dims)
        self.classifiers = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})
        self.out_dim = num_classes

    def forward(self, embeddings, present):
        weights = torch.stack([present[m] for m in self.names], dim=1).float()      # [B, M]
        logits = torch.stack([self.classifiers[m](embeddings[m]) for m in self.names], dim=1)  # [B, M, K]
        return (logits * weights.unsqueeze(2)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)


class _ProjectedFusion(nn.Module):
    produces_logits = False

    def __init__(self, dims: Mapping[str, int], num_classes: int, dim: int = 64):
        super().__init__()
        self.names = list(dims)
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in dims.items()})
        self.out_dim = dim

    def _stack(self, embeddings, present):
        z = torch.stack([self.project[m](embeddings[m]) for m in self.names], dim=1)  # [B, M, D]
        mask = torch.stack([present[m] for m in self.names], dim=1)                  # [B, M]
        return z, mask


@FUSIONS.register("attention", options=ProjectedFusionConfig)
class AttentionFusion(_ProjectedFusion):
    """Attention fusion: sum_m a_m z_m with a = softmax_m(w^T tanh(z_m)) over present modalities."""

    def __init__(self, dims: Mapping[str, int], num_classes: int, dim: int = 64):
        super().__init__(dims, num_classes, dim)
        self.score = nn.Sequential(nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, embeddings, present):
        z, mask = self._stack(embeddings, present)
        scores = self.score(z).squeeze(2).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0)  # all-absent rows -> zeros
        return (weights.unsqueeze(2) * z).sum(1)


@FUSIONS.register("gated", options=ProjectedFusionConfig)
class GatedFusion(_ProjectedFusion):
    """Gated fusion: sum_m g_m * z_m with gates g = sigmoid(W [z_1, ..., z_M]), absent z_m = 0."""

    def __init__(self, dims: Mapping[str, int], num_classes: int, dim: int = 64):
        super().__init__(dims, num_classes, dim)
        self.gate = nn.Linear(dim * len(dims), dim * len(dims))

    def forward(self, embeddings, present):
        z, mask = self._stack(embeddings, present)
        z = z * mask.unsqueeze(2).to(z.dtype)
        gates = torch.sigmoid(self.gate(z.flatten(1))).view_as(z)
        return (gates * z).sum(1)
