"""Projection adapters from a student feature's shape to the teacher's (FitNets' regressor).

A linear map for vectors ``[B, D]``, a 1x1 convolution for maps ``[B, C, H, W]`` (student maps
are average-pooled to the teacher's spatial size first) and for sequences ``[B, C, L]``. Adapters
train with the student, are counted apart from it, and are not part of the deployed student.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.pooling import adaptive_avg_pool


class Adapter(nn.Module):
    def __init__(self, student_shape: torch.Size, teacher_shape: torch.Size):
        super().__init__()
        s, t = tuple(student_shape[1:]), tuple(teacher_shape[1:])
        if len(s) != len(t):
            raise ValueError(f"cannot adapt a feature of shape {s} to {t}: different number of dimensions")
        self.spatial = t[1:]
        if len(t) == 1:
            self.project = nn.Linear(s[0], t[0], bias=False)
        elif len(t) == 2:
            self.project = nn.Conv1d(s[0], t[0], 1, bias=False)
        elif len(t) == 3:
            self.project = nn.Sequential(nn.Conv2d(s[0], t[0], 1, bias=False), nn.BatchNorm2d(t[0]))
        else:
            raise ValueError(f"no adapter for features of shape {t}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.spatial) in (1, 2) and x.shape[2:] != self.spatial:
            x = adaptive_avg_pool(x, self.spatial)  # deterministic-capable on CUDA (models.pooling)
        return self.project(x)
