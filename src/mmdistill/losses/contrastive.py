"""Contrastive losses: a memory bank of embeddings over the whole training set."""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..models.multimodal import memory_bytes
from .base import DistillationLoss, check_temperature, compute_in_float32, register_loss


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

    * ``negatives="other_class"`` (default): from the samples of the other classes, without
      replacement when there are at least K of them, else with replacement, as the authors'
      reference does by default (RepDistiller's ``CIFAR100InstanceSample``, mode "exact");
      :meth:`bind` then needs the training labels;
    * ``negatives="uniform"``: uniformly from the other N - 1 entries, with replacement.

    The critic is h(v, w) = exp(v^T w / tau) / Z with Z fixed from the first batch
    (Z = N * mean exp(v^T w / tau)), and

    L = NCE(g_S(s) vs teacher bank) + NCE(g_T(t) vs student bank),
    NCE = -1/B * sum_b [log h_pos / (h_pos + K/N) + sum_k log (K/N) / (h_k + K/N)]

    ("Contrastive Representation Distillation", ICLR 2020, arXiv:1910.10699; in the
    form of the authors' ``CRDLoss``/``ContrastMemory``). In training mode each forward then
    updates the banks at ``index``: w <- normalise(momentum * w + (1 - momentum) * v).
    :meth:`bind` creates the heads (extra trainable parameters) and the banks (buffers, saved in
    checkpoints with Z); ``num_negatives`` is clamped to N - 1. Needs ``index``. Z is set by
    replacing its buffer, never by an in-place write, so several forwards may precede a backward.
    """

    inputs = "features"

    def __init__(
        self,
        feat_dim: int = 128,
        num_negatives: int = 4096,
        temperature: float = 0.07,
        momentum: float = 0.5,
        negatives: Literal["other_class", "uniform"] = "other_class",
    ):
        super().__init__()
        if feat_dim < 1:
            raise ValueError(f"feat_dim must be >= 1, got {feat_dim}")
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        check_temperature(temperature)
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if negatives not in ("other_class", "uniform"):
            raise ValueError(f"negatives must be 'other_class' or 'uniform', got {negatives!r}")
        self.feat_dim, self.num_negatives = feat_dim, num_negatives
        self.temperature, self.momentum, self.negatives = temperature, momentum, negatives
        self.needs_labels = negatives == "other_class"
        self.num_samples = 0
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None
        for name in ("memory_s", "memory_t", "z_s", "z_t"):
            self.register_buffer(name, None)
        # the training labels, sorted: derived from the data at bind, not saved in checkpoints
        for name in ("labels", "order", "class_start", "class_count"):
            self.register_buffer(name, None, persistent=False)

    @property
    def k(self) -> int:
        """The number of negatives per positive: num_negatives clamped to num_samples - 1."""
        return min(self.num_negatives, self.num_samples - 1)

    def bind(self, student_shape, teacher_shape, num_samples, *, labels=None):
        """Create the heads and the banks; shapes are batch shapes [B, ...], flattened after dim 0.

        ``labels`` [num_samples]: the class of each bank entry (needed for other-class negatives).
        """
        if num_samples < 2:
            raise ValueError(f"crd needs a dataset of at least 2 samples, got num_samples={num_samples}")
        if self.negatives == "other_class":
            self._bind_labels(labels, int(num_samples))
        d_s, d_t = math.prod(student_shape[1:]), math.prod(teacher_shape[1:])
        # refused before allocating: a size the OS grants lazily would otherwise be found out by the
        # out-of-memory killer while the banks are filled, not by an error naming the option
        need, limit = 4 * self.feat_dim * (d_s + d_t + 2 + 2 * int(num_samples)), memory_bytes()
        if limit and need > limit:
            raise MemoryError(f"feat_dim={self.feat_dim}: its heads and memory banks take {need / 2**30:,.1f} GiB, "
                              f"this machine has {limit / 2**30:,.1f} GiB")
        self.num_samples = int(num_samples)
        self.embed_s = nn.Linear(d_s, self.feat_dim)
        self.embed_t = nn.Linear(d_t, self.feat_dim)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(num_samples, self.feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(num_samples, self.feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))

    def _bind_labels(self, labels, num_samples: int) -> None:
        if labels is None:
            raise ValueError("crd draws negatives from other classes and needs the training labels: "
                             "bind(..., labels=...), or set negatives: uniform")
        labels = torch.as_tensor(labels).long().view(-1).cpu()
        if labels.numel() != num_samples:
            raise ValueError(f"crd: got {labels.numel()} labels for a dataset of {num_samples} samples")
        if bool((labels < 0).any()):
            raise ValueError(f"crd: negative label {int(labels.min())}")
        count = torch.bincount(labels)
        if int((count > 0).sum()) < 2:
            raise ValueError(f"crd draws negatives from other classes, but every training sample has class "
                             f"{int(labels[0])}: set negatives: uniform")
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("order", torch.argsort(labels, stable=True), persistent=False)
        self.register_buffer("class_start", torch.cumsum(count, 0) - count, persistent=False)
        self.register_buffer("class_count", count, persistent=False)

    def sample_negatives(self, idx: torch.Tensor) -> torch.Tensor:
        """[B, K] bank rows, none equal to its own ``idx`` (and of another class by default)."""
        b, k, n = idx.numel(), self.k, self.num_samples
        if self.negatives == "uniform":
            neg = torch.randint(0, n - 1, (b, k), device=idx.device)
            return neg + (neg >= idx.unsqueeze(1)).long()
        y = self.labels[idx]
        start, count = self.class_start[y], self.class_count[y]
        others = n - count
        neg = torch.empty(b, k, dtype=torch.long, device=idx.device)
        few = others < k  # fewer other-class samples than negatives: drawn with replacement
        if bool(few.any()):
            o = others[few].unsqueeze(1)
            r = (torch.rand(o.shape[0], k, dtype=torch.float64, device=idx.device) * o).long()
            r = torch.minimum(r, o - 1)  # r uniform in [0, others): skip the own class's block of order
            r = r + (r >= start[few].unsqueeze(1)).long() * count[few].unsqueeze(1)
            neg[few] = self.order[r]
        rows = (~few).nonzero().squeeze(1)
        for chunk in rows.split(max(1, 2**22 // n)):  # at most ~4M mask entries at a time
            mask = (self.labels.unsqueeze(0) != y[chunk].unsqueeze(1)).float()
            neg[chunk] = torch.multinomial(mask, k, replacement=False)
        return neg

    @compute_in_float32
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
        # checked on the CPU, where it costs nothing; on a GPU it would stall every step for a host
        # read, and an index out of range stops the gather below with a device-side assert anyway
        if device.type == "cpu" and bool(((idx < 0) | (idx >= n)).any()):
            raise ValueError(f"crd: index out of range for a memory bank of {n} samples")

        dtype = self.memory_s.dtype
        vs = F.normalize(self.embed_s(student.flatten(1)), dim=1).to(dtype)
        vt = F.normalize(self.embed_t(teacher.flatten(1)), dim=1).to(dtype)

        rows = torch.cat([idx.unsqueeze(1), self.sample_negatives(idx)], dim=1)  # [B, 1 + K], positive first

        out_s = torch.exp(self._scores(self.memory_t, vs, rows) / self.temperature)
        out_t = torch.exp(self._scores(self.memory_s, vt, rows) / self.temperature)
        with torch.no_grad():  # the normalisation constants, set once from the first batch
            # new tensors replace the buffers: a graph built by an earlier forward keeps the old ones
            self.z_s = torch.where(self.z_s < 0, out_s.mean() * n, self.z_s)
            self.z_t = torch.where(self.z_t < 0, out_t.mean() * n, self.z_t)
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
