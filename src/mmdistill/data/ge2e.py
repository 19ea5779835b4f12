"""The front end of the GE2E speaker encoder that the ``resemblyzer`` package ships (a derived modality).

The encoder (:mod:`mmdistill.models.pretrained`) reads 16 kHz audio as a 40-band mel power
spectrogram, 25 ms Hann windows every 10 ms (librosa's ``melspectrogram`` with ``n_fft = 400``,
``hop_length = 160``: the package's ``wav_to_mel_spectrogram``; a power spectrogram, not a log),
after the package's volume normalisation: a recording quieter than -30 dBFS is scaled up to
-30 dBFS, a louder one is left as it is (``normalize_volume(wav, -30, increase_only=True)``).

It differs from the package's ``preprocess_wav`` in one step only: the package also trims long
silences with a voice-activity detector (``webrtcvad``, a C extension this project does not
need); here the recording is kept whole. Without that step the embeddings equal the package's
``VoiceEncoder.embed_utterance`` to float precision (``tests/test_pretrained.py``); with it, on
30 FSDD clips (short and already trimmed), the package's embeddings and ours agree to a cosine of
0.986 at worst, 0.998 on average.

Every recording is cut or zero-padded to ``seconds`` (default 1.6 s: the encoder's partial
window, 160 frames, so a clip up to that length is one window, exactly as the package embeds it;
a longer ``seconds`` is split into windows by the model as the package splits an utterance of
that length, padding included, so there it differs from the package's windows of the unpadded
clip) and gives a
``[40, frames]`` tensor (bands first, time last, like the project's other ``sequence``
modalities), ``frames = 1 + seconds * 100``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
import torch

SAMPLE_RATE = 16000
N_MELS = 40
WINDOW_MS = 25
HOP_MS = 10
NORM_DBFS = -30.0
INT16_MAX = 2 ** 15 - 1


@dataclass(frozen=True)
class GE2EParams:
    """The front end's settings: the package's hyperparameters and the fixed clip length."""

    seconds: float = 1.6
    sample_rate: int = SAMPLE_RATE
    n_mels: int = N_MELS
    n_fft: int = SAMPLE_RATE * WINDOW_MS // 1000
    hop_length: int = SAMPLE_RATE * HOP_MS // 1000
    norm_dbfs: float = NORM_DBFS

    @property
    def num_samples(self) -> int:
        return max(1, round(self.seconds * self.sample_rate))

    @property
    def frames(self) -> int:
        return 1 + self.num_samples // self.hop_length

    def to_dict(self) -> dict:
        return asdict(self)


def describe_ge2e(p: Mapping, shape) -> str:
    """How the GE2E front end with parameters ``p`` (:meth:`GE2EParams.to_dict`) makes its input."""
    return (f"audio resampled to {p['sample_rate']} Hz mono (librosa.resample), scaled up to {p['norm_dbfs']} dBFS "
            f"RMS when quieter (never down), cut or zero-padded to {p['seconds']} s; mel power spectrogram "
            f"(librosa.feature.melspectrogram: n_fft {p['n_fft']}, hop {p['hop_length']}, {p['n_mels']} bands, "
            f"centred, no log) -> {list(shape)} (bands, frames): the resemblyzer GE2E front end")


def normalize_volume(wave: np.ndarray, target_dbfs: float = NORM_DBFS) -> np.ndarray:
    """Scale ``wave`` up so its RMS level is ``target_dbfs`` (dB relative to int16 full scale); a
    wave already at or above it is returned unchanged (the package's ``increase_only``)."""
    rms = float(np.sqrt(np.mean((wave.astype(np.float64) * INT16_MAX) ** 2)))
    if rms == 0.0:
        return wave
    change = target_dbfs - 20 * np.log10(rms / INT16_MAX)
    return wave if change < 0 else (wave * 10 ** (change / 20)).astype(np.float32)


def ge2e_mel(wave: np.ndarray, params: GE2EParams = GE2EParams()) -> np.ndarray:
    """[n_mels, frames] mel power spectrogram of one mono 16 kHz recording (see the module doc)."""
    import librosa

    from .transforms import fix_length

    wave = fix_length(normalize_volume(np.asarray(wave, dtype=np.float32), params.norm_dbfs), params.num_samples)
    mel = librosa.feature.melspectrogram(y=wave, sr=params.sample_rate, n_fft=params.n_fft,
                                         hop_length=params.hop_length, n_mels=params.n_mels)
    return mel.astype(np.float32)


def ge2e_features(waves, params: GE2EParams = GE2EParams()) -> torch.Tensor:
    """[N, n_mels, frames] for a list of 16 kHz waveforms; ``None`` entries (absent) stay zero."""
    out = np.zeros((len(waves), params.n_mels, params.frames), dtype=np.float32)
    for i, wave in enumerate(waves):
        if wave is not None:
            out[i] = ge2e_mel(wave, params)
    return torch.from_numpy(out)
