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
    ``reduction="none"`` gives one value per sample (0 for an unlabelled one)."""
    mixed = "mix_lambda" in batch
    if not bool((batch["label"] < 0).any()) and not (mixed and bool((batch["label_mix"] < 0).any())):
        ce = F.cross_entropy(logits, batch["label"], label_smoothing=label_smoothing, reduction=reduction)
        if mixed:
            lam = batch["mix_lambda"]
            ce = lam * ce + (1 - lam) * F.cross_entropy(logits, batch["label_mix"], label_smoothing=label_smoothing,
                                                        reduction=reduction)
        return ce
    ce, mask = _masked_ce(logits, batch["label"], label_smoothing)
    count = mask
    if mixed:
        lam = batch["mix_lambda"]
        ce_mix, mask_mix = _masked_ce(logits, batch["label_mix"], label_smoothing)
        ce = lam * ce + (1 - lam) * ce_mix
        count = lam * mask + (1 - lam) * mask_mix
    if reduction == "none":
        return ce
    if reduction == "sum":
        return ce.sum()
    total = count.sum()
    return ce.sum() / total if bool(total > 0) else ce.sum() * 0.0  # no labelled sample: 0, not NaN
