"""Reading audio files: the one WAV/FLAC reader of every data source.

libsndfile reads a WAV file cut short mid-data without complaint, returning only the samples that
are there; :func:`wav_truncation` compares the size its ``data`` chunk declares with the bytes
the file holds, so such a file is refused by name instead of silently padded with silence.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import DataError


def read_wave(path: str | Path, sample_rate: int, *, where: str | None = None, resample: bool = True) -> np.ndarray:
    """A mono float32 waveform at ``sample_rate``; more channels are downmixed to their mean.

    A file at another rate is resampled (librosa), or with ``resample=False`` refused (a data
    set defined at one rate, as FSDD's 8 kHz). A corrupt file, a file cut short mid-data, an empty
    one or a NaN/infinite sample is a :class:`DataError` starting with ``where`` (default: the path).
    """
    import soundfile

    where = where or str(path)
    truncated = wav_truncation(path)
    if truncated:
        raise DataError(f"{where}: WAV file cut short (its data chunk declares {truncated[0]} bytes, "
                        f"{truncated[1]} are present)")
    try:
        wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises its own error types for corrupt files
        raise DataError(f"{where}: cannot decode audio ({err})") from None
    if rate != sample_rate and not resample:
        raise DataError(f"{where}: sample rate {rate} Hz, expected {sample_rate} Hz")
    if wave.shape[0] == 0:
        raise DataError(f"{where}: empty recording")
    if not np.isfinite(wave).all():
        raise DataError(f"{where}: NaN or infinite sample at frame {int(np.flatnonzero(~np.isfinite(wave).all(1))[0])}")
    wave = wave.mean(axis=1)
    if rate != sample_rate:
        import librosa

        wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate)
    return wave.astype(np.float32, copy=False)

#: data-chunk sizes that streaming writers leave as placeholders (length unknown when written)
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


def wav_truncation(path: str | Path) -> tuple[int, int] | None:
    """``(declared, present)`` bytes of the ``data`` chunk of a RIFF/WAVE file cut short, else None.

    Files that are not RIFF/WAVE (FLAC, RF64, ...) or whose header leaves the size unknown are not
    judged (None).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                present = size - offset - 8
                if chunk_size not in _UNKNOWN_SIZES and chunk_size > present:
                    return chunk_size, present
                return None
            offset += 8 + chunk_size + (chunk_size & 1)
    return None
