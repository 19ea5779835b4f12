"""Graded corruptions of one modality, for robustness evaluation (``evaluate --corrupt``).

Each kind has five severities (1 mild .. 5 severe) and acts on the tensor a model receives, per
sample, only where the modality is present; randomness comes from a seeded generator, so an
evaluation is repeatable. The inputs of the built-in datasets are standardised (zero mean, unit
variance over the training split), which gives the severities below a common scale.

====================  ====================================================  ==========================
kind                  what it does                                          severity 1 .. 5
====================  ====================================================  ==========================
``gaussian_noise``    x + N(0, sigma^2)                                     sigma = 0.1, 0.25, 0.5, 0.75, 1.0
``occlusion``         a square patch (side = fraction of each of the last   0.1, 0.2, 0.3, 0.4, 0.5
                      two axes) at a random place, set to the sample mean
``noise_snr``         white noise at a signal-to-noise ratio, relative to   20, 10, 5, 0, -5 dB
                      the sample's mean power E[x^2]
``time_shift``        the sample moves along its last (time) axis by a      0.05, 0.1, 0.2, 0.3, 0.4
                      fraction of its length, either direction at random;
                      the gap repeats the frame at the edge (the stream's
                      background goes on): misalignment
====================  ====================================================  ==========================

On a log-mel modality ``noise_snr`` is noise in the feature domain, not acoustic noise added to
the waveform before the spectrogram: it measures robustness to unreliable features.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .batch import presence

SEVERITIES = {
    "gaussian_noise": (0.1, 0.25, 0.5, 0.75, 1.0),
    "occlusion": (0.1, 0.2, 0.3, 0.4, 0.5),
    "noise_snr": (20.0, 10.0, 5.0, 0.0, -5.0),
    "time_shift": (0.05, 0.1, 0.2, 0.3, 0.4),
}


def _per_sample(x: torch.Tensor, reduce) -> torch.Tensor:
    """A per-sample statistic of ``x`` [B, ...] shaped to broadcast against it."""
    return reduce(x.reshape(x.shape[0], -1), 1).view(-1, *([1] * (x.dim() - 1)))


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    return x + sigma * torch.randn(x.shape, generator=generator).to(x)


def noise_snr(x: torch.Tensor, snr_db: float, generator: torch.Generator) -> torch.Tensor:
    power = _per_sample(x.pow(2), lambda v, d: v.mean(d))
    std = (power / 10 ** (snr_db / 10)).sqrt()
    return x + std * torch.randn(x.shape, generator=generator).to(x)


def occlusion(x: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    if x.dim() < 3:
        raise ConfigError(f"occlusion needs samples with two spatial axes, got shape {tuple(x.shape[1:])}")
    h, w = x.shape[-2:]
    ph, pw = max(1, round(fraction * h)), max(1, round(fraction * w))
    top = torch.randint(0, h - ph + 1, (x.shape[0],), generator=generator)
    left = torch.randint(0, w - pw + 1, (x.shape[0],), generator=generator)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    mask = ((rows >= top.view(-1, 1, 1)) & (rows < (top + ph).view(-1, 1, 1))
            & (cols >= left.view(-1, 1, 1)) & (cols < (left + pw).view(-1, 1, 1)))
    mask = mask.view(x.shape[0], *([1] * (x.dim() - 3)), h, w).to(x.device)
    return torch.where(mask, _per_sample(x, lambda v, d: v.mean(d)), x)


def shift_time(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move each sample of ``x`` [B, ..., T] by ``shifts[b]`` steps along the last axis (positive:
    later); the vacated steps repeat the nearest original step (replicate padding).

    Repeating the edge keeps the stream's background (silence in clean audio, the noise floor in
    noisy audio); filling with a constant such as the sample's minimum would add an artefact that
    no real misalignment produces, and measure that artefact instead of the shift.
    """
    length = x.shape[-1]
    t = torch.arange(length, device=x.device)
    source = (t.view(1, length) - shifts.to(x.device).view(-1, 1)).clamp(0, length - 1)  # [B, T]
    return torch.gather(x, -1, source.view(-1, *([1] * (x.dim() - 2)), length).expand_as(x))


def random_shifts(size: int, length: int, fraction: float, generator: torch.Generator, exact: bool) -> torch.Tensor:
    """Shifts in steps: exactly ``fraction * length`` with a random sign, or uniform in [-max, max]."""
    most = max(1, round(fraction * length))
    if exact:
        sign = torch.randint(0, 2, (size,), generator=generator) * 2 - 1
        return sign * most
    return torch.randint(-most, most + 1, (size,), generator=generator)


def time_shift(x: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    return shift_time(x, random_shifts(x.shape[0], x.shape[-1], fraction, generator, exact=True))


KINDS = {"gaussian_noise": gaussian_noise, "occlusion": occlusion, "noise_snr": noise_snr, "time_shift": time_shift}


@dataclass(frozen=True)
class Corruption:
    """``modality:kind:severity``, e.g. ``audio:noise_snr:3`` (5 dB) or ``image:occlusion:2``."""

    modality: str
    kind: str
    severity: int

    @classmethod
    def parse(cls, spec: str) -> "Corruption":
        parts = spec.split(":")
        if len(parts) != 3:
            raise ConfigError(f"--corrupt {spec}: expected MODALITY:KIND:SEVERITY, e.g. audio:noise_snr:3")
        modality, kind, severity = parts
        if kind not in KINDS:
            raise ConfigError(f"--corrupt {spec}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        if not severity.isdigit() or not 1 <= int(severity) <= 5:
            raise ConfigError(f"--corrupt {spec}: severity must be an integer from 1 to 5")
        return cls(modality, kind, int(severity))

    @property
    def level(self) -> float:
        """The physical size of this severity (sigma, patch fraction, SNR in dB, shift fraction)."""
        return SEVERITIES[self.kind][self.severity - 1]

    def __str__(self) -> str:
        return f"{self.modality}:{self.kind}:{self.severity}"

    def apply(self, batch: dict, generator: torch.Generator) -> dict:
        if self.modality not in batch:
            raise ConfigError(f"--corrupt {self}: the data has no modality {self.modality!r}")
        x = batch[self.modality]
        corrupted = KINDS[self.kind](x.float(), self.level, generator).to(x.dtype)
        keep = presence(batch, self.modality).to(x.device).view(-1, *([1] * (x.dim() - 1)))
        return {**batch, self.modality: torch.where(keep, corrupted, x)}


def corrupter(corruptions, seed: int = 0):
    """A ``batch -> batch`` transform applying each corruption in turn, from one seeded generator."""
    corruptions = [c if isinstance(c, Corruption) else Corruption.parse(c) for c in corruptions]
    generator = torch.Generator().manual_seed(seed)

    def transform(batch: dict) -> dict:
        for c in corruptions:
            batch = c.apply(batch, generator)
        return batch

    return transform
