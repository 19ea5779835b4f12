"""Data beyond RAM, one ``.npy`` file per array in a folder: dataset ``npy_dir``.

The folder ``path`` holds (``np.save``; no pickled objects)::

    <modality>.npy          [N, ...] numbers (bool, int, float16/32/64), one file per modality
    label.npy               [N] class indices (ints >= 0) or strings (mapped as in ``npz``)
    split.npy               optional [N]: 0 = train, 1 = val, 2 = test (any int dtype), or the
                            strings train/val/test (:mod:`mmdistill.data.split`); without it ``test_fraction`` of each class is
                            held out for test with the run's seed, and validation comes from
                            ``train.val_fraction``. Samples marked val are the validation set.
    present_<modality>.npy  optional [N] bools, False where the sample lacks the modality

Modality files are memory-mapped (``np.load(mmap_mode="r")``) and never read whole: a batch is
one sorted fancy index per modality (:meth:`NpyDirDataset.__getitems__`, which the DataLoader
calls with a whole batch of indices, under a ``DistributedSampler`` too), converted to float32.
Only labels, split and presence masks (a few bytes per sample) are held in memory. A NaN or
infinite value is reported when its batch is read, naming the file and the sample (row) index.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import numpy as np
import pydantic
import torch
from pydantic import StrictBool

from ..errors import DataError
from .dataset import BaseDataset, ModalitySpec, guess_kind
from .npz import PRESENT_PREFIX, NpzOptions, _labels, modalities_in_use, require_a_modality, stratified_test_mask
from .registry import register_dataset
from .root import find_path
from .split import TEST, TRAIN, apply_split, parse_split



class NpyDirOptions(NpzOptions):
    """The ``npz`` options, ``path`` naming the folder; without ``standardize`` and ``text``, which
    would rewrite arrays that stay on disk (store them standardised, or tokenised, instead)."""

    PATHS: ClassVar[dict[str, str]] = {"path": "folder"}
    standardize: StrictBool = False

    @pydantic.field_validator("standardize", "text")
    @classmethod
    def _arrays_stay_on_disk(cls, value, info):
        if value:
            store = "standardised" if info.field_name == "standardize" else "as token ids ([N, 2, L]: ids, mask)"
            raise ValueError(f"npy_dir arrays stay on disk and are read as stored; store them {store}")
        return value


class MemmapColumn:
    """Rows ``rows`` of a memory-mapped ``[N, ...]`` array, read by index as float32 tensors.

    Absent samples (``present`` False) read as zeros; a NaN or infinite value in a present sample
    is a :class:`DataError` naming ``file`` and the row.
    """

    def __init__(self, array: np.ndarray, rows: np.ndarray, present: np.ndarray, file: Path):
        self.array, self.rows, self.present, self.file = array, rows, present, file

    def __getstate__(self):  # DataLoader workers: reopen the map by file, never pickle its contents
        return {**self.__dict__, "array": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.array = np.load(self.file, mmap_mode="r", allow_pickle=False)

    @property
    def shape(self) -> tuple[int, ...]:
        inner = self.array.shape[1:] or (1,)
        return (len(self.rows), *inner)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> torch.Tensor:
        positions = np.arange(len(self.rows))[index] if isinstance(index, slice) else np.asarray(index, dtype=np.int64)
        return torch.from_numpy(self.read(positions))

    def read(self, positions: np.ndarray) -> np.ndarray:
        rows = self.rows[positions]
        order = np.argsort(rows, kind="stable")  # ascending rows: sequential reads of the file
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.float32)
        out[order] = np.asarray(self.array[rows[order]], dtype=np.float32).reshape(len(rows), *self.shape[1:])
        absent = ~self.present[rows]
        if absent.any():
            out[absent] = 0.0
        bad = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
        if bad.any():
            raise DataError(f"{self.file}: sample {int(rows[np.flatnonzero(bad)[0]])} has NaN or infinite values")
        return out


class NpyDirDataset(BaseDataset):
    """A dataset (:class:`~mmdistill.data.dataset.BaseDataset`) whose modalities stay on disk.

    ``modalities`` maps names to :class:`MemmapColumn` (sliceable, read on demand: a batch is one
    ``MemmapColumn.read`` per modality); labels and presence masks are in memory. Batches are the
    same dicts, with ``index`` the position in this dataset (a subset counts from 0, as
    ``MultimodalDataset.subset`` does).
    """

    def __init__(self, columns: Mapping[str, MemmapColumn], labels: torch.Tensor, *, num_classes: int,
                 kinds: Mapping[str, str], name: str, val_mask: np.ndarray | None = None):
        self.modalities = dict(columns)
        self.labels = labels
        self.num_classes = num_classes
        self.name = name
        self.specs = {m: ModalitySpec(m, kinds[m], tuple(c.shape[1:])) for m, c in self.modalities.items()}
        self.present = {m: torch.from_numpy(c.present[c.rows]) for m, c in self.modalities.items()}
        self.val_mask = val_mask  # samples split.npy marks val (see build_data), or None

    def subset(self, indices, name: str | None = None) -> "NpyDirDataset":
        idx = np.asarray(indices, dtype=np.int64)
        columns = {m: MemmapColumn(c.array, c.rows[idx], c.present, c.file) for m, c in self.modalities.items()}
        return NpyDirDataset(columns, self.labels[torch.from_numpy(idx)], num_classes=self.num_classes,
                             kinds={m: s.kind for m, s in self.specs.items()}, name=name or self.name)

    def with_labels(self, labels: torch.Tensor) -> "NpyDirDataset":
        """The same samples with ``labels`` (e.g. some set to -1, unlabelled)."""
        return NpyDirDataset(self.modalities, torch.as_tensor(labels, dtype=torch.long).clone(),
                             num_classes=self.num_classes, kinds={m: s.kind for m, s in self.specs.items()},
                             name=self.name, val_mask=self.val_mask)

    def select(self, modalities: Sequence[str]) -> "NpyDirDataset":
        missing = [m for m in modalities if m not in self.modalities]
        if missing:
            raise DataError(f"{self.name}: no modality {missing[0]!r} (has {', '.join(self.modalities)})")
        return NpyDirDataset({m: self.modalities[m] for m in modalities}, self.labels, num_classes=self.num_classes,
                             kinds={m: self.specs[m].kind for m in modalities}, name=self.name,
                             val_mask=self.val_mask)

    def fingerprint(self) -> str:
        """SHA-256 of the files' identities (path, size, mtime), the rows used, labels and masks.

        Not of the bytes: hashing data larger than memory would cost a full read each run.
        """
        digest = hashlib.sha256()
        for m, c in sorted(self.modalities.items()):
            st = os.stat(c.file)
            digest.update(f"{m}|{c.file.resolve()}|{st.st_size}|{st.st_mtime_ns}|".encode())
            digest.update(np.ascontiguousarray(c.rows).tobytes())
            digest.update(np.ascontiguousarray(c.present[c.rows]).tobytes())
        digest.update(self.labels.numpy().tobytes())
        return digest.hexdigest()


def _load(folder: Path, name: str, mmap: bool) -> np.ndarray:
    file = folder / f"{name}.npy"
    try:
        return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as err:
        raise DataError(f"{file}: cannot be read without pickle or is not a .npy array ({err})") from None
    except OSError as err:
        raise DataError(f"{file}: not a readable .npy file ({err})") from None


def _split(folder: Path, split: np.ndarray, n: int) -> np.ndarray:
    """Codes [N] (0 train, 1 val, 2 test) from ``split.npy`` (:func:`mmdistill.data.split.parse_split`)."""
    file = folder / "split.npy"
    if split.shape != (n,):
        raise DataError(f"{file}: shape {list(split.shape)}, expected [{n}] like label.npy")
    return parse_split(str(file), split, lambda i: f"{file}: sample {i}")


@register_dataset("npy_dir")
def build_npy_dir(root, options: NpyDirOptions, seed: int):
    folder = find_path(options.path, root, folder=True, what="npy_dir dataset path")
    names = sorted(p.stem for p in folder.glob("*.npy"))
    if "label" not in names:
        raise DataError(f"{folder}: no label.npy (files: {', '.join(n + '.npy' for n in names) or 'none'})")
    labels, classes = _labels(folder / "label.npy", _load(folder, "label", mmap=False), options.classes)
    n = len(labels)
    if n == 0:
        raise DataError(f"{folder / 'label.npy'}: empty")

    wanted = modalities_in_use(folder, names, options, member=lambda key: f"{key}.npy")

    if "split" in names:
        codes = _split(folder, _load(folder, "split", mmap=False), n)
        split_used = "file"
    else:
        codes = np.where(stratified_test_mask(labels, options.test_fraction, seed), TEST, TRAIN)
        split_used = f"stratified test_fraction={options.test_fraction} seed={seed}"

    all_rows = np.arange(n, dtype=np.int64)
    columns = {}
    for m in wanted:
        file = folder / f"{m}.npy"
        arr = _load(folder, m, mmap=True)
        if arr.ndim == 0 or len(arr) != n:
            got = "a scalar" if arr.ndim == 0 else f"{len(arr)} samples"
            raise DataError(f"{file}: has {got} but label.npy has {n}")
        if arr.dtype.kind not in "biuf":
            raise DataError(f"{file}: dtype {arr.dtype}, expected numbers (bool, int or float)")
        mask = np.ones(n, dtype=bool)
        if PRESENT_PREFIX + m in names:
            mask_file = folder / f"{PRESENT_PREFIX}{m}.npy"
            mask_arr = _load(folder, PRESENT_PREFIX + m, mmap=False)
            if mask_arr.shape != (n,):
                raise DataError(f"{mask_file}: shape {list(mask_arr.shape)}, expected [{n}]")
            if mask_arr.dtype.kind not in "biu" or not np.isin(mask_arr, (0, 1)).all():
                raise DataError(f"{mask_file}: must hold booleans")
            mask = mask_arr.astype(bool)
        columns[m] = MemmapColumn(arr, all_rows, mask, file)
    require_a_modality(folder, [c.present for c in columns.values()])

    num_classes = len(classes) if classes is not None else int(labels.max()) + 1
    kinds = {m: (options.kinds or {}).get(m) or guess_kind(c.shape[1:]) for m, c in columns.items()}
    full = NpyDirDataset(columns, torch.from_numpy(labels), num_classes=num_classes, kinds=kinds, name=folder.name)
    train, test = apply_split(full, codes, folder.name)
    info = {"dataset": "npy_dir", "path": str(folder), "split": split_used, "num_classes": num_classes,
            "modalities": {m: {"kind": kinds[m], "shape": list(c.shape[1:]), "dtype": str(c.array.dtype),
                               "present": int(c.present.sum())} for m, c in columns.items()}}
    if classes is not None:
        info["classes"] = classes
    return train, test, info
