"""Losses on class scores (logits)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillationLoss, register_loss


@register_loss("mse")
class LogitMSE(DistillationLoss):
    """Logit matching, the classic objective E_x ||f_S(x) - f_T(x)||^2 (Ba & Caruana 2014).

    L = 1/B * sum_b sum_k (s_bk - t_bk)^2: the squared Euclidean distance between student and
    teacher logits, summed over classes and averaged over the batch (so it is the expectation in
    the objective, not a per-element mean).
    """

    def forward(self, student, teacher, *, target=None, index=None):
        return (student - teacher).pow(2).sum(dim=1).mean()


@register_loss("kd")
class KD(DistillationLoss):
    """Hinton knowledge distillation: T^2 * KL(softmax(t/T) || softmax(s/T)) (Hinton et al. 2015).

    L = T^2 / B * sum_b sum_k p_bk (log p_bk - log q_bk), with p = softmax(t / T) and
    q = softmax(s / T). The T^2 factor keeps the gradient scale independent of T
    ("Distilling the Knowledge in a Neural Network", arXiv:1503.02531).
    """

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, student, teacher, *, target=None, index=None):
        t = self.temperature
        log_q = F.log_softmax(student / t, dim=1)
        log_p = F.log_softmax(teacher / t, dim=1)
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * t * t
