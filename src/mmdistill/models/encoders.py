"""Per-modality encoders: each maps ``[B, *shape]`` to an embedding ``[B, out_dim]``.

An encoder is built as ``cls(shape, **options)``; it sets ``out_dim`` (and, optionally,
``map_module``: the submodule whose output is its last activation map, a feature point). Its
options are read from the constructor after ``shape`` (or given as ``options=``, as the built-ins
do for their constraints). A user's encoder works from YAML once its module is listed in
``imports:``::

    @ENCODERS.register("wide")
    class WideEncoder(nn.Module):
        def __init__(self, shape, width: int = 64): ...
"""
from __future__ import annotations

from typing import Annotated, Literal, Sequence

import math
import torch
from pydantic import Field
from torch import nn

from ..options import PositiveInt, Strict
from ..registry import Registry
from .pooling import AdaptiveAvgPool2d

ENCODERS: Registry[type[nn.Module]] = Registry("encoder", builder_args=1)


def add_mlp(layers: list[nn.Module], in_dim: int, hidden: Sequence[int], dropout: float) -> int:
    """Append Linear - ReLU (- Dropout) for each width in ``hidden``; returns the output width."""
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    return in_dim


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


class TextEncoderConfig(Strict):
    """An embedding bag over a ``text`` modality's token ids (see :class:`TextEncoder`)."""

    type: Literal["text"]
    buckets: PositiveInt = 8192
    dim: PositiveInt = 64
    hidden: list[PositiveInt] = []
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0


def check_conv_input(shape: Sequence[int], blocks: int, stride: int = 1) -> None:
    """Raise ValueError unless a ``blocks``-block :class:`ConvEncoder` can read samples of ``shape``:
    [C, H, W] or [H, W], each spatial side still at least 1 after every block's conv and maxpool2."""
    shape = [int(d) for d in shape]
    if len(shape) not in (2, 3):
        raise ValueError(f"a conv encoder reads images or spectrograms ([C, H, W] or [H, W]), not samples of shape "
                         f"{shape}; use type: mlp")
    sides = shape[-2:]
    for i in range(blocks):
        s = stride if i == 0 else 1
        sides = [((d - 1) // s + 1) // 2 for d in sides]  # conv3x3 (padding 1, stride s), then maxpool2
        if min(sides) < 1:
            raise ValueError(f"samples of shape {shape} are too small for {blocks} conv blocks (each halves the "
                             f"height and width; block {i + 1} would get nothing); use fewer channels entries "
                             f"or type: mlp")


@ENCODERS.register("conv", options=ConvEncoderConfig)
class ConvEncoder(nn.Module):
    """A 2-D CNN for images ([C,H,W] or [H,W]) and spectrograms ([1, mels, frames]).

    Each width in ``channels`` adds conv3x3 - BatchNorm - ReLU - maxpool2; average pooling to a
    ``pool`` x ``pool`` grid follows (1: global pooling; more keeps coarse layout), then an optional
    linear projection to ``dim``.

    Cheaper variants for small students: ``stride`` 2 makes the first convolution strided (a
    "stem" that quarters every later block's cost); ``separable`` replaces each later block's
    conv3x3 by a depthwise conv3x3 and a pointwise conv1x1 (MobileNet, Howard et al. 2017).
    """

    map_module = "features"  # the submodule whose output is the last activation map (a feature point)

    def __init__(self, shape: Sequence[int], channels: Sequence[int] = (32, 64), dim: int | None = None,
                 dropout: float = 0.0, pool: int = 1, stride: int = 1, separable: bool = False):
        super().__init__()
        check_conv_input(shape, len(channels), stride)
        self.add_channel = len(shape) == 2
        in_ch = 1 if self.add_channel else int(shape[0])
        layers: list[nn.Module] = []
        for i, width in enumerate(channels):
            if separable and i > 0:
                conv = [nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),
                        nn.Conv2d(in_ch, width, 1, bias=False)]
            else:
                conv = [nn.Conv2d(in_ch, width, 3, stride=stride if i == 0 else 1, padding=1, bias=False)]
            layers += [*conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(AdaptiveAvgPool2d(pool), nn.Flatten())  # deterministic-capable on CUDA
        pooled = in_ch * pool * pool
        self.project = nn.Sequential(nn.Dropout(dropout), nn.Linear(pooled, dim), nn.ReLU(inplace=True)) if dim else nn.Identity()
        self.out_dim = dim or pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.add_channel:
            x = x.unsqueeze(1)
        return self.project(self.pool(self.features(x)))


@ENCODERS.register("mlp", options=MLPEncoderConfig)
class MLPEncoder(nn.Module):
    """An MLP over the flattened input: Linear - ReLU (- Dropout) for each width in ``hidden``."""

    def __init__(self, shape: Sequence[int], hidden: Sequence[int] = (128,), dropout: float = 0.0,
                 input_dropout: float = 0.0):
        super().__init__()
        in_dim = math.prod(shape)
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout:
            layers.append(nn.Dropout(input_dropout))
        self.out_dim = add_mlp(layers, in_dim, hidden, dropout)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@ENCODERS.register("text", options=TextEncoderConfig)
class TextEncoder(nn.Module):
    """Token ids -> an embedding bag -> an MLP, for a ``text`` modality ``[2, L]`` (ids; attention mask).

    e = sum_t m_t E[id_t mod buckets] / max(1, sum_t m_t): the masked mean of the token embeddings
    (fastText, Joulin et al. 2017), then Linear - ReLU (- Dropout) for each width in ``hidden``.
    Ids are hashed into ``buckets`` rows (the hashing trick, Weinberger et al. 2009): exact when the
    tokenizer's vocabulary has at most ``buckets`` entries.
    """

    def __init__(self, shape: Sequence[int], buckets: int = 8192, dim: int = 64, hidden: Sequence[int] = (),
                 dropout: float = 0.0):
        super().__init__()
        if len(shape) != 2 or shape[0] != 2:
            from ..errors import ConfigError

            raise ConfigError(f"text encoder: input shape {list(shape)} is not [2, max_length] (token ids and "
                              "attention mask of a text modality)")
        self.buckets = buckets
        self.embed = nn.Embedding(buckets, dim)
        layers: list[nn.Module] = []
        self.out_dim = add_mlp(layers, dim, hidden, dropout)
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x[:, 0].long().remainder(self.buckets)
        mask = x[:, 1].to(self.embed.weight.dtype).unsqueeze(2)
        pooled = (self.embed(ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.mlp(pooled)
