"""MNIST from the official IDX files or the ``mnist10k`` subset.

Layouts under the data root:

* ``mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``: the official files, 60k/10k split.
* ``mnist10k/{digit}.json.gz``: ``{"data": [...]}`` with 784 floats in [0, 1] per image; split per
  class, the first ``train_fraction`` of each class's images train, the rest test.

``mnist10k``, the subset every published number uses, is defined by a rule on the official files
(:func:`derive_mnist10k`): the first 10,000 images of ``train-images-idx3-ubyte``, grouped by
digit in file order, each pixel ``p / 255`` rounded to 3 decimals. Whether read from the JSON
files or derived from the IDX files, it is checked against :data:`MNIST10K_SHA256` (derived: an error; read: a warning).

When no layout exists the official IDX files are downloaded and verified by MD5.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import struct
import warnings
import zlib
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from ..errors import DataError
from .dataset import MultimodalDataset
from .registry import register_dataset
from .root import data_root, download
from .source import DatasetOptions

IDX_FILES = {  # name -> md5 of the official .gz (as published alongside the files)
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS = ["https://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"]
#: the mnist10k subset: how many of the official training images it takes, and the SHA-256 of
#: its images (float32 [10000, 28, 28], digit 0's in file order, then 1's, ...) followed by its
#: labels (int64 [10000]), little-endian (:func:`mnist10k_digest`)
MNIST10K_COUNT = 10_000
MNIST10K_SHA256 = "3c77a86a33b4cd50146797e1437919acb90ac7c809d353121daea564ff89b3fe"
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


def mnist10k_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of ``images`` (float32) then ``labels`` (int64), little-endian: the checksum
    :data:`MNIST10K_SHA256` states for the mnist10k subset in its digit-grouped order."""
    h = hashlib.sha256(np.ascontiguousarray(images, dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def mnist10k_mismatch(where: str, images: np.ndarray, labels: np.ndarray) -> str | None:
    """None when ``images`` and ``labels`` are the mnist10k subset (:data:`MNIST10K_SHA256`), else
    why not: the published AV-Digits pairs, splits and MNIST results rely on exactly that subset."""
    digest = mnist10k_digest(images, labels)
    if digest == MNIST10K_SHA256:
        return None
    return (f"{where}: not the mnist10k subset (SHA-256 {digest}, expected {MNIST10K_SHA256}); results will "
            "differ from the published ones")


def derive_mnist10k(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The mnist10k subset from the official training files in ``folder`` (``.gz`` or not):
    images float32 [10000, 28, 28] and labels int64 [10000], grouped by digit. Rule: the first
    :data:`MNIST10K_COUNT` images of ``train-images-idx3-ubyte`` with their labels, stably sorted
    by label (each digit's images in file order), pixel ``p`` (0-255) as ``round(p / 255, 3)``,
    the values the published JSON files hold. Checked against :data:`MNIST10K_SHA256`."""
    images_path = _idx_path(folder, "train-images-idx3-ubyte")
    labels_path = _idx_path(folder, "train-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        raise DataError(f"{folder}: missing MNIST IDX training files (train-images-idx3-ubyte[.gz], "
                        f"train-labels-idx1-ubyte[.gz]) to derive mnist10k from. {HINT}")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or len(labels) < MNIST10K_COUNT:
        raise DataError(f"{images_path}: expected the official training set ({MNIST10K_COUNT}+ images and as many "
                        f"labels), got {images.shape} images and {labels.shape} labels")
    order = np.argsort(labels[:MNIST10K_COUNT], kind="stable")
    pixels = np.round(np.arange(256) / 255, 3).astype(np.float32)  # the JSON files' 3-decimal values
    out = pixels[images[:MNIST10K_COUNT][order]], labels[:MNIST10K_COUNT][order].astype(np.int64)
    mismatch = mnist10k_mismatch(f"{images_path} (mnist10k derived by its rule)", *out)
    if mismatch:  # the rule applied to other files than the official ones
        raise DataError(f"{mismatch}; are these the official MNIST training files?")
    return out


def write_mnist10k(images: np.ndarray, labels: np.ndarray, folder: Path) -> None:
    """Write the subset in the published JSON layout (``{digit}.json.gz``, 3-decimal pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    for digit in range(10):
        values = np.round(images[labels == digit].astype(np.float64), 3).reshape(-1)
        text = json.dumps({"data": [int(v) if v in (0.0, 1.0) else float(v) for v in values.tolist()]})
        with gzip.open(folder / f"{digit}.json.gz", "wt") as f:
            f.write(text)


def split_per_class(images: np.ndarray, labels: np.ndarray, train_fraction: float):
    """(train_images, train_labels, test_images, test_labels): the first ``train_fraction`` of each
    digit's images (in order) train, the rest test."""
    splits = {"train": ([], []), "test": ([], [])}
    for digit in range(10):
        part = images[labels == digit]
        cut = int(round(train_fraction * len(part)))
        for split, chunk in (("train", part[:cut]), ("test", part[cut:])):
            splits[split][0].append(chunk)
            splits[split][1].append(np.full(len(chunk), digit, dtype=np.int64))
    return tuple(np.concatenate(x) for split in ("train", "test") for x in splits[split])


def read_json10k(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 [N, 28, 28] and labels of the per-digit JSON layout, grouped by digit."""
    all_images, all_labels = [], []
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
        all_images.append(images)
        all_labels.append(np.full(len(images), digit, dtype=np.int64))
    return np.concatenate(all_images), np.concatenate(all_labels)


def load_json10k(folder: Path, train_fraction: float = 0.8):
    """(train_images, train_labels, test_images, test_labels) of the mnist10k JSON files in
    ``folder``, checked against :data:`MNIST10K_SHA256`: other images in the same layout (a
    smaller set for a test, say) load with a warning naming both checksums."""
    images, labels = read_json10k(folder)
    mismatch = mnist10k_mismatch(str(folder), images, labels)
    if mismatch:
        warnings.warn(mismatch, stacklevel=2)
    return split_per_class(images, labels, train_fraction)


def load_mnist(root=None, source: str = "auto", train_fraction: float = 0.8):
    """MNIST as (train_images, train_labels, test_images, test_labels, source_used).

    ``source``: ``idx`` (official files), ``json10k`` (the mnist10k subset: ``mnist10k/`` when
    present, else derived from the official training files, downloaded when missing) or ``auto``
    (IDX if present, else ``mnist10k/``, else download the IDX files).
    """
    root = data_root(root)
    idx_dir, json_dir = root / "mnist", root / "mnist10k"
    if source not in ("auto", "idx", "json10k"):
        raise DataError(f"unknown MNIST source {source!r} (known: auto, idx, json10k)")
    if source == "json10k" and not json_dir.is_dir():
        _download(idx_dir, [n for n in IDX_FILES if n.startswith("train-")])
        return (*split_per_class(*derive_mnist10k(idx_dir), train_fraction), "json10k")
    if source == "json10k" or (source == "auto" and not _idx_path(idx_dir, "train-images-idx3-ubyte")
                               and (json_dir / "0.json.gz").exists()):
        return (*load_json10k(json_dir, train_fraction), "json10k")
    _download(idx_dir, list(IDX_FILES))
    return (*load_idx(idx_dir, "train"), *load_idx(idx_dir, "t10k"), "idx")


def _download(idx_dir: Path, names: list[str]) -> None:
    """Download the official files ``names`` missing from ``idx_dir``, each verified by its MD5."""
    for name in names:
        if _idx_path(idx_dir, name) is None:
            download([m + name + ".gz" for m in MIRRORS], idx_dir / f"{name}.gz", md5=IDX_FILES[name],
                     dataset="MNIST", hint=HINT)


def describe_mnist_digit(flatten: bool) -> str:
    return "MNIST digit, 28x28 grayscale in [0, 1]" + (", flattened row-major -> [784]" if flatten else " -> [1, 28, 28]")


class MNISTOptions(DatasetOptions):
    source: Literal["auto", "idx", "json10k"] = "auto"
    train_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.8
    flatten: bool = False

    @classmethod
    def describe(cls, modality, spec, info, options):
        return {"description": describe_mnist_digit(bool(options.get("flatten")))}


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
