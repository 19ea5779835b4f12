"""Checks on audio files that a decoder does not make.

libsndfile reads a WAV file cut short mid-data without complaint, returning only the samples that
are there; :func:`wav_truncation` compares the size its ``data`` chunk declares with the bytes
the file holds, so such a file is refused by name instead of silently padded with silence.
"""
from __future__ import annotations

import struct
from pathlib import Path

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
