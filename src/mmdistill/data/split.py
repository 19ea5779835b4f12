"""The split grammar every file format shares: which samples train, validate and test.

A ``split`` array (npz), ``split.npy`` (npy_dir) or split column (manifest) gives each sample
``train``, ``val`` or ``test`` (any case, surrounding spaces ignored) or the codes ``0``, ``1``,
``2``. Samples marked ``val`` are the validation set (:func:`~mmdistill.data.build_data` then
draws none); at least one sample must train and one test.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import DataError
from .dataset import BaseDataset

SPLIT_CODES = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2


def parse_split(where: str, values: np.ndarray, describe: Callable[[int], str]) -> np.ndarray:
    """Codes [N] (0 train, 1 val, 2 test) from ``values``; ``where`` names the array or column,
    ``describe(i)`` sample ``i`` (``"f.npz: array 'split' sample 3"``, ``"m.csv row 4"``)."""
    values = np.asarray(values)
    if values.dtype.kind in "US":
        text = np.char.lower(np.char.strip(values.astype(str)))
        codes = np.full(len(values), -1, dtype=np.int64)
        for code, word in enumerate(SPLIT_CODES):
            codes[(text == word) | (text == str(code))] = code
    elif values.dtype.kind in "iu":
        codes = values.astype(np.int64)
    else:
        raise DataError(f"{where}: dtype {values.dtype}, expected train/val/test strings or the codes 0/1/2")
    bad = np.flatnonzero((codes < TRAIN) | (codes > TEST))
    if len(bad):
        raise DataError(f"{describe(int(bad[0]))}: unknown split value {values[bad[0]].item()!r} "
                        "(expected train/val/test or 0/1/2)")
    for code in (TRAIN, TEST):
        if not (codes == code).any():
            raise DataError(f"{where}: no sample is marked {SPLIT_CODES[code]!r}")
    return codes


def check_unlabelled_train(codes: np.ndarray, labels: np.ndarray, describe: Callable[[int], str]) -> None:
    """Refuse a split that makes an unlabelled sample (label -1) a test or validation sample."""
    bad = np.flatnonzero((codes != TRAIN) & (labels < 0))
    if len(bad):
        side = "test" if codes[bad[0]] == TEST else "validation"
        raise DataError(f"{describe(int(bad[0]))}: an unlabelled sample cannot be a {side} sample; "
                        "mark it 'train' (unlabelled samples only train)")


def apply_split(full: BaseDataset, codes: np.ndarray, name: str) -> tuple[BaseDataset, BaseDataset]:
    """(train, test) subsets of ``full`` by ``codes``; the training split's ``val_mask`` marks the
    samples coded val (None when there are none)."""
    train = full.subset(np.flatnonzero(codes != TEST), f"{name}/train")
    if (codes == VAL).any():
        train.val_mask = codes[codes != TEST] == VAL
    return train, full.subset(np.flatnonzero(codes == TEST), f"{name}/test")
