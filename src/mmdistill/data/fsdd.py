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
from typing import Literal

import numpy as np
import torch
from pydantic import PositiveFloat

from ..errors import DataError
from ..options import PositiveInt, Strict
from . import audio as audio_io
from .dataset import MultimodalDataset
from .ge2e import GE2EParams, describe_ge2e
from .registry import register_dataset
from .source import DatasetOptions
from .root import cache_dir, data_root, download
from .transforms import LogMel, LogMelParams, describe_log_mel, fix_length, mix_noise

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
    return audio_io.read_wave(path, sample_rate, resample=False)


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


class WaveformOptions(Strict):
    """A derived ``waveform`` modality: each recording's raw audio resampled to ``sample_rate``,
    cut or zero-padded to ``seconds``, standardised per recording unless ``normalize`` is false."""

    seconds: PositiveFloat = 1.0
    sample_rate: PositiveInt = 16000
    normalize: bool = True


class GE2EOptions(Strict):
    """A derived ``ge2e`` modality: the front end of the pretrained GE2E speaker encoder
    (:mod:`mmdistill.data.ge2e`: 16 kHz, 40 mel bands, 25 ms windows every 10 ms), each recording
    cut or zero-padded to ``seconds``."""

    seconds: PositiveFloat = 1.6


def describe_fsdd_audio(snr_db: float | None) -> dict:
    """The model.json entry of the built-in spoken-digit spectrogram (FSDD's, AV-Digits' ``audio``)."""
    params = LogMelParams().to_dict()
    text = "FSDD spoken digit: " + describe_log_mel(params)
    if snr_db is not None:
        text += f"; training data had white noise mixed in at {snr_db} dB SNR before the spectrogram"
    return {"description": text, "log_mel": params}


class FSDDOptions(DatasetOptions):
    split: Literal["official", "unseen-speaker"] = "official"
    snr_db: float | None = None
    # what the label is: the spoken ``digit`` (10 classes) or the ``speaker`` (6, sorted by name)
    label: Literal["digit", "speaker"] = "digit"
    # also a ``waveform`` modality of the same recordings (e.g. for a wav2vec2 teacher)
    waveform: WaveformOptions | None = None
    # also a ``ge2e`` modality of the same recordings (for the pretrained speaker encoder, model kind ``pretrained``)
    ge2e: GE2EOptions | None = None

    @classmethod
    def describe(cls, modality, spec, info, options):
        if modality == "audio":
            return describe_fsdd_audio(info.get("snr_db"))
        if modality == "ge2e" and info.get("ge2e"):
            return {"description": describe_ge2e(info["ge2e"], spec.shape), "ge2e": info["ge2e"]}
        return None


@register_dataset("fsdd")
def build_fsdd(root, options: FSDDOptions, seed: int):
    """Spoken digits alone, as modality ``audio`` ([1, 32, 32] standardised log-mel), and with
    ``waveform`` also as modality ``waveform`` ([samples]), with ``ge2e`` as modality ``ge2e``
    ([40, frames]), from the same recordings. Labels: the digit, or with ``label: speaker`` the speaker."""
    recordings = list_recordings(root)
    audio = log_mel_features(recordings, snr_db=options.snr_db)
    speakers = sorted({r.speaker for r in recordings})
    if options.label == "speaker":
        labels = torch.tensor([speakers.index(r.speaker) for r in recordings])
        if options.split == "unseen-speaker":
            raise DataError("data.split: unseen-speaker holds out a speaker, which label: speaker cannot predict; "
                            "use split: official")
    else:
        labels = torch.tensor([r.digit for r in recordings])
    is_test = torch.from_numpy(test_mask(recordings, options.split))
    mean, std = audio[~is_test].mean(), audio[~is_test].std()
    tensors, kinds = {"audio": (audio - mean) / std}, {"audio": "audio"}
    info = {"dataset": "fsdd", "split": options.split, "snr_db": options.snr_db,
            "standardise": {"audio": {"mean": float(mean), "std": float(std)}}}
    if options.waveform is not None:
        w = options.waveform
        tensors["waveform"] = waveforms(recordings, w.sample_rate, max(1, round(w.seconds * w.sample_rate)),
                                        normalize=w.normalize, snr_db=options.snr_db)
        kinds["waveform"] = "waveform"
        info["waveform"] = w.model_dump()
    if options.ge2e is not None:
        tensors["ge2e"] = ge2e_fsdd(recordings, GE2EParams(seconds=options.ge2e.seconds), snr_db=options.snr_db)
        kinds["ge2e"] = "sequence"
        info["ge2e"] = GE2EParams(seconds=options.ge2e.seconds).to_dict()
    if options.label == "speaker":
        info.update(label="speaker", classes=speakers)
    num_classes = len(speakers) if options.label == "speaker" else 10
    out = [MultimodalDataset({k: t[m] for k, t in tensors.items()}, labels[m], num_classes=num_classes, kinds=kinds,
                             groups=torch.from_numpy(np.flatnonzero(m.numpy())), name=f"fsdd/{part}")
           for part, m in (("train", ~is_test), ("test", is_test))]
    return out[0], out[1], info
