"""Batch-level augmentation applied by the engine during training."""
from __future__ import annotations

import torch

from .batch import modality_names, presence


def mixup(batch: dict, alpha: float, generator: torch.Generator) -> dict:
    """Mixup (Zhang et al. ICLR 2018) across every modality with one shared coefficient.

    x = lam * x_i + (1 - lam) * x_j for a random pairing j of the batch, lam ~ Beta(alpha, alpha).
    The result carries ``label`` (y_i), ``label_mix`` (y_j) and ``mix_lambda`` (lam), so the
    cross-entropy becomes lam * CE(y_i) + (1 - lam) * CE(y_j); a teacher simply sees the mixed
    input, which is the "consistent teaching" of Beyer et al. (CVPR 2022). A mixed sample has a
    modality when either source has it.
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    size = batch["label"].shape[0]
    perm = torch.randperm(size, generator=generator).to(batch["label"].device)
    out = dict(batch)
    present = {}
    for name in modality_names(batch):
        x = batch[name]
        out[name] = lam * x + (1 - lam) * x[perm]
        mask = presence(batch, name)
        present[name] = mask | mask[perm]
    out["present"] = present
    out["label_mix"] = batch["label"][perm]
    out["mix_lambda"] = torch.tensor(lam, device=batch["label"].device)
    return out
