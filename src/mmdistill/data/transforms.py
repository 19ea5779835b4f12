"""Signal transforms: log-mel spectrograms, noise at a given SNR, PCA degradation of images."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
import torch


def describe_log_mel(p: Mapping) -> str:
    """How :class:`LogMel` with parameters ``p`` (:meth:`LogMelParams.to_dict`) turns a waveform into its input."""
    return (f"{p['sample_rate']} Hz mono waveform cut or zero-padded to {p['hop_length'] * (p['frames'] - 1)} "
            f"samples; log(mel(|STFT|^2) + 1e-6) with a Hann window, n_fft {p['n_fft']}, hop {p['hop_length']}, "
            f"centred (torch.stft), {p['n_mels']} librosa mel bands (htk=False, norm='slaney'), first "
            f"{p['frames']} frames -> [1, {p['n_mels']}, {p['frames']}]")


@dataclass(frozen=True)
class LogMelParams:
    """A fixed-size log-mel spectrogram: ``frames`` frames of ``n_mels`` mel bands.

    Waveforms are cut or zero-padded to ``hop_length * (frames - 1)`` samples (onset kept) so
    every recording gives the same ``[n_mels, frames]`` shape.
    """

    sample_rate: int = 8000
    n_fft: int = 256
    hop_length: int = 200
    n_mels: int = 32
    frames: int = 32

    @property
    def num_samples(self) -> int:
        return self.hop_length * (self.frames - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def fix_length(wave: np.ndarray, length: int) -> np.ndarray:
    """Cut ``wave`` to ``length`` samples, or pad it with zeros at the end."""
    if len(wave) >= length:
        return wave[:length]
    return np.pad(wave, (0, length - len(wave)))


def mix_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator, signal_length: int | None = None) -> np.ndarray:
    """Add white Gaussian noise so that signal power / noise power = 10^(snr_db / 10).

    The signal power is measured on the first ``signal_length`` samples (the speech before any
    padding); the noise covers the whole window, as background noise would.
    """
    speech = wave[: signal_length or len(wave)]
    power = float(np.mean(speech.astype(np.float64) ** 2)) if len(speech) else 0.0
    noise_std = np.sqrt(power / (10.0 ** (snr_db / 10.0)))
    return (wave + rng.normal(0.0, noise_std, size=wave.shape)).astype(np.float32)


class LogMel:
    """log(mel(|STFT|^2) + 1e-6) with ``torch.stft`` and librosa's mel filterbank."""

    def __init__(self, params: LogMelParams = LogMelParams()):
        import librosa.filters  # imported here: it is slow to import and only audio needs it

        self.params = params
        fb = librosa.filters.mel(sr=params.sample_rate, n_fft=params.n_fft, n_mels=params.n_mels)
        self.filterbank = torch.from_numpy(fb).float()  # [n_mels, n_fft // 2 + 1]
        self.window = torch.hann_window(params.n_fft)

    def __call__(self, waves: torch.Tensor) -> torch.Tensor:
        """[N, num_samples] waveforms -> [N, n_mels, frames] log-mel spectrograms."""
        p = self.params
        spec = torch.stft(waves, n_fft=p.n_fft, hop_length=p.hop_length, window=self.window,
                          center=True, return_complex=True).abs().pow(2)
        mel = torch.matmul(self.filterbank, spec)
        return torch.log(mel + 1e-6)[..., : p.frames]


def pca_degrade(train: np.ndarray, others: list[np.ndarray], energy: float) -> tuple[list[np.ndarray], int, float]:
    """Rebuild images from the leading principal components that keep about ``energy`` of the energy.

    PCA is fitted on ``train`` ([N, ...], centred); ``k`` is the number of components whose
    cumulative explained variance is closest to ``energy``. Returns the degraded ``[train, *others]``, ``k``
    and the exact energy kept. This is AV-MNIST's image degradation (Vielzeuf et al. 2018).
    """
    flat = train.reshape(len(train), -1).astype(np.float64)
    mean = flat.mean(axis=0)
    centred = flat - mean
    # eigen-decomposition of the D x D scatter matrix: the same components as an SVD of the data,
    # far cheaper when N >> D (MNIST: 784 x 784 instead of 8000 x 784)
    eigvals, eigvecs = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(eigvals)[::-1]
    eigvals, vt = np.clip(eigvals[order], 0, None), eigvecs[:, order].T
    explained = np.cumsum(eigvals) / np.sum(eigvals)
    k = int(np.argmin(np.abs(explained - energy)) + 1)
    basis = vt[:k]
    out = []
    for images in [train, *others]:
        x = images.reshape(len(images), -1).astype(np.float64) - mean
        out.append(((x @ basis.T) @ basis + mean).reshape(images.shape).astype(np.float32))
    return out, k, float(explained[k - 1])
