"""MNIST from the official IDX files or from the 10k-subset JSON layout.

Layouts under the data root (first match wins):

* ``mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``: the official files, 60k/10k split.
* ``mnist10k/{digit}.json.gz``: ``{"data": [...]}`` with 784 floats in [0, 1] per image; split per
  class, the first ``train_fraction`` of each class's images train, the rest test.

When neither exists the official IDX files are downloaded and verified by MD5.
"""
from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from ..errors import DataError
from ..options import Strict
from .dataset import MultimodalDataset
from .registry import register_dataset
from .root import data_root, download

IDX_FILES = {  # name -> md5 of the official .gz (as published alongside the files)
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS = ["https://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"]
HINT = ("Put the MNIST IDX files in <root>/mnist/ or the 10k JSON files in <root>/mnist10k/, and point "
        "MMDISTILL_DATA (or --data-root) at <root>.")


def _open(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read ({err})") from None


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (unsigned-byte data) into an array, checking its header."""
    raw = _open(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: header promises {expected} bytes of data, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _idx_path(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def load_idx(folder: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] float32 in [0, 1] and labels [N] of ``part`` ('train' or 't10k')."""
    images_path = _idx_path(folder, f"{part}-images-idx3-ubyte")
    labels_path = _idx_path(folder, f"{part}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        raise DataError(f"{folder}: missing MNIST IDX files for {part!r}. {HINT}")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{images_path}: {images.shape} images do not match {labels.shape} labels in {labels_path}")
    bad = np.flatnonzero(labels > 9)
    if len(bad):
        raise DataError(f"{labels_path}: sample {bad[0]} has unknown label {labels[bad[0]]}")
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def load_json10k(folder: Path, train_fraction: float = 0.8):
    """(train_images, train_labels, test_images, test_labels) from the per-digit JSON layout."""
    splits = {"train": ([], []), "test": ([], [])}
    for digit in range(10):
        path = folder / f"{digit}.json.gz"
        if not path.exists():
            raise DataError(f"{path}: missing (expected one file per digit 0-9). {HINT}")
        try:
            payload = json.loads(_open(path))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or len(data) % 784:
            raise DataError(f"{path}: expected {{\"data\": [...]}} with a multiple of 784 values")
        try:
            images = np.asarray(data, dtype=np.float32).reshape(-1, 28, 28)
        except (TypeError, ValueError):
            raise DataError(f"{path}: non-numeric pixel values") from None
        bad = ~(np.isfinite(images) & (images >= 0) & (images <= 1)).reshape(len(images), -1).all(axis=1)
        if bad.any():
            raise DataError(f"{path}: sample {int(np.flatnonzero(bad)[0])} has pixels outside [0, 1] or NaN")
        cut = int(round(train_fraction * len(images)))
        for split, part in (("train", images[:cut]), ("test", images[cut:])):
            splits[split][0].append(part)
            splits[split][1].append(np.full(len(part), digit, dtype=np.int64))
    return tuple(np.concatenate(x) for split in ("train", "test") for x in splits[split])


def load_mnist(root=None, source: str = "auto", train_fraction: float = 0.8):
    """MNIST as (train_images, train_labels, test_images, test_labels, source_used).

    ``source``: ``idx`` (official files), ``json10k`` (the 10k subset) or ``auto`` (IDX if present,
    else the 10k subset, else download the IDX files).
    """
    root = data_root(root)
    idx_dir, json_dir = root / "mnist", root / "mnist10k"
    if source not in ("auto", "idx", "json10k"):
        raise DataError(f"unknown MNIST source {source!r} (known: auto, idx, json10k)")
    if source == "json10k" or (source == "auto" and not _idx_path(idx_dir, "train-images-idx3-ubyte")
                               and (json_dir / "0.json.gz").exists()):
        return (*load_json10k(json_dir, train_fraction), "json10k")
    for name, md5 in IDX_FILES.items():
        if _idx_path(idx_dir, name) is None:
            download([m + name + ".gz" for m in MIRRORS], idx_dir / f"{name}.gz", md5=md5,
                     dataset="MNIST", hint=HINT)
    return (*load_idx(idx_dir, "train"), *load_idx(idx_dir, "t10k"), "idx")


class MNISTOptions(Strict):
    source: Literal["auto", "idx", "json10k"] = "auto"
    train_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.8
    flatten: bool = False


@register_dataset("mnist")
def build_mnist(root, options: MNISTOptions, seed: int):
    """MNIST images in [0, 1] as modality ``image`` ([1,28,28], or [784] with ``flatten``)."""
    x_train, y_train, x_test, y_test, used = load_mnist(root, options.source, options.train_fraction)
    shape = (-1, 784) if options.flatten else (-1, 1, 28, 28)
    kind = "vector" if options.flatten else "image"
    out = [MultimodalDataset({"image": torch.from_numpy(x).reshape(shape)}, torch.from_numpy(y), num_classes=10,
                             kinds={"image": kind}, name=f"mnist/{part}")
           for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test))]
    return out[0], out[1], {"dataset": "mnist", "source": used, "train": len(y_train), "test": len(y_test)}
