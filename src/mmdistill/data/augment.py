"""Batch-level augmentation applied by the engine during training, and the options of its
``train.augment`` entries (:data:`AugmentConfig`, :data:`AUGMENT_KINDS`)."""
from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

import pydantic
import torch
from pydantic import Field

from ..options import PositiveInt, Strict
from .batch import modality_names, presence
from .kinds import KINDS, augment_kinds


class PerSample:
    """A batch's random draws where sample b draws only from its own generator, seeded by
    ``seeds[b]``: what a batch of independently regenerable samples needs (the seeded views of
    :mod:`mmdistill.distill.views`). Every per-sample augmentation below takes either one
    ``torch.Generator`` for the whole batch or a PerSample; a draw of shape (B, *tail) gives
    sample b the next ``prod(tail)`` numbers of its own stream."""

    def __init__(self, seeds: list[int]):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)


def _randint(low: int, high: int, size: tuple, rng) -> torch.Tensor:
    if isinstance(rng, PerSample):
        return torch.stack([torch.randint(low, high, size[1:], generator=g) for g in rng.generators])
    return torch.randint(low, high, size, generator=rng)


def _rand(size: tuple, rng) -> torch.Tensor:
    if isinstance(rng, PerSample):
        return torch.stack([torch.rand(size[1:], generator=g) for g in rng.generators])
    return torch.rand(size, generator=rng)


def _random_shifts(size: int, length: int, fraction: float, rng) -> torch.Tensor:
    """Uniform in [-most, most], most = max(1, round(fraction * length)) (as corruptions.random_shifts)."""
    most = max(1, round(fraction * length))
    return _randint(-most, most + 1, (size,), rng)


def mixup(batch: dict, alpha: float, generator: torch.Generator) -> dict:
    """Mixup (Zhang et al. ICLR 2018) across every modality with one shared coefficient.

    x = lam * x_i + (1 - lam) * x_j for a random pairing j of the batch, lam ~ Beta(alpha, alpha).
    The result carries ``label`` (y_i), ``label_mix`` (y_j) and ``mix_lambda`` (lam), so the
    cross-entropy becomes lam * CE(y_i) + (1 - lam) * CE(y_j). A mixed sample has a modality when
    either source has it. :func:`draw_mixup` and :func:`apply_mixup` split the draw from its
    application, so the engine mixes the teachers' input with the same pairing and coefficient.
    """
    return apply_mixup(batch, *draw_mixup(batch, alpha, generator))


def draw_mixup(batch: dict, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """(pairing j, lam) of :func:`mixup`: lam ~ Beta(alpha, alpha) (the global RNG), j a random
    permutation of the batch from ``generator``."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    perm = torch.randperm(batch["label"].shape[0], generator=generator).to(batch["label"].device)
    return perm, lam


def apply_mixup(batch: dict, perm: torch.Tensor, lam: float) -> dict:
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


#: kinds CutMix can cut, and how: a box in the last two axes of an image, a band of the last
#: (time) axis of the others (a spectrogram keeps all its frequencies)
CUTMIX_KINDS = {k: row.cutmix for k, row in KINDS.items() if row.cutmix}


def cut_regions(size: int, shape: tuple, how: str, cut: float, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """CutMix's pasted regions for ``size`` samples of per-sample ``shape``: ([size, *shape] bool,
    True where the partner's values go; the fraction of each sample they cover).

    ``box`` (images, last two axes H x W): a rectangle round(H * sqrt(cut)) x round(W * sqrt(cut)),
    its top-left corner uniform over the positions where it fits (Yun et al. place the centre
    uniformly and clip the box; fitting it keeps the same area in every sample, and so one label
    coefficient per batch). ``time``: round(T * cut) consecutive steps of the last axis, start
    uniform where the band fits. Every other axis (channels, frequencies) is cut whole.
    """
    mask = torch.zeros(size, *shape, dtype=torch.bool)
    if how == "box":
        height, width = shape[-2:]
        h, w = round(height * cut ** 0.5), round(width * cut ** 0.5)
        top = torch.randint(0, height - h + 1, (size,), generator=generator)
        left = torch.randint(0, width - w + 1, (size,), generator=generator)
        rows = (torch.arange(height).view(1, -1) >= top.view(-1, 1)) & (torch.arange(height).view(1, -1) < (top + h).view(-1, 1))
        cols = (torch.arange(width).view(1, -1) >= left.view(-1, 1)) & (torch.arange(width).view(1, -1) < (left + w).view(-1, 1))
        view = (size,) + (1,) * (len(shape) - 2)
        mask |= rows.view(*view, height, 1) & cols.view(*view, 1, width)
        return mask, h * w / (height * width)
    length = shape[-1]
    t = round(length * cut)
    start = torch.randint(0, length - t + 1, (size,), generator=generator)
    steps = torch.arange(length).view(1, -1)
    band = (steps >= start.view(-1, 1)) & (steps < (start + t).view(-1, 1))
    mask |= band.view(size, *((1,) * (len(shape) - 1)), length)
    return mask, t / length


def draw_cutmix(batch: dict, alpha: float, kinds: dict[str, str], generator: torch.Generator) -> dict:
    """One CutMix draw (Yun et al., ICCV 2019) for every modality of ``batch`` at once: a pairing j
    (``generator``), lam ~ Beta(alpha, alpha) (the global RNG, as mixup's), and per modality the
    regions of :func:`cut_regions` covering 1 - lam of each sample, where sample i takes sample
    j's values. The same partner and coefficient serve every modality, so a mixed sample is one
    pair of samples in all of them. The label coefficient is 1 - (mean over the cut modalities of
    the fraction actually cut), the box's rounding included. ``kinds``: modality -> its kind."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    size = batch["label"].shape[0]
    perm = torch.randperm(size, generator=generator).to(batch["label"].device)
    masks, fractions = {}, []
    for name in modality_names(batch):
        masks[name], fraction = cut_regions(size, tuple(batch[name].shape[1:]), CUTMIX_KINDS[kinds[name]],
                                            1 - lam, generator)
        fractions.append(fraction)
    label_lam = 1 - sum(fractions) / len(fractions) if fractions else 1.0
    return {"perm": perm, "masks": masks, "lam": label_lam}


def apply_cutmix(batch: dict, draw: dict) -> dict:
    """``batch`` with each sample's regions replaced by its partner's (see :func:`draw_cutmix`);
    carries ``label_mix`` and ``mix_lambda`` as :func:`mixup` does."""
    perm = draw["perm"]
    out = dict(batch)
    present = {}
    for name in modality_names(batch):
        x = batch[name]
        mask = draw["masks"][name].to(x.device)
        out[name] = torch.where(mask, x[perm], x)
        has = presence(batch, name)
        cut_any = bool(mask.any())
        present[name] = has | has[perm] if cut_any else has
    out["present"] = present
    out["label_mix"] = batch["label"][perm]
    out["mix_lambda"] = torch.tensor(draw["lam"], device=batch["label"].device)
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
    drop = {m: _rand((size,), generator) < rates[m] for m in names}
    keep_any = torch.zeros(size, dtype=torch.bool)
    for m in present:
        keep_any |= present[m] & ~drop.get(m, torch.zeros(size, dtype=torch.bool))
    rescue = ~keep_any  # samples that would lose everything: keep one present modality back
    if rescue.any():
        candidates = torch.stack([present[m] for m in names], dim=1).float()
        if isinstance(generator, PerSample):  # each rescued sample draws from its own stream
            rows = rescue.nonzero().squeeze(1).tolist()
            choice = torch.cat([torch.multinomial(candidates[r] + 1e-9, 1, generator=generator.generators[r])
                                for r in rows])
        else:
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
    from .corruptions import shift_time

    out = dict(batch)
    for name, fraction in fractions.items():
        x = batch[name]
        out[name] = shift_time(x, _random_shifts(x.shape[0], x.shape[-1], fraction, generator))
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
    return translate(x, _randint(-pixels, pixels + 1, (x.shape[0], 2), generator))


def band_mask(size: int, length: int, width: int, count: int, min_width: int,
              generator: torch.Generator) -> torch.Tensor:
    """[size, length] bool, True inside ``count`` random bands per sample: each band's width is uniform in
    {min_width, ..., width} (clipped to ``length``) and its start uniform over the positions where it fits."""
    mask = torch.zeros(size, length, dtype=torch.bool)
    steps = torch.arange(length).view(1, -1)
    for _ in range(count):
        w = _randint(min(min_width, length), min(width, length) + 1, (size, 1), generator)
        start = (_rand((size, 1), generator) * (length - w + 1)).floor().long()
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


# --- ``train.augment``: each entry's options, and the modality kinds it applies to ----------------
class TranslateAugment(Strict):
    """Images: move by (dx, dy), each uniform in [-pixels, pixels], zero fill (= pad + random crop)."""

    type: Literal["translate"]
    pixels: PositiveInt = 2


class BandMaskAugment(Strict):
    """Spectrograms (SpecAugment): ``count`` bands of time steps / frequency bins set to zero, each
    uniform in [min_width, width] wide."""

    type: Literal["time_mask", "freq_mask"]
    width: PositiveInt
    count: PositiveInt = 1
    min_width: Annotated[int, Field(ge=0)] = 0

    @pydantic.model_validator(mode="after")
    def _widths(self):
        if self.min_width > self.width:
            raise ValueError(f"min_width: {self.min_width} is more than width {self.width}")
        return self


class TimeShiftAugment(Strict):
    """Spectrograms: shift along time by up to ``fraction`` of the length either way, edge repeated."""

    type: Literal["time_shift"]
    fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1


AugmentConfig = Annotated[Union[TranslateAugment, BandMaskAugment, TimeShiftAugment], Field(discriminator="type")]
#: which modality kinds each augmentation applies to (their ``augments`` in :data:`mmdistill.data.kinds.KINDS`)
AUGMENT_KINDS = {t: augment_kinds(t) for cls in (TranslateAugment, BandMaskAugment, TimeShiftAugment)
                 for t in get_args(cls.model_fields["type"].annotation)}


def augment_batch(batch: dict, plan: dict, generator: torch.Generator) -> dict:
    """Apply ``plan`` (``{modality: [entry, ...]}``, entries of ``train.augment``) to a batch, in
    order, each sample drawn independently from ``generator``. Every transform maps a zero sample
    (an absent modality) to zero, so presence is unchanged."""
    from .corruptions import shift_time

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
                x = shift_time(x, _random_shifts(x.shape[0], x.shape[-1], entry.fraction, generator))
            else:  # the config schema admits no other type
                raise ValueError(f"unknown augmentation {entry.type!r}")
        out[name] = x
    return out


def training_inputs(batch: dict, cfg, kinds: dict[str, str], augment_generator: torch.Generator,
                    mix_generator: torch.Generator) -> tuple[dict, dict]:
    """(what the student sees, what the teachers see) for one training batch under ``cfg`` (a
    :class:`~mmdistill.distill.engine.TrainConfig`), in this order: ``augment`` (drawn from
    ``augment_generator``), ``modality_dropout``, ``time_shift``, then ``mixup`` or ``cutmix``
    (drawn from ``mix_generator``). ``kinds``: modality -> kind (for CutMix's regions).

    The teachers' input, by ``cfg.augment_teacher``:

    - ``consistent``: exactly the student's input, after every step above ("consistent teaching",
      Beyer et al., CVPR 2022: teacher and student see the same view, so the teacher's output
      is the target for that very input).
    - ``same`` (the default): the student's augmented input, before modality dropout and time
      shifts (each sample whole and aligned), mixed with the student's pairing and coefficient.
    - ``clean``: the stored sample, mixed with the student's pairing and coefficient.

    Without mixing, ``same`` and ``clean`` leave the teachers' input a function of the sample
    (and the augmentation draw), which is what lets the plain teacher cache serve ``clean``.
    """
    student = teacher = batch
    if cfg.augment:
        student = augment_batch(batch, cfg.augment, augment_generator)
        if cfg.augment_teacher != "clean":
            teacher = student
    if cfg.modality_dropout:
        student = modality_dropout(student, cfg.modality_dropout, mix_generator)
    if cfg.time_shift:
        student = time_shift(student, cfg.time_shift, mix_generator)
    consistent = cfg.augment_teacher == "consistent"
    if consistent:
        teacher = student
    if cfg.mixup > 0:
        perm, lam = draw_mixup(student, cfg.mixup, mix_generator)
        mixed = apply_mixup(student, perm, lam)
        teacher = mixed if consistent or teacher is student else apply_mixup(teacher, perm, lam)
        student = mixed
    elif getattr(cfg, "cutmix", 0) > 0:
        draw = draw_cutmix(student, cfg.cutmix, kinds, mix_generator)
        mixed = apply_cutmix(student, draw)
        teacher = mixed if consistent or teacher is student else apply_cutmix(teacher, draw)
        student = mixed
    return student, teacher
