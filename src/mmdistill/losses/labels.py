"""The supervised term of every objective: cross-entropy with the labels (mixup-aware).

Unlabelled samples (label -1, see :mod:`mmdistill.data.batch`) carry no cross-entropy: the mean
runs over the labelled samples of the batch only, and a batch without any gives 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_ce(logits, labels, label_smoothing):
    """(per-sample CE with unlabelled samples at 0, float mask of the labelled ones)."""
    mask = labels >= 0
    ce = F.cross_entropy(logits, labels.clamp_min(0), label_smoothing=label_smoothing, reduction="none")
    return ce * mask, mask.to(ce.dtype)


def label_loss(logits: torch.Tensor, batch, label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy with the labels; for a mixup batch, lam * CE(y_i) + (1 - lam) * CE(y_j).

    ``mean``: sum_i m_i CE_i / sum_i m_i over the labelled samples (m_i = 1 when sample i has a
    label), 0 when none has; under mixup each side is weighted by its own mask.
    ``reduction="none"`` gives one value per sample (0 for an unlabelled one).

    No host read: both the plain cross-entropy (exact for a batch whose samples all carry labels)
    and the masked one are computed on the device and ``torch.where`` picks, so a training step
    never waits for the GPU here; where every sample is labelled the result and its gradient are
    bit for bit those of ``F.cross_entropy`` (the other branch adds exact zeros)."""
    mixed = "mix_lambda" in batch
    labels = batch["label"]
    all_labelled = (labels >= 0).all()
    if mixed:
        all_labelled = all_labelled & (batch["label_mix"] >= 0).all()
    plain = F.cross_entropy(logits, labels.clamp_min(0), label_smoothing=label_smoothing, reduction=reduction)
    if mixed:
        lam = batch["mix_lambda"]
        plain = lam * plain + (1 - lam) * F.cross_entropy(logits, batch["label_mix"].clamp_min(0),
                                                          label_smoothing=label_smoothing, reduction=reduction)
    ce, mask = _masked_ce(logits, labels, label_smoothing)
    count = mask
    if mixed:
        lam = batch["mix_lambda"]
        ce_mix, mask_mix = _masked_ce(logits, batch["label_mix"], label_smoothing)
        ce = lam * ce + (1 - lam) * ce_mix
        count = lam * mask + (1 - lam) * mask_mix
    if reduction == "none":
        masked = ce
    elif reduction == "sum":
        masked = ce.sum()
    else:
        total = count.sum()
        # no labelled sample: 0, not NaN (the clamp keeps the unused quotient, and its gradient, finite)
        masked = torch.where(total > 0, ce.sum() / total.clamp_min(1e-12), ce.sum() * 0.0)
    return torch.where(all_labelled, plain, masked)
