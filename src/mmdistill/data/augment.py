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


# --- per-modality input augmentation (``train.augment``) ----------------------------------------
def translate(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move each image of ``x`` [B, ..., H, W] by ``shifts[b] = (dx, dy)`` whole pixels (dx > 0:
    right, dy > 0: down), filling the uncovered border with zeros: out[..., r, c] = x[..., r - dy, c - dx].

    A random shift in [-k, k]^2 is the same as zero-padding by k and cropping a random H x W window,
    so this is also the "random crop" of image pipelines.
    """
    size, (height, width) = x.shape[0], x.shape[-2:]
    k = int(shifts.abs().max()) if shifts.numel() else 0
    flat = x.reshape(size, -1, height, width)
    padded = torch.nn.functional.pad(flat, (k, k, k, k))
    shifts = shifts.to(x.device)
    rows = (torch.arange(height, device=x.device).view(1, -1) + k - shifts[:, 1:2]).view(size, height, 1)
    cols = (torch.arange(width, device=x.device).view(1, -1) + k - shifts[:, 0:1]).view(size, 1, width)
    batch = torch.arange(size, device=x.device).view(size, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).reshape(x.shape)


def random_translate(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """:func:`translate` by (dx, dy), each uniform in {-pixels, ..., pixels}, drawn per sample: the
    "jittered by up to two pixels in any direction" of Hinton et al. (2015) with ``pixels = 2``."""
    return translate(x, torch.randint(-pixels, pixels + 1, (x.shape[0], 2), generator=generator))


def band_mask(size: int, length: int, width: int, count: int, min_width: int,
              generator: torch.Generator) -> torch.Tensor:
    """[size, length] bool, True inside ``count`` random bands per sample: each band's width is uniform in
    {min_width, ..., width} (clipped to ``length``) and its start uniform over the positions where it fits."""
    mask = torch.zeros(size, length, dtype=torch.bool)
    steps = torch.arange(length).view(1, -1)
    for _ in range(count):
        w = torch.randint(min(min_width, length), min(width, length) + 1, (size, 1), generator=generator)
        start = (torch.rand(size, 1, generator=generator) * (length - w + 1)).floor().long()
        mask |= (steps >= start) & (steps < start + w)
    return mask


def mask_axis(x: torch.Tensor, mask: torch.Tensor, axis: int) -> torch.Tensor:
    """Zero ``x`` [B, ...] where ``mask`` [B, x.shape[axis]] is True, along ``axis`` (negative)."""
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[axis] = x.shape[axis]
    return x.masked_fill(mask.to(x.device).view(shape), 0.0)


def time_mask(x: torch.Tensor, width: int, count: int, generator: torch.Generator, min_width: int = 0) -> torch.Tensor:
    """SpecAugment time masking (Park et al., Interspeech 2019, arXiv:1904.08779): ``count`` bands of
    consecutive time steps (last axis) per sample, each t ~ U{min_width..width} wide, set to zero
    (the mean of a standardised spectrogram, as in the paper)."""
    return mask_axis(x, band_mask(x.shape[0], x.shape[-1], width, count, min_width, generator), -1)


def freq_mask(x: torch.Tensor, width: int, count: int, generator: torch.Generator, min_width: int = 0) -> torch.Tensor:
    """SpecAugment frequency masking: as :func:`time_mask` on the frequency (second-last) axis."""
    return mask_axis(x, band_mask(x.shape[0], x.shape[-2], width, count, min_width, generator), -2)


def augment_batch(batch: dict, plan: dict, generator: torch.Generator) -> dict:
    """Apply ``plan`` (``{modality: [entry, ...]}``, entries of ``train.augment``) to a batch, in
    order, each sample drawn independently from ``generator``. Every transform maps a zero sample
    (an absent modality) to zero, so presence is unchanged."""
    from .corruptions import random_shifts, shift_time

    out = dict(batch)
    for name, entries in plan.items():
        if name not in batch:
            continue
        x = batch[name]
        for entry in entries:
            if entry.type == "translate":
                x = random_translate(x, entry.pixels, generator)
            elif entry.type in ("time_mask", "freq_mask"):
                fn = time_mask if entry.type == "time_mask" else freq_mask
                x = fn(x, entry.width, entry.count, generator, min_width=entry.min_width)
            elif entry.type == "time_shift":
                x = shift_time(x, random_shifts(x.shape[0], x.shape[-1], entry.fraction, generator, exact=False))
            else:  # the config schema admits no other type
                raise ValueError(f"unknown augmentation {entry.type!r}")
        out[name] = x
    return out
