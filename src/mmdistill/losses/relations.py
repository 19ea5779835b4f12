"""Relational losses: match how samples of a batch relate to each other, not the features themselves.

All take features [B, D] or maps [B, C, ...] (flattened to [B, C*...]); student and teacher may
differ in dimension, only the batch size must agree.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from .base import DistillationLoss, compute_in_float32, register_loss


def _flatten_pair(name: str, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if student.dim() < 2 or teacher.dim() < 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{name} expects student and teacher features [B, ...] with the same batch size, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    return student.flatten(1), teacher.flatten(1)


def _zero(x: torch.Tensor) -> torch.Tensor:
    """A zero loss still attached to the graph of ``x`` (for batches too small to have relations)."""
    return x.sum() * 0


@register_loss("sp")
class SimilarityPreserving(DistillationLoss):
    """Similarity-preserving KD: match the row-normalised batch Gram matrices (Tung & Mori 2019).

    G = F F^T over the flattened features F [B, D], each row l2-normalised to G~, and
    L = 1/B^2 * ||G~_T - G~_S||_F^2 ("Similarity-Preserving Knowledge Distillation", ICCV 2019,
    arXiv:1907.09682, the L_SP of one layer pair; the weight gamma is the trainer's).
    Invariant to scaling either feature by a constant.
    """

    inputs = "features"
    default_layer = "maps"

    @compute_in_float32
    def forward(self, student, teacher, *, target=None, index=None):
        s, t = _flatten_pair("sp", student, teacher)
        b = s.shape[0]
        gs = F.normalize(s @ s.t(), dim=1)
        gt = F.normalize(t @ t.t(), dim=1)
        return (gt - gs).pow(2).sum() / (b * b)


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances [B, B] with a zero diagonal; squared distances are clamped at ``eps``
    (at least the dtype's smallest normal number, so that it never rounds to 0 in half precision)."""
    sq = e.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=max(eps, torch.finfo(e.dtype).tiny))
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d2.sqrt().masked_fill(eye, 0)


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    """psi_D: distances divided by their mean over the pairs i != j."""
    b = e.shape[0]
    d = pairwise_distances(e)
    return d / (d.sum() / (b * (b - 1)))


def _angles(e: torch.Tensor) -> torch.Tensor:
    """psi_A[a, b, c] = <(e_b - e_a) / ||e_b - e_a||, (e_c - e_a) / ||e_c - e_a||>, flattened."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [a, b] = e_b - e_a
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    if student.shape[0] < 2:
        return _zero(student)
    with torch.no_grad():
        t = _normalised_distances(teacher)
    return F.smooth_l1_loss(_normalised_distances(student), t)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    if student.shape[0] < 3:
        return _zero(student)
    with torch.no_grad():
        t = _angles(teacher)
    return F.smooth_l1_loss(_angles(student), t)


_RKD_DOC = """

    psi_D(t_i, t_j) = ||t_i - t_j|| / mu, mu the mean distance over the pairs i != j;
    psi_A(t_i, t_j, t_k) = <e_ij, e_kj>, e_ij = (t_i - t_j) / ||t_i - t_j|| (the angle at t_j);
    both compared with the Huber (smooth-L1, delta = 1) loss, averaged over all B^2 pairs resp.
    all B^3 triplets including the degenerate ones (which are 0 for both networks), as the
    authors' reference code does ("Relational Knowledge Distillation", CVPR 2019,
    arXiv:1904.05068, Sec. 3.2). Teacher relations are computed without gradient.
    Invariant to scaling either feature by a constant. Memory grows as B^2 * D for the angles.
"""


@register_loss("rkd")
class RKD(DistillationLoss):
    __doc__ = (
        "Relational KD: distance-wise and angle-wise relations of the batch, Huber-matched (Park et al. 2019).\n"
        "\n    L = distance_weight * L_RKD-D + angle_weight * L_RKD-A, with" + _RKD_DOC
    )

    inputs = "features"

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        if distance_weight < 0 or angle_weight < 0:
            raise ValueError(
                f"distance_weight and angle_weight must be >= 0, got {distance_weight} and {angle_weight}"
            )
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    @compute_in_float32
    def forward(self, student, teacher, *, target=None, index=None):
        s, t = _flatten_pair("rkd", student, teacher)
        loss = _zero(s)
        if self.distance_weight:
            loss = loss + self.distance_weight * rkd_distance_loss(s, t)
        if self.angle_weight:
            loss = loss + self.angle_weight * rkd_angle_loss(s, t)
        return loss


@register_loss("rkd_distance")
class RKDDistance(DistillationLoss):
    __doc__ = (
        "Relational KD, distance-wise term only: Huber loss between mean-normalised pairwise distances (Park et al. 2019).\n"
        "\n    L = 1/B^2 * sum_{i,j} huber(psi_D(s_i, s_j) - psi_D(t_i, t_j)), with" + _RKD_DOC
    )

    inputs = "features"

    @compute_in_float32
    def forward(self, student, teacher, *, target=None, index=None):
        return rkd_distance_loss(*_flatten_pair("rkd_distance", student, teacher))


@register_loss("rkd_angle")
class RKDAngle(DistillationLoss):
    __doc__ = (
        "Relational KD, angle-wise term only: Huber loss between the cosines of all triplet angles (Park et al. 2019).\n"
        "\n    L = 1/B^3 * sum_{i,j,k} huber(psi_A(s_i, s_j, s_k) - psi_A(t_i, t_j, t_k)), with" + _RKD_DOC
    )

    inputs = "features"

    @compute_in_float32
    def forward(self, student, teacher, *, target=None, index=None):
        return rkd_angle_loss(*_flatten_pair("rkd_angle", student, teacher))


@register_loss("pkt")
class PKT(DistillationLoss):
    """Probabilistic knowledge transfer: KL between cosine-kernel conditional distributions (Passalis & Tefas 2018).

    With x~ = x / (||x|| + eps) and the cosine kernel K(a, b) = (a~^T b~ + 1) / 2, the conditional
    probabilities are p_{j|i} = K(t_i, t_j) / sum_k K(t_i, t_k) (teacher) and likewise q_{j|i}
    (student), and L = 1/B^2 * sum_{i,j} p_{j|i} log((p_{j|i} + eps) / (q_{j|i} + eps)), eps = 1e-7
    ("Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018,
    arXiv:1803.10837, the KL objective with the cosine-similarity kernel; like the authors' reference
    ``cosine_similarity_loss`` the sums include j = i and the result is the mean over the B x B
    matrix).
    """

    inputs = "features"

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = eps

    def _conditional(self, x: torch.Tensor) -> torch.Tensor:
        x = x / (x.norm(dim=1, keepdim=True) + self.eps)
        k = (x @ x.t() + 1) / 2
        return k / k.sum(dim=1, keepdim=True)

    @compute_in_float32
    def forward(self, student, teacher, *, target=None, index=None):
        s, t = _flatten_pair("pkt", student, teacher)
        q, p = self._conditional(s), self._conditional(t)
        return (p * torch.log((p + self.eps) / (q + self.eps))).mean()


@register_loss("cc")
class CorrelationCongruence(DistillationLoss):
    """Correlation congruence: match the batch correlation matrices under a Taylor-expanded Gaussian kernel (Peng et al. 2019).

    Two forms, which differ in value by orders of magnitude (weights do not carry over):

    * ``form="paper"`` (default) follows "Correlation Congruence for Knowledge Distillation"
      (ICCV 2019, arXiv:1904.01802, L_CC with the generalised kernel correlation): on
      l2-normalised features f the Gaussian RBF k(f_i, f_j) = exp(-gamma ||f_i - f_j||^2)
      = exp(-2 gamma) exp(2 gamma f_i^T f_j) is approximated by its P-order Taylor expansion,
      k(f_i, f_j) ~ sum_{p=0}^{P} exp(-2 gamma) (2 gamma)^p / p! (f_i^T f_j)^p, giving the B x B
      correlation matrix Psi, and L = 1/B^2 * ||Psi_T - Psi_S||_F^2.
    * ``form="torchdistill"`` is torchdistill's ``CCKDLoss`` (reduction "batchmean"): the same
      expansion on the features as given, not normalised, and the norm not squared,
      L = 1/B^2 * ||Psi_T - Psi_S||_F. (torchdistill applies it to the 128-d outputs of a
      trainable linear layer on each network, ``Linear4CCKD``; here the term compares the
      captured features, so add such a layer to the models to reproduce that setup.)

    ``kernel="bilinear"`` replaces the expansion by Psi = F F^T in either form. Defaults
    gamma = 0.4, P = 2 as in torchdistill's ImageNet configuration. (RepDistiller's
    ``Correlation``, taken from the authors' code, computes a third quantity, a product of
    consecutive samples' feature differences; it is not offered.)
    """

    inputs = "features"

    def __init__(self, gamma: float = 0.4, p_order: int = 2, form: Literal["paper", "torchdistill"] = "paper",
                 kernel: Literal["gaussian", "bilinear"] = "gaussian"):
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if p_order < 0:
            raise ValueError(f"p_order must be >= 0, got {p_order}")
        if form not in ("paper", "torchdistill"):
            raise ValueError(f"form must be 'paper' or 'torchdistill', got {form!r}")
        if kernel not in ("gaussian", "bilinear"):
            raise ValueError(f"kernel must be 'gaussian' or 'bilinear', got {kernel!r}")
        self.gamma, self.p_order, self.form, self.kernel = gamma, p_order, form, kernel

    def correlation(self, x: torch.Tensor) -> torch.Tensor:
        """Psi [B, B] of features [B, D] (l2-normalised first in the paper form)."""
        g = F.normalize(x, dim=1) if self.form == "paper" else x
        g = g @ g.t()
        if self.kernel == "bilinear":
            return g
        out = torch.ones_like(g)
        for p in range(1, self.p_order + 1):
            out = out + (2 * self.gamma) ** p / math.factorial(p) * g.pow(p)
        return out * math.exp(-2 * self.gamma)

    @compute_in_float32
    def forward(self, student, teacher, *, target=None, index=None):
        s, t = _flatten_pair("cc", student, teacher)
        b = s.shape[0]
        diff = self.correlation(t) - self.correlation(s)
        if self.form == "paper":
            return diff.pow(2).sum() / (b * b)
        # ||diff||_F, scaled by its largest entry so that the squares cannot overflow
        scale = diff.detach().abs().amax()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return torch.linalg.vector_norm(diff / scale) * scale / (b * b)
