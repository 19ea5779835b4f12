"""The Free Spoken Digit Dataset: WAV recordings -> fixed-size log-mel spectrograms.

Recordings are ``<root>/fsdd/recordings/{digit}_{speaker}_{index}.wav`` (mono, 8 kHz). Spectrograms
are computed once and cached under :func:`~mmdistill.data.root.cache_dir`, keyed by every
preprocessing parameter and by the name, size and modification time of every file, so a changed
recording or parameter never reads a stale cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from . import audio
from .root import cache_dir, data_root, download
from .transforms import LogMel, LogMelParams, fix_length, mix_noise

NAME = re.compile(r"^(?P<digit>[^_]+)_(?P<speaker>[A-Za-z0-9-]+)_(?P<index>\d+)\.wav$")
ARCHIVE_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
#: sha256 over the sorted (file name, sha256 of file) pairs of the 3,000 recordings.
CONTENT_SHA256 = "0fbe6612aaa20a80ef4371894a46e060038337a518fe3d4728cb7eee7caa013c"
HINT = "Put the recordings in <root>/fsdd/recordings/ and point MMDISTILL_DATA (or --data-root) at <root>."
CACHE_VERSION = 1
HELD_OUT_SPEAKER = "yweweler"


@dataclass(frozen=True)
class Recording:
    path: Path
    digit: int
    speaker: str
    index: int


def list_recordings(root=None) -> list[Recording]:
    """Every recording under the data root, sorted by file name; downloads FSDD when absent."""
    folder = data_root(root) / "fsdd" / "recordings"
    if not folder.is_dir():
        fetch(data_root(root))
    recordings = []
    for path in sorted(folder.glob("*.wav")):
        match = NAME.match(path.name)
        if not match:
            raise DataError(f"{path}: name is not {{digit}}_{{speaker}}_{{index}}.wav")
        if not match["digit"].isdigit() or not 0 <= int(match["digit"]) <= 9:
            raise DataError(f"{path}: unknown label {match['digit']!r} (expected a digit 0-9)")
        recordings.append(Recording(path, int(match["digit"]), match["speaker"], int(match["index"])))
    if not recordings:
        raise DataError(f"{folder}: no .wav recordings. {HINT}")
    return recordings


def test_mask(recordings: list[Recording], split: str) -> np.ndarray:
    """Bool[N], True for test recordings: ``official`` holds out takes 0-4 of every speaker,
    ``unseen-speaker`` holds out every take of speaker ``yweweler``."""
    if split == "official":
        return np.array([r.index <= 4 for r in recordings])
    if split == "unseen-speaker":
        return np.array([r.speaker == HELD_OUT_SPEAKER for r in recordings])
    raise ValueError(f"unknown FSDD split {split!r}")


def content_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.wav")):
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def fetch(root: Path) -> None:
    """Download the FSDD release archive, verify its recordings, and unpack them under ``root``."""
    with tempfile.TemporaryDirectory(dir=root if root.exists() else None) as tmp:
        archive = download([ARCHIVE_URL], Path(tmp) / "fsdd.tar.gz", dataset="FSDD", hint=HINT)
        staging = Path(tmp) / "recordings"
        staging.mkdir()
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile() and "/recordings/" in member.name and member.name.endswith(".wav"):
                    with tar.extractfile(member) as src:
                        (staging / Path(member.name).name).write_bytes(src.read())
        if content_digest(staging) != CONTENT_SHA256:
            raise DataError(f"FSDD: the recordings in {ARCHIVE_URL} do not match the expected checksum")
        target = root / "fsdd"
        target.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target / "recordings")


def read_wave(path: Path, sample_rate: int) -> np.ndarray:
    """One FSDD recording (:func:`mmdistill.data.audio.read_wave`): FSDD is 8 kHz by definition,
    so a file at another rate is refused, not resampled."""
    return audio.read_wave(path, sample_rate, resample=False)


def waveforms(recordings: list[Recording], sample_rate: int, length: int, *, normalize: bool = True,
              snr_db: float | None = None, noise_seed: int = 0) -> torch.Tensor:
    """[N, length] raw waveforms resampled from 8 kHz to ``sample_rate``, cut or zero-padded to
    ``length`` (onset kept), each standardised to zero mean and unit variance when ``normalize``
    (as wav2vec2's feature extractor does). With ``snr_db``, the noise of :func:`log_mel_features`
    (the same seed per recording) is mixed in at 8 kHz first, so both views hear the same take."""
    rate = LogMelParams().sample_rate
    out = np.zeros((len(recordings), length), dtype=np.float32)
    for i, rec in enumerate(recordings):
        wave = read_wave(rec.path, rate)
        if snr_db is not None:
            padded = fix_length(wave, LogMelParams().num_samples)
            wave = mix_noise(padded, snr_db, np.random.default_rng([noise_seed, i]), min(len(wave), len(padded)))
        if sample_rate != rate:
            import librosa

            wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate)
        wave = fix_length(wave, length)
        out[i] = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7) if normalize else wave
    return torch.from_numpy(out)


def _cache_key(recordings: list[Recording], params, snr_db, noise_seed, field: str = "params") -> str:
    """A key of every input file (name, size, mtime), the front end's ``params`` (stored under
    ``field``) and the noise; the seed only seeds noise, so without ``snr_db`` it is 0."""
    listing = [(r.path.name, r.path.stat().st_size, r.path.stat().st_mtime_ns) for r in recordings]
    blob = json.dumps({"v": CACHE_VERSION, field: params.to_dict(), "snr_db": snr_db,
                       "noise_seed": noise_seed if snr_db is not None else 0, "files": listing}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _cached(path: Path, recordings: list[Recording], compute) -> torch.Tensor:
    """The features cached at ``path`` for ``recordings``, else ``compute()``, written there
    atomically (an unreadable or mismatched cache is recomputed and replaced)."""
    names = [r.path.name for r in recordings]
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            if cached["names"] == names:
                return cached["features"]
        except Exception:
            pass
    features = compute()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    os.close(fd)
    torch.save({"names": names, "features": features}, tmp)
    os.replace(tmp, path)
    return features


def log_mel_features(recordings: list[Recording], params: LogMelParams = LogMelParams(), *,
                     snr_db: float | None = None, noise_seed: int = 0) -> torch.Tensor:
    """[N, 1, n_mels, frames] log-mel spectrograms of ``recordings``, cached on disk.

    With ``snr_db``, white noise is mixed into each waveform at that SNR first (recording ``i``
    draws its noise from a generator seeded with ``(noise_seed, i)``, so the result is
    deterministic).
    """
    path = cache_dir() / f"fsdd-logmel-{_cache_key(recordings, params, snr_db, noise_seed)}.pt"

    def compute() -> torch.Tensor:
        length = params.num_samples
        waves = np.zeros((len(recordings), length), dtype=np.float32)
        for i, rec in enumerate(recordings):
            wave = read_wave(rec.path, params.sample_rate)
            fixed = fix_length(wave, length)
            if snr_db is not None:
                fixed = mix_noise(fixed, snr_db, np.random.default_rng([noise_seed, i]), min(len(wave), length))
            waves[i] = fixed
        return LogMel(params)(torch.from_numpy(waves)).unsqueeze(1).contiguous()

    return _cached(path, recordings, compute)


def ge2e_fsdd(recordings: list[Recording], params=None, *, snr_db: float | None = None,
              noise_seed: int = 0) -> torch.Tensor:
    """[N, 40, frames] GE2E front-end features (:mod:`.ge2e`) of ``recordings``: each resampled
    from 8 kHz to 16 kHz (librosa's default resampler, as the resemblyzer package does), cached on
    disk like :func:`log_mel_features`. With ``snr_db``, the noise of :func:`log_mel_features` (the
    same seed per recording) is mixed in at 8 kHz first, so both views hear the same take."""
    import librosa

    from .ge2e import GE2EParams, ge2e_features

    params = params or GE2EParams()
    base = LogMelParams()
    path = cache_dir() / f"fsdd-ge2e-{_cache_key(recordings, params, snr_db, noise_seed, field='ge2e')}.pt"

    def compute() -> torch.Tensor:
        waves = []
        for i, rec in enumerate(recordings):
            wave = read_wave(rec.path, base.sample_rate)
            if snr_db is not None:
                padded = fix_length(wave, base.num_samples)
                wave = mix_noise(padded, snr_db, np.random.default_rng([noise_seed, i]), min(len(wave), len(padded)))
            waves.append(librosa.resample(wave, orig_sr=base.sample_rate, target_sr=params.sample_rate))
        return ge2e_features(waves, params)

    return _cached(path, recordings, compute)
