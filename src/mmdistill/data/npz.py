"""Bring your own data, in one ``.npz`` file: dataset ``npz``.

The archive holds (``np.savez``/``np.savez_compressed``; no pickled objects):

* one array per modality, any shape ``[N, ...]``: feature vectors ``[N, D]``, images
  ``[N, C, H, W]`` or ``[N, H, W]``, sequences ``[N, T, D]``; bool, int or float;
* ``label``: ``[N]`` class indices (ints 0..K-1, each class with at least one sample: labels that
  skip an index are refused, name the classes with ``classes`` instead), or strings, mapped to the indices of the sorted
  class names (or of ``classes`` when given); the names are recorded in ``info["classes"]``.
  An unlabelled sample has label -1 (or an empty string);
* optionally ``labelled``: ``[N]`` bools, False where the sample's label is to be ignored
  (unlabelled). Unlabelled samples only ever train, never validate or test;
* optionally ``split``: ``[N]`` strings ``train``/``val``/``test`` or ints 0/1/2
  (:mod:`mmdistill.data.split`; val samples are the validation set; without it,
  ``test_fraction`` of each class is held out for test, chosen with the run's seed);
* optionally ``present_<modality>``: ``[N]`` bools, False where the sample lacks the modality.
  Absent samples are zeroed (their stored values, NaN included, are ignored).

Text: an array of strings ``[N]`` named in ``text`` (``text: {caption: {tokenizer: DIR, max_length: 32}}``)
is tokenised into a ``text`` modality ``[2, max_length]`` (ids; attention mask, see
:mod:`mmdistill.data.text`); an empty string means the sample lacks it.

Kinds (which encoder a modality gets) are guessed from the per-sample shape (see
:func:`~mmdistill.data.dataset.guess_kind`) unless ``kinds`` names them.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, StrictBool

from ..errors import DataError
from .batch import RESERVED_KEYS
from .dataset import MultimodalDataset, check_kind, guess_kind
from .kinds import DECLARABLE
from .registry import register_dataset
from .root import find_path, resolve
from .source import DatasetOptions
from .split import TEST, TRAIN, apply_split, check_unlabelled_train, parse_split
from .text import TextOptions, load_tokenizer, tokenize

Kind = Literal[DECLARABLE]  # the kinds a ``kinds:`` option may declare
PRESENT_PREFIX = "present_"


class NpzOptions(DatasetOptions):
    PATHS: ClassVar[dict[str, str]] = {"path": "file", "text.*.tokenizer": "folder"}

    path: str
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    modalities: list[str] | None = None
    kinds: dict[str, Kind] | None = None
    classes: list[str] | None = None
    text: dict[str, TextOptions] = {}  # string arrays to tokenise, by modality name
    # (x - mean) / std with the training split's statistics: auto = feature vectors, per feature
    # (see mmdistill.data.standardize); true: every modality; false: none
    standardize: Literal["auto"] | StrictBool = "auto"


def require_a_modality(where, masks: list[np.ndarray]) -> None:
    """A sample needs at least one modality present: a DataError naming ``where`` and the first
    sample whose ``present_<modality>`` masks ([N] bools each) are all False."""
    nothing = ~np.any(np.stack(masks), axis=0)
    if nothing.any():
        raise DataError(f"{where}: sample {int(np.flatnonzero(nothing)[0])} has every modality absent "
                        f"(its present_<modality> masks are all False); a sample needs at least one")


def stratified_test_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Bool [N]: ``fraction`` of each class (at least one, never all when it has 2+) is test."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels[labels >= 0]):  # unlabelled samples (-1) stay in training
        idx = np.flatnonzero(labels == c)
        k = int(round(fraction * len(idx)))
        if len(idx) > 1:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        is_test[rng.permutation(idx)[:k]] = True
    return is_test


def encode_labels(where: str, raw: list, classes: list[str] | None, describe,
                  total: int | None = None) -> tuple[np.ndarray, list[str] | None]:
    """Class indices [N] and class names (None for plain integer labels).

    ``raw`` holds ints or strings; -1 or None is an unlabelled sample (encoded -1). With ``classes``,
    every other label must be one of them (strings) or an index into them (ints). Without, string
    labels map to their sorted distinct values, and integer labels are indices 0..K-1, every one of
    them used by a labelled sample (a skipped index would be a class without samples), with K (the
    largest + 1) at most ``total`` (default: the number of samples), so a stray huge label is an
    error here rather than a K-way model that does not fit in memory.
    """
    out = np.full(len(raw), -1, dtype=np.int64)
    if classes is not None and len(set(classes)) < len(classes):
        twice = next(c for i, c in enumerate(classes) if c in classes[:i])
        raise DataError(f"{where}: classes names {twice!r} twice; each class once")
    none = [v is None or (not isinstance(v, str) and v == -1) for v in raw]
    if any(none):
        kept = [i for i, n in enumerate(none) if not n]
        sub, names = encode_labels(where, [raw[i] for i in kept], classes, lambda j: describe(kept[j]), len(raw))
        out[kept] = sub
        return out, names
    strings = any(isinstance(v, str) for v in raw)
    if strings:
        for i, v in enumerate(raw):
            if str(v).strip() == "":
                raise DataError(f"{where} {describe(i)}: empty label")
        names = list(classes) if classes is not None else sorted({str(v).strip() for v in raw})
        lookup = {name: j for j, name in enumerate(names)}
        for i, v in enumerate(raw):
            key = str(v).strip()
            if key not in lookup:
                raise DataError(f"{where} {describe(i)}: unknown label {key!r} (classes: {', '.join(names)})")
            out[i] = lookup[key]
        return out, names
    for i, v in enumerate(raw):
        if v < 0 or (classes is not None and v >= len(classes)):
            limit = f"0..{len(classes) - 1}" if classes is not None else ">= 0"
            raise DataError(f"{where} {describe(i)}: unknown label {v} (expected {limit}, or -1 for unlabelled)")
    total = len(raw) if total is None else total
    if classes is None and len(raw) and max(raw) >= total:
        i = max(range(len(raw)), key=lambda j: raw[j])
        raise DataError(f"{where} {describe(i)}: label {raw[i]} would make {raw[i] + 1} classes for {total} "
                        "samples; integer labels are class indices 0..K-1 (name the classes with `classes`)")
    if classes is None and len(raw):
        # integer labels are indices 0..K-1: a skipped index would be a class with no sample, which
        # the model would still learn to output and the metrics would average over
        missing = sorted(set(range(max(raw) + 1)) - set(raw))
        if missing:
            i = next(j for j, v in enumerate(raw) if v > missing[0])
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise DataError(f"{where} {describe(i)}: label {raw[i]}, but no sample has label {shown}; integer "
                            f"labels are class indices 0..K-1 with every class present (use string labels, or "
                            f"name the classes with `classes`)")
    out[:] = raw
    return out, (list(classes) if classes is not None else None)


def modalities_in_use(path: Path, names: list[str], options, member=lambda key: f"array {key!r}") -> list[str]:
    """The modalities among the stored ``names`` (all but label, split and presence masks) that
    ``options.modalities`` selects (default: all), checked; ``member(name)`` names one in errors."""
    modal_names = [k for k in names if k not in ("label", "split", "labelled") and not k.startswith(PRESENT_PREFIX)]
    if not modal_names:
        raise DataError(f"{path}: no modality arrays (only {', '.join(names)}); add one array per modality")
    for key in modal_names:
        if key in RESERVED_KEYS:
            raise DataError(f"{path}: {member(key)} is a reserved name and cannot be a modality")
    for key in [k for k in names if k.startswith(PRESENT_PREFIX)]:
        if key[len(PRESENT_PREFIX):] not in modal_names:
            raise DataError(f"{path}: {member(key)} masks modality {key[len(PRESENT_PREFIX):]!r}, "
                            f"which is not in the file (modalities: {', '.join(modal_names)})")
    wanted = modal_names
    if options.modalities is not None:
        missing = [m for m in options.modalities if m not in modal_names]
        if missing:
            raise DataError(f"{path}: no modality {member(missing[0])} (modalities: {', '.join(modal_names)})")
        wanted = list(options.modalities)
    for m in options.kinds or {}:
        if m not in wanted:
            raise DataError(f"{path}: kinds names {m!r}, which is not a modality in use ({', '.join(wanted)})")
    return wanted


def _read(path: Path, archive, name: str) -> np.ndarray:
    try:
        value = archive[name]
    except ValueError as err:  # object arrays need pickle, which is refused
        raise DataError(f"{path}: array {name!r} cannot be read without pickle ({err}); "
                        "store strings as a fixed-width unicode array (np.array(list_of_str))") from None
    except Exception as err:  # a corrupt member: zlib/zipfile/OSError/EOFError
        raise DataError(f"{path}: array {name!r} is corrupt ({err})") from None
    if not isinstance(value, np.ndarray):  # a member that is not a .npy array (numpy returns its raw bytes)
        raise DataError(f"{path}: member {name!r} is not a .npy array (empty or of another format)")
    return value


def _labels(path: Path, label: np.ndarray, classes) -> tuple[np.ndarray, list[str] | None]:
    if label.ndim != 1:
        raise DataError(f"{path}: array 'label' has shape {list(label.shape)}, expected [N]")
    sample = lambda i: f"sample {i}"  # noqa: E731
    if label.dtype.kind in "US":
        raw = [v.decode() if isinstance(v, bytes) else str(v) for v in label.tolist()]
        raw = [v if v.strip() else None for v in raw]  # an empty label: unlabelled
    elif label.dtype.kind in "biu":
        raw = [int(v) for v in label.tolist()]
    elif label.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(label) | (label != np.round(label)))
        if len(bad):
            raise DataError(f"{path}: array 'label' sample {bad[0]}: label {label[bad[0]]} is not an integer")
        raw = [int(v) for v in label.tolist()]
    else:
        raise DataError(f"{path}: array 'label' has dtype {label.dtype}, expected ints or strings")
    return encode_labels(f"{path}: array 'label'", raw, classes, sample)


@register_dataset("npz")
def build_npz(root, options: NpzOptions, seed: int):
    path = find_path(options.path, root, what="npz dataset path")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # BadZipFile, ValueError, OSError, EOFError, ...
        raise DataError(f"{path}: not a valid .npz archive ({err})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not a valid .npz archive (it holds a single array; save with np.savez)")
    with archive:
        try:
            names = list(archive.files)
        except zipfile.BadZipFile as err:
            raise DataError(f"{path}: not a valid .npz archive ({err})") from None
        if "label" not in names:
            raise DataError(f"{path}: no 'label' array (arrays: {', '.join(names) or 'none'})")
        labels, classes = _labels(path, _read(path, archive, "label"), options.classes)
        n = len(labels)
        if n == 0:
            raise DataError(f"{path}: array 'label' is empty")
        if "labelled" in names:
            flags = _read(path, archive, "labelled")
            if flags.shape != (n,):
                raise DataError(f"{path}: array 'labelled' has shape {list(flags.shape)}, expected [{n}] like 'label'")
            if flags.dtype.kind not in "biu" or not np.isin(flags, (0, 1)).all():
                raise DataError(f"{path}: array 'labelled' must hold booleans")
            labels[~flags.astype(bool)] = -1

        wanted = modalities_in_use(path, names, options)
        for m in options.text:
            if m not in wanted:
                raise DataError(f"{path}: text names {m!r}, which is not a modality in use ({', '.join(wanted)})")
        for m in options.kinds or {}:
            if m not in wanted:
                raise DataError(f"{path}: kinds names {m!r}, which is not a modality in use ({', '.join(wanted)})")

        if "split" in names:
            split = _read(path, archive, "split")
            if split.shape != (n,):
                raise DataError(f"{path}: array 'split' has shape {list(split.shape)}, expected [{n}] like 'label'")
            codes = parse_split(f"{path}: array 'split'", split, lambda i: f"{path}: array 'split' sample {i}")
            check_unlabelled_train(codes, labels, lambda i: f"{path}: array 'split' sample {i}")
            split_used = "file"
        else:
            codes = np.where(stratified_test_mask(labels, options.test_fraction, seed), TEST, TRAIN)
            split_used = f"stratified test_fraction={options.test_fraction} seed={seed}"

        modalities, present = {}, {}
        for m in wanted:
            arr = _read(path, archive, m)
            if arr.ndim > 1 and 0 in arr.shape[1:]:
                raise DataError(f"{path}: array {m!r} has shape {list(arr.shape)}: its samples hold no values")
            if arr.ndim == 0 or len(arr) != n:
                got = "a scalar" if arr.ndim == 0 else f"{len(arr)} samples"
                raise DataError(f"{path}: array {m!r} has {got} but 'label' has {n}")
            if m in options.text:
                if arr.dtype.kind not in "US" or arr.ndim != 1:
                    raise DataError(f"{path}: array {m!r} is named in text but is not strings [N] "
                                    f"(dtype {arr.dtype}, shape {list(arr.shape)})")
                texts = [str(t) or None for t in arr.tolist()]
                mask = np.array([t is not None for t in texts])
                key = PRESENT_PREFIX + m
                if key in names:
                    mask_arr = _read(path, archive, key)
                    if mask_arr.shape != (n,) or mask_arr.dtype.kind not in "biu":
                        raise DataError(f"{path}: array {key!r} must hold [{n}] booleans")
                    mask &= mask_arr.astype(bool)
                    texts = [t if keep else None for t, keep in zip(texts, mask)]
                opts = options.text[m]
                modalities[m] = tokenize(texts, load_tokenizer(resolve(root, opts.tokenizer)), opts.max_length)
                present[m] = torch.from_numpy(mask)
                continue
            if arr.dtype.kind not in "biuf":
                raise DataError(f"{path}: array {m!r} has dtype {arr.dtype}, expected numbers")
            with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32: refused below, by sample
                arr = arr.astype(np.float32)
            if arr.ndim == 1:
                arr = arr[:, None]
            mask = np.ones(n, dtype=bool)
            key = PRESENT_PREFIX + m
            if key in names:
                mask_arr = _read(path, archive, key)
                if mask_arr.shape != (n,):
                    raise DataError(f"{path}: array {key!r} has shape {list(mask_arr.shape)}, expected [{n}]")
                if mask_arr.dtype.kind not in "biu" or not np.isin(mask_arr, (0, 1)).all():
                    raise DataError(f"{path}: array {key!r} must hold booleans")
                mask = mask_arr.astype(bool)
                arr[~mask] = 0.0
            finite = np.isfinite(arr.reshape(n, -1)).all(axis=1)
            if not finite.all():
                first_bad = int(np.flatnonzero(~finite)[0])
                raise DataError(f"{path}: array {m!r} sample {first_bad} has NaN or infinite values")
            modalities[m] = torch.from_numpy(arr)
            present[m] = torch.from_numpy(mask)

    require_a_modality(path, [p.numpy() for p in present.values()])
    num_classes = len(classes) if classes is not None else max(int(labels.max()) + 1, 0)
    kinds = {m: "text" if m in options.text else (options.kinds or {}).get(m) or guess_kind(t.shape[1:])
             for m, t in modalities.items()}
    for m, kind in (options.kinds or {}).items():
        check_kind(str(path), m, kind, modalities[m].shape[1:])
    labels_t = torch.from_numpy(labels)
    full = MultimodalDataset(modalities, labels_t, num_classes=num_classes, kinds=kinds, present=present,
                             name=path.name)
    out = apply_split(full, codes, path.name)
    info = {"dataset": "npz", "path": str(path), "split": split_used, "num_classes": num_classes,
            "modalities": {m: {"kind": kinds[m], "shape": list(t.shape[1:]),
                               "present": int(present[m].sum())} for m, t in modalities.items()}}
    if classes is not None:
        info["classes"] = classes
    if (labels < 0).any():
        info["unlabelled"] = int((labels < 0).sum())
    return out[0], out[1], info
