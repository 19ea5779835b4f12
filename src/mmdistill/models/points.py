"""Named feature points: where a model offers features to a distillation method.

A model declares its points with a ``feature_points()`` method returning :class:`FeaturePoint`
records; :func:`feature_points` reads them (``{}`` for a model that declares none). A loss names
the *kind* of point it reads (its ``default_layer``: ``fusion``, ``encoders`` or ``maps``), and
:func:`placements` turns that into (student path, teacher path) pairs, one per shared modality
for per-modality kinds. This is the one place that decides where a method reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from ..errors import ConfigError

Kind = Literal["map", "embedding", "fused", "hidden"]
KINDS: tuple[str, ...] = ("map", "embedding", "fused", "hidden")


@dataclass(frozen=True)
class FeaturePoint:
    """``path``: the dotted module path a forward hook reads (``encoders.audio.features``);
    ``kind``: ``map`` (a [B, C, *spatial] activation map), ``embedding`` (one modality's vector),
    ``fused`` (the fused vector the head reads), ``hidden`` (a transformer's hidden states);
    ``modality``: the modality a per-modality point belongs to (None for fused points)."""

    path: str
    kind: Kind
    modality: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"feature point {self.path!r}: kind must be one of {KINDS}, not {self.kind!r}")


def feature_points(model: nn.Module) -> list[FeaturePoint]:
    """The points ``model`` declares (an empty list when it declares none)."""
    declare = getattr(model, "feature_points", None)
    return list(declare()) if callable(declare) else []


#: the point kind a loss with each ``default_layer`` reads (``mmdistill losses``); per modality
#: for maps and embeddings, with the fallbacks of :func:`_pick`
LAYER_KINDS = {"maps": "map", "encoders": "embedding", "fusion": "fused"}


def describe_layer(layer: str) -> str:
    """``features: KIND``, the point kind a loss with ``default_layer == layer`` reads."""
    return f"features: {LAYER_KINDS.get(layer, layer)}"


def _by_modality(points: list[FeaturePoint], kind: str) -> dict[str | None, FeaturePoint]:
    return {p.modality: p for p in points if p.kind == kind}


def _pick(points: list[FeaturePoint], layer: str) -> dict[str | None, FeaturePoint]:
    """Per modality, the point a loss with ``default_layer == layer`` reads: ``maps`` falls back
    to a modality's embedding when it has no map (an MLP encoder), ``encoders`` to hidden states
    when a modality has no embedding point."""
    if layer == "fusion":
        fused = _by_modality(points, "fused")
        return {None: fused[None]} if None in fused else {}
    first, fallback = {"maps": ("map", "embedding"), "encoders": ("embedding", "hidden")}[layer]
    chosen = _by_modality(points, fallback)
    chosen.update(_by_modality(points, first))
    chosen.pop(None, None)
    return chosen


def placements(layer: str, student: nn.Module, teacher: nn.Module, *, loss: str = "loss") -> list[tuple[str, str]]:
    """(student path, teacher path) pairs for a feature loss that reads ``layer`` points:
    ``fusion`` (one pair), ``encoders`` or ``maps`` (one pair per modality both models have).

    A model without declared points cannot be placed automatically; the error says to give the
    term's ``student:`` and ``teacher:`` module paths instead."""
    if layer not in ("fusion", "encoders", "maps"):
        raise ConfigError(f"{loss}: unknown feature layer {layer!r} (fusion, encoders or maps)")
    sides = {}
    for role, model in (("student", student), ("teacher", teacher)):
        points = feature_points(model)
        if not points:
            raise ConfigError(f"{loss}: the {role} ({type(model).__name__}) declares no feature points; give the "
                              f"term's student: and teacher: module paths explicitly")
        sides[role] = _pick(points, layer)
    s, t = sides["student"], sides["teacher"]
    shared = [m for m in s if m in t]
    if not shared:
        raise ConfigError(f"{loss}: no {layer} feature point is shared by student ({sorted(map(str, s)) or 'none'}) "
                          f"and teacher ({sorted(map(str, t)) or 'none'}); give student: and teacher: paths")
    return [(s[m].path, t[m].path) for m in shared]
