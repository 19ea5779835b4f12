"""Contrastive losses: a memory bank of embeddings over the whole training set."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import DistillationLoss, register_loss


def nce_loss(scores: torch.Tensor, num_samples: int, eps: float = 1e-7) -> torch.Tensor:
    """NCE loss of unnormalised probabilities ``scores`` [B, 1 + K] (positive first) vs uniform noise.

    With P_n = 1/N and m = K: h(x) = x / (x + m P_n); L = -1/B * sum_b [log h(x_b0) + sum_k log(1 - h(x_bk))].
    """
    b, m = scores.shape[0], scores.shape[1] - 1
    noise = m / num_samples
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + eps))
    log_d0 = torch.log(noise / (neg + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / b


@register_loss("crd")
class CRD(DistillationLoss):
    """Contrastive representation distillation: NCE over a memory bank of student and teacher embeddings (Tian et al. 2020).

    Linear heads g_S, g_T map the flattened features to ``feat_dim`` and l2-normalise them. Two
    memory banks of size N = num_samples (the dataset size) keep a running embedding per sample.
    For sample i of the batch, the positive is bank entry ``index[i]`` and K negatives are drawn
    uniformly from the other N - 1 entries; the critic is h(v, w) = exp(v^T w / tau) / Z with Z
    fixed from the first batch (Z = N * mean exp(v^T w / tau)), and

    L = NCE(g_S(s) vs teacher bank) + NCE(g_T(t) vs student bank),
    NCE = -1/B * sum_b [log h_pos / (h_pos + K/N) + sum_k log (K/N) / (h_k + K/N)]

    ("Contrastive Representation Distillation", ICLR 2020, arXiv:1910.10699; in the
    form of the authors' ``CRDLoss``/``ContrastMemory``). In training mode each forward then
    updates the banks at ``index``: w <- normalise(momentum * w + (1 - momentum) * v).
    :meth:`bind` creates the heads (extra trainable parameters) and the banks (buffers, saved in
    checkpoints); ``num_negatives`` is clamped to N - 1. Needs ``index``.
    """

    inputs = "features"

    def __init__(
        self,
        feat_dim: int = 128,
        num_negatives: int = 4096,
        temperature: float = 0.07,
        momentum: float = 0.5,
    ):
        super().__init__()
        if feat_dim < 1:
            raise ValueError(f"feat_dim must be >= 1, got {feat_dim}")
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.feat_dim, self.num_negatives = feat_dim, num_negatives
        self.temperature, self.momentum = temperature, momentum
        self.num_samples = 0
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None
        for name in ("memory_s", "memory_t", "z_s", "z_t"):
            self.register_buffer(name, None)

    @property
    def k(self) -> int:
        """The number of negatives per positive: num_negatives clamped to num_samples - 1."""
        return min(self.num_negatives, self.num_samples - 1)

    def bind(self, student_shape, teacher_shape, num_samples):
        """Create the heads and the banks; shapes are batch shapes [B, ...], flattened after dim 0."""
        if num_samples < 2:
            raise ValueError(f"crd needs a dataset of at least 2 samples, got num_samples={num_samples}")
        d_s, d_t = math.prod(student_shape[1:]), math.prod(teacher_shape[1:])
        self.num_samples = int(num_samples)
        self.embed_s = nn.Linear(d_s, self.feat_dim)
        self.embed_t = nn.Linear(d_t, self.feat_dim)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(num_samples, self.feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(num_samples, self.feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))

    def forward(self, student, teacher, *, target=None, index=None):
        if self.embed_s is None:
            raise RuntimeError("crd: call bind(student_shape, teacher_shape, num_samples) before the first forward")
        if index is None:
            raise ValueError("crd needs the dataset indices of the batch: call it with index=...")
        b = student.shape[0]
        if teacher.shape[0] != b:
            raise ValueError(f"crd: batch sizes differ, {tuple(student.shape)} vs {tuple(teacher.shape)}")
        device = student.device
        idx = torch.as_tensor(index, device=device).long().view(-1)
        if idx.numel() != b:
            raise ValueError(f"crd: got {idx.numel()} indices for a batch of {b}")
        n = self.num_samples
        if bool(((idx < 0) | (idx >= n)).any()):
            raise ValueError(f"crd: index out of range for a memory bank of {n} samples")

        dtype = self.memory_s.dtype
        vs = F.normalize(self.embed_s(student.flatten(1)), dim=1).to(dtype)
        vt = F.normalize(self.embed_t(teacher.flatten(1)), dim=1).to(dtype)

        # K negatives per sample, uniform over the bank without the positive itself
        neg = torch.randint(0, n - 1, (b, self.k), device=device)
        neg = neg + (neg >= idx.unsqueeze(1)).long()
        rows = torch.cat([idx.unsqueeze(1), neg], dim=1)  # [B, 1 + K], positive first

        out_s = torch.exp(self._scores(self.memory_t, vs, rows) / self.temperature)
        out_t = torch.exp(self._scores(self.memory_s, vt, rows) / self.temperature)
        with torch.no_grad():  # the normalisation constants, set once from the first batch
            self.z_s.copy_(torch.where(self.z_s < 0, out_s.mean() * n, self.z_s))
            self.z_t.copy_(torch.where(self.z_t < 0, out_t.mean() * n, self.z_t))
        loss = nce_loss(out_s / self.z_s, n) + nce_loss(out_t / self.z_t, n)

        if self.training:
            with torch.no_grad():
                m = self.momentum
                self.memory_s.index_copy_(0, idx, F.normalize(self.memory_s[idx] * m + vs * (1 - m), dim=1))
                self.memory_t.index_copy_(0, idx, F.normalize(self.memory_t[idx] * m + vt * (1 - m), dim=1))
        return loss

    @staticmethod
    def _scores(memory: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[B, 1 + K] dot products memory[rows[b, k]] . v[b].

        When the sampled rows are a large share of the bank, scoring the whole bank with one
        matrix product and picking the rows is far cheaper than gathering a [B, 1 + K, D] copy
        of the bank; both give the same values.
        """
        if memory.shape[0] <= 8 * rows.shape[1]:
            # a copy: autograd keeps the bank for the backward pass, and the bank is updated in place
            return (v @ memory.clone().t()).gather(1, rows)
        return torch.bmm(memory[rows], v.unsqueeze(2)).squeeze(2)
