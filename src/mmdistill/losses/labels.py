"""The supervised term of every objective: cross-entropy with the labels (mixup-aware)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def label_loss(logits: torch.Tensor, batch, label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy with the labels; for a mixup batch, lam * CE(y_i) + (1 - lam) * CE(y_j).
    ``reduction="none"`` gives one value per sample."""
    ce = F.cross_entropy(logits, batch["label"], label_smoothing=label_smoothing, reduction=reduction)
    if "mix_lambda" in batch:
        lam = batch["mix_lambda"]
        ce = lam * ce + (1 - lam) * F.cross_entropy(logits, batch["label_mix"], label_smoothing=label_smoothing,
                                                    reduction=reduction)
    return ce
