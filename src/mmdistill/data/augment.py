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


def modality_dropout(batch: dict, rates: dict[str, float], generator: torch.Generator) -> dict:
    """Mark each modality absent in each sample with probability ``rates[modality]``.

    A dropped modality is zeroed and its presence set False; a sample never loses all of its
    present modalities (when every one is drawn to drop, one of them is kept at random), so the
    model always sees something. In distillation the engine gives the teachers the batch before
    dropout, so a full-modality teacher teaches a student that must cope with any subset.
    """
    names = [m for m in modality_names(batch) if m in rates]
    if not names:
        return batch
    size = batch["label"].shape[0]
    present = {m: presence(batch, m).cpu() for m in modality_names(batch)}
    drop = {m: torch.rand(size, generator=generator) < rates[m] for m in names}
    keep_any = torch.zeros(size, dtype=torch.bool)
    for m in present:
        keep_any |= present[m] & ~drop.get(m, torch.zeros(size, dtype=torch.bool))
    rescue = ~keep_any  # samples that would lose everything: keep one present modality back
    if rescue.any():
        candidates = torch.stack([present[m] for m in names], dim=1).float()
        choice = torch.multinomial(candidates[rescue] + 1e-9, 1, generator=generator).squeeze(1)
        for j, m in enumerate(names):
            drop[m][rescue.nonzero().squeeze(1)[choice == j]] = False
    out = dict(batch)
    out["present"] = {m: p.to(batch["label"].device) for m, p in present.items()}
    for m in names:
        keep = (present[m] & ~drop[m]).to(batch[m].device)
        out[m] = batch[m] * keep.view(-1, *([1] * (batch[m].dim() - 1))).to(batch[m].dtype)
        out["present"][m] = keep
    return out


def time_shift(batch: dict, fractions: dict[str, float], generator: torch.Generator) -> dict:
    """Shift each sample of each named sequence modality along its last (time) axis by a random
    number of steps, uniform in [-f * T, f * T] for ``fractions[modality] = f``, repeating the
    edge step in the gap (see :func:`mmdistill.data.corruptions.shift_time`). Trains a
    student to tolerate a modality that is out of sync with the others."""
    from .corruptions import random_shifts, shift_time

    out = dict(batch)
    for name, fraction in fractions.items():
        x = batch[name]
        out[name] = shift_time(x, random_shifts(x.shape[0], x.shape[-1], fraction, generator, exact=False))
    return out
