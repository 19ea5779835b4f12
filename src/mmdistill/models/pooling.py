"""Adaptive average pooling that can run under ``train.deterministic`` on CUDA.

torch's CUDA backward of adaptive average pooling (``adaptive_avg_pool2d_backward_cuda``, which the
1-d version also uses) accumulates with atomics and has no deterministic implementation: with
``torch.use_deterministic_algorithms(True)`` it refuses to run, which would stop every conv
model. :func:`adaptive_avg_pool` computes the same bins (output cell i covers input rows
floor(i H / h) to ceil((i + 1) H / h)) as means of slices, whose backward is deterministic. It
is used only on CUDA with deterministic algorithms on; everywhere else torch's kernel runs, so
default runs are unchanged bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _bins(n: int, out: int) -> list[tuple[int, int]]:
    return [((i * n) // out, -(-((i + 1) * n) // out)) for i in range(out)]


def sliced_adaptive_avg_pool(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Adaptive average pooling of the last ``len(size)`` axes (1 or 2) by means of slices."""
    if len(size) == 1:
        return torch.stack([x[..., a:b].mean(-1) for a, b in _bins(x.shape[-1], size[0])], -1)
    rows = []
    for a, b in _bins(x.shape[-2], size[0]):
        rows.append(torch.stack([x[..., a:b, c:d].mean((-2, -1)) for c, d in _bins(x.shape[-1], size[1])], -1))
    return torch.stack(rows, -2)


def _deterministic_path(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.are_deterministic_algorithms_enabled()


def adaptive_avg_pool(x: torch.Tensor, size) -> torch.Tensor:
    """``F.adaptive_avg_pool1d/2d`` (by ``x``'s rank, 3 or 4), sliced on CUDA under deterministic algorithms."""
    dims = x.dim() - 2
    size = (size,) * dims if isinstance(size, int) else tuple(x.shape[2 + i] if s is None else s
                                                             for i, s in enumerate(size))
    if _deterministic_path(x):
        return sliced_adaptive_avg_pool(x, size)
    return F.adaptive_avg_pool1d(x, size) if dims == 1 else F.adaptive_avg_pool2d(x, size)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` that takes :func:`adaptive_avg_pool`'s deterministic path on CUDA."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _deterministic_path(x):
            return adaptive_avg_pool(x, self.output_size)
        return super().forward(x)
