"""Losses on intermediate features: hints, attention maps, activation distributions, VID.

Feature maps are ``[B, C, H, W]`` (images) or ``[B, C, L]`` (sequences: channels first);
vectors ``[B, D]`` are accepted too. Where a method compares spatial positions (AT, NST, VID)
and the two spatial sizes differ, the larger map is adaptive-average-pooled to the smaller one,
as in the reference implementations (CRD's RepDistiller).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.pooling import adaptive_avg_pool
from .base import DistillationLoss, compute_in_float32, register_loss


def _check_batch(name: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() < 2 or teacher.dim() < 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{name} expects student and teacher features [B, ...] with the same batch size, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def _as_map(name: str, x: torch.Tensor) -> torch.Tensor:
    """[B, D] -> [B, 1, D] (one channel over D positions); [B, C, L] and [B, C, H, W] unchanged."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    if x.dim() in (3, 4):
        return x
    raise ValueError(f"{name} expects features [B, D], [B, C, L] or [B, C, H, W], got {tuple(x.shape)}")


def match_spatial(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool whichever map is larger, per spatial axis, to the smaller size."""
    if student.dim() != teacher.dim():
        raise ValueError(
            f"student and teacher maps differ in rank: {tuple(student.shape)} vs {tuple(teacher.shape)}"
        )
    if student.shape[2:] == teacher.shape[2:]:
        return student, teacher
    size = tuple(min(a, b) for a, b in zip(student.shape[2:], teacher.shape[2:]))
    pool = adaptive_avg_pool  # F.adaptive_avg_pool1d/2d, deterministic-capable on CUDA
    if tuple(student.shape[2:]) != size:
        student = pool(student, size)
    if tuple(teacher.shape[2:]) != size:
        teacher = pool(teacher, size)
    return student, teacher


@register_loss("fitnet")
class FitNet(DistillationLoss):
    """FitNets hint loss: mean squared error between student and teacher features (Romero et al. 2015).

    L = 1/N * sum (u_S - u_T)^2 over all N elements: the hint objective
    1/2 ||u_T - r(v_S)||^2 of "FitNets: Hints for Thin Deep Nets" (ICLR 2015, arXiv:1412.6550)
    as a per-element mean (RepDistiller's ``HintLoss``). The regressor r is the adapter the engine
    inserts when the shapes differ; the loss itself needs equal shapes.
    """

    inputs = "features"
    default_layer = "encoders"
    needs_adapter = True

    @compute_in_float32
    def forward(self, student, teacher, *, target=None, index=None):
        if student.shape != teacher.shape:
            raise ValueError(
                f"fitnet needs student and teacher features of the same shape (an adapter maps one onto "
                f"the other), got {tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        return F.mse_loss(student, teacher)


def attention_map(x: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of a map [B, C, ...]: l2-normalised 1/C * sum_c |x_c|^p, flattened to [B, HW]."""
    return F.normalize(x.abs().pow(p).mean(dim=1).flatten(1), dim=1)


@register_loss("at")
class AttentionTransfer(DistillationLoss):
    """Attention transfer: match l2-normalised spatial attention maps sum_c |A_c|^p (Zagoruyko & Komodakis 2017).

    Q = vec(1/C * sum_c |A_c|^p) / ||vec(1/C * sum_c |A_c|^p)||_2 per sample, and
    L = 1/(B * HW) * sum_b ||Q_S,b - Q_T,b||_2^2 ("Paying More Attention to Attention", ICLR 2017,
    arXiv:1612.03928: activation-based attention F^p_sum, which after normalisation equals the
    channel mean used here; the reference ``at_loss`` takes the same mean over B * HW, the paper's
    beta/2 weight is the trainer's business). The normalised map does not depend on the channel
    count (duplicating the channels leaves it unchanged), so student and teacher may differ in C;
    maps of different spatial size are pooled to the smaller one. A vector [B, D] is read as one
    channel over D positions.
    """

    inputs = "features"
    default_layer = "maps"

    def __init__(self, p: float = 2.0):
        super().__init__()
        if p <= 0:
            raise ValueError(f"p must be > 0, got {p}")
        self.p = p

    @compute_in_float32
    def forward(self, student, teacher, *, target=None, index=None):
        _check_batch("at", student, teacher)
        s, t = match_spatial(_as_map("at", student), _as_map("at", teacher))
        return (attention_map(s, self.p) - attention_map(t, self.p)).pow(2).mean()


@register_loss("nst")
class NST(DistillationLoss):
    """Neural selectivity transfer: squared MMD between the channels' normalised activation patterns (Huang & Wang 2017).

    Each channel's spatial activations are l2-normalised, f^i = vec(F_i) / ||vec(F_i)||, and per
    sample, with the polynomial kernel k(x, y) = (x^T y + c)^d (d = 2, c = 0 by default),

    MMD^2 = 1/C_T^2 sum_{i,i'} k(f_T^i, f_T^i') + 1/C_S^2 sum_{j,j'} k(f_S^j, f_S^j')
            - 2/(C_T C_S) sum_{i,j} k(f_T^i, f_S^j),

    averaged over the batch ("Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer", arXiv:1707.01219, the MMD loss with the polynomial kernel). Channel counts may
    differ; maps of different spatial size are pooled to the smaller one. A vector [B, D] is read
    as one channel over D positions.
    """

    inputs = "features"
    default_layer = "maps"

    def __init__(self, degree: int = 2, c: float = 0.0):
        super().__init__()
        if degree < 1:
            raise ValueError(f"degree must be >= 1, got {degree}")
        self.degree, self.c = degree, c

    def _kernel_mean(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.transpose(1, 2) + self.c).pow(self.degree).mean()

    @compute_in_float32
    def forward(self, student, teacher, *, target=None, index=None):
        _check_batch("nst", student, teacher)
        s, t = match_spatial(_as_map("nst", student), _as_map("nst", teacher))
        fs = F.normalize(s.flatten(2), dim=2)
        ft = F.normalize(t.flatten(2), dim=2)
        return self._kernel_mean(ft, ft) + self._kernel_mean(fs, fs) - 2 * self._kernel_mean(fs, ft)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


@register_loss("vid")
class VID(DistillationLoss):
    """Variational information distillation: Gaussian negative log-likelihood of the teacher given the student (Ahn et al. 2019).

    The teacher feature t is modelled as N(mu(s), sigma^2) with mu a regressor of the student
    feature s (three pointwise layers, student channels -> hidden -> hidden -> teacher channels,
    ReLU between: 1x1 convolutions on maps, linear layers on vectors) and one learnable variance
    per teacher channel, sigma_c^2 = softplus(alpha_c) + eps, initialised to ``init_pred_var``:

    L = 1/N * sum_{c, positions} [ (t - mu(s))^2 / (2 sigma_c^2) + 1/2 log sigma_c^2 ]

    averaged over the N elements, the constant log(2 pi)/2 dropped ("Variational Information
    Distillation for Knowledge Transfer", CVPR 2019, arXiv:1904.05835, Sec. 3: the Gaussian
    variational distribution with per-channel variance; layout as RepDistiller's ``VIDLoss``). The regressor and the variances are created by
    :meth:`bind` (``hidden_channels`` defaults to the teacher channels). Works for vectors
    [B, D] and maps [B, C, L] / [B, C, H, W]; maps of different spatial size are pooled to the
    smaller one.
    """

    inputs = "features"
    default_layer = "encoders"

    def __init__(self, init_pred_var: float = 5.0, eps: float = 1e-5, hidden_channels: int | None = None):
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if init_pred_var <= eps:
            raise ValueError(f"init_pred_var must be > eps ({eps}), got {init_pred_var}")
        if hidden_channels is not None and hidden_channels < 1:
            raise ValueError(f"hidden_channels must be >= 1, got {hidden_channels}")
        self.init_pred_var, self.eps, self.hidden_channels = init_pred_var, eps, hidden_channels
        self.regressor: nn.Module | None = None
        self.log_scale: nn.Parameter | None = None

    def bind(self, student_shape, teacher_shape, num_samples):
        """Create the regressor and the variances; shapes are batch shapes, channels at dim 1."""
        if len(student_shape) < 2 or len(teacher_shape) < 2:
            raise ValueError(f"vid needs batch shapes [B, C, ...], got {student_shape} and {teacher_shape}")
        c_s, c_t = int(student_shape[1]), int(teacher_shape[1])
        hidden = self.hidden_channels or c_t
        self.regressor = nn.Sequential(
            nn.Linear(c_s, hidden, bias=False), nn.ReLU(),
            nn.Linear(hidden, hidden, bias=False), nn.ReLU(),
            nn.Linear(hidden, c_t, bias=False),
        )
        self.log_scale = nn.Parameter(torch.full((c_t,), _inverse_softplus(self.init_pred_var - self.eps)))

    @compute_in_float32
    def forward(self, student, teacher, *, target=None, index=None):
        if self.regressor is None:
            raise RuntimeError("vid: call bind(student_shape, teacher_shape, num_samples) before the first forward")
        _check_batch("vid", student, teacher)
        c_s, c_t = self.regressor[0].in_features, self.log_scale.numel()
        if student.shape[1] != c_s or teacher.shape[1] != c_t:
            raise ValueError(
                f"vid was bound to {c_s} student and {c_t} teacher channels, got features "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        if student.dim() > 2 or teacher.dim() > 2:
            student, teacher = match_spatial(student, teacher)
        mean = self.regressor(student.movedim(1, -1)).movedim(-1, 1)
        var = (F.softplus(self.log_scale) + self.eps).view(1, -1, *([1] * (teacher.dim() - 2)))
        nll = 0.5 * ((mean - teacher).pow(2) / var + var.log())
        return nll.mean()
