"""Losses on class scores (logits)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillationLoss, check_temperature, compute_in_float32, register_loss


@register_loss("mse")
class LogitMSE(DistillationLoss):
    """Logit matching, the classic objective E_x ||f_S(x) - f_T(x)||^2 (Ba & Caruana 2014).

    L = 1/B * sum_b sum_k (s_bk - t_bk)^2: the squared Euclidean distance between student and
    teacher logits, summed over classes and averaged over the batch (so it is the expectation in
    the objective, not a per-element mean).
    """

    @compute_in_float32
    def forward(self, student, teacher, *, target=None, index=None):
        return (student - teacher).pow(2).sum(dim=1).mean()

    def mix_teachers(self, logits, weights):
        """sum_k w_k ||s - t_k||^2 = ||s - sum_k w_k t_k||^2 + const: the weighted mean is exact."""
        return torch.einsum("kbc,bk->bc", logits, weights)


@register_loss("kd")
class KD(DistillationLoss):
    """Hinton knowledge distillation: T^2 * KL(softmax(t/T) || softmax(s/T)) (Hinton et al. 2015).

    L = T^2 / B * sum_b sum_k p_bk (log p_bk - log q_bk), with p = softmax(t / T) and
    q = softmax(s / T). The T^2 factor keeps the gradient scale independent of T
    ("Distilling the Knowledge in a Neural Network", arXiv:1503.02531).
    """

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        check_temperature(temperature)
        self.temperature = temperature

    @compute_in_float32
    def forward(self, student, teacher, *, target=None, index=None):
        t = self.temperature
        log_q = F.log_softmax(student / t, dim=1)
        log_p = F.log_softmax(teacher / t, dim=1)
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * t * t


def _check_logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"expects student and teacher logits of the same shape [B, K], got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )


@register_loss("dkd")
class DKD(DistillationLoss):
    """Decoupled KD: alpha * TCKD + beta * NCKD, target-class and non-target-class KD (Zhao et al. 2022).

    With p = softmax(t / T), q = softmax(s / T) and y the label of each sample:

    * TCKD = T^2 / B * sum_b KL(b^T || b^S), b = [p_y, 1 - p_y] the binary target / non-target
      probabilities;
    * NCKD = T^2 / B * sum_b KL(p~^T || p~^S), p~ = softmax over the non-target classes only
      (the logits of the classes k != y divided by T);
    * L = alpha * TCKD + beta * NCKD.

    As defined in "Decoupled Knowledge Distillation" (CVPR 2022, arXiv:2203.08679, Sec. 3) and
    computed by mdistiller's reference ``dkd_loss``: sum over the batch, divided by B, times T^2. Needs ``target``. (mdistiller's linear warm-up of the weight over the first
    epochs is the trainer's business, not part of the loss.)
    """

    needs_target = True

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0):
        super().__init__()
        check_temperature(temperature)
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.temperature = alpha, beta, temperature

    @compute_in_float32
    def forward(self, student, teacher, *, target=None, index=None):
        _check_logits(student, teacher)
        if target is None:
            raise ValueError("dkd needs the class labels: call it with target=...")
        b, k = student.shape
        if k < 2:
            raise ValueError(f"dkd needs at least 2 classes, got {k}")
        target = torch.as_tensor(target, device=student.device).long().view(-1, 1)
        t = self.temperature
        zs, zt = student / t, teacher / t
        gt = torch.zeros_like(zs, dtype=torch.bool).scatter_(1, target, True)

        def binary_log_probs(z):
            # log [p_y, 1 - p_y], computed from log-sum-exps so that p_y -> 1 stays finite
            lse_all = torch.logsumexp(z, dim=1)
            log_gt = z.gather(1, target).squeeze(1) - lse_all
            log_other = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1) - lse_all
            return torch.stack([log_gt, log_other], dim=1)

        tckd = F.kl_div(binary_log_probs(zs), binary_log_probs(zt), reduction="sum", log_target=True)
        # the non-target logits, [B, K-1], in column order: a stable sort moves each row's target
        # column last, and a gather (unlike boolean indexing) needs no host read of the mask
        other = torch.argsort(gt.to(torch.uint8), dim=1, stable=True)[:, : k - 1]
        zs_other = zs.gather(1, other)
        zt_other = zt.gather(1, other)
        nckd = F.kl_div(
            F.log_softmax(zs_other, dim=1), F.log_softmax(zt_other, dim=1), reduction="sum", log_target=True
        )
        return (self.alpha * tckd + self.beta * nckd) * (t * t) / b


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (``eps`` at least the
    dtype's smallest normal number, so that it never rounds to 0 in half precision)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + max(eps, torch.finfo(a.dtype).tiny))


@register_loss("dist")
class DIST(DistillationLoss):
    """DIST: match inter-class and intra-class Pearson correlations of the predictions (Huang et al. 2022).

    With Y^S = softmax(s / T), Y^T = softmax(t / T) (both [B, K]) and rho the Pearson correlation,

    * L_inter = 1 - 1/B * sum_b rho(Y^S_b,:, Y^T_b,:)   (each sample's class distribution),
    * L_intra = 1 - 1/K * sum_k rho(Y^S_:,k, Y^T_:,k)   (each class's scores across the batch),
    * L = T^2 * (beta * L_inter + gamma * L_intra).

    "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022, arXiv:2205.10536, Sec. 4),
    with the T^2 factor and the defaults beta = gamma = T = 1 of the authors'
    reference code. A 1e-8 in the denominator keeps constant predictions finite.
    """

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0):
        super().__init__()
        check_temperature(temperature)
        if beta < 0 or gamma < 0:
            raise ValueError(f"beta and gamma must be >= 0, got beta={beta}, gamma={gamma}")
        self.beta, self.gamma, self.temperature = beta, gamma, temperature

    @compute_in_float32
    def forward(self, student, teacher, *, target=None, index=None):
        _check_logits(student, teacher)
        t = self.temperature
        ys = F.softmax(student / t, dim=1)
        yt = F.softmax(teacher / t, dim=1)
        inter = 1 - _pearson_rows(ys, yt).mean()
        intra = 1 - _pearson_rows(ys.t(), yt.t()).mean()
        return (self.beta * inter + self.gamma * intra) * (t * t)
