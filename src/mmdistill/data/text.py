"""The ``text`` modality: strings tokenised by a tokenizer from a local directory.

A text modality is stored as ``[2, max_length]`` per sample: row 0 the token ids, row 1 the
attention mask (1 for a token, 0 for padding), padded or truncated to ``max_length``. One tensor
keeps ids and mask together through batching, subsets and the presence mask; a sample without
text has zeros in both rows and ``present`` False. The tokenizer is loaded with
``transformers.AutoTokenizer.from_pretrained(dir, local_files_only=True)`` (never downloaded):
a directory written by ``save_pretrained`` or holding a ``tokenizer.json``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from ..options import PositiveInt
from ..errors import DataError

HF_EXTRA = 'pip install "mmdistill[hf]"'


class TextOptions(BaseModel):
    """``tokenizer``: a local directory (relative paths under the data root); ``max_length``: tokens
    per sample after padding/truncation."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    tokenizer: str
    max_length: PositiveInt = 64


def load_tokenizer(path: Path):
    """``AutoTokenizer`` from the local directory ``path``; errors name the directory."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(f"{path}: tokenising text needs transformers; {HF_EXTRA}") from None
    if not Path(path).is_dir():
        raise DataError(f"{path}: no such tokenizer directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # OSError, ValueError, ... from transformers
        first = (str(err).splitlines() or [""])[0]
        raise DataError(f"{path}: cannot load a tokenizer ({first})") from None
    if tokenizer.pad_token_id is None:
        raise DataError(f"{path}: the tokenizer has no padding token; set one (pad_token) to pad to max_length")
    return tokenizer


def tokenize(texts: list[str | None], tokenizer, max_length: int) -> torch.Tensor:
    """``[N, 2, max_length]`` float tensor (ids; mask); ``None`` entries stay zero."""
    out = np.zeros((len(texts), 2, max_length), dtype=np.float32)
    rows = [i for i, t in enumerate(texts) if t is not None]
    if rows:
        enc = tokenizer([texts[i] for i in rows], padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="np")
        ids, mask = np.asarray(enc["input_ids"]), np.asarray(enc["attention_mask"])
        if ids.max() >= 2 ** 24:  # ids are stored as float32: exact up to 2^24
            raise DataError(f"token id {int(ids.max())} is too large (at most 2^24 - 1)")
        out[rows, 0] = ids
        out[rows, 1] = mask
    return torch.from_numpy(out)
