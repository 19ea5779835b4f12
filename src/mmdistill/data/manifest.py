"""Bring your own data as files listed in a manifest: dataset ``manifest``.

The manifest is a CSV file (``.csv``, with a header row) or a JSON-lines file (``.jsonl``/``.ndjson``,
one object per line). Besides the label column (``label_column``) and the optional split column
(``split_column``, values ``train``/``test``; without it ``test_fraction`` of each class is held out
with the run's seed), every column is a modality (or only those ``modalities`` lists) whose cells
are file paths, relative to the manifest's folder and inside it (a path whose ``..`` leads out of
the folder is refused; absolute paths are taken as given):

* ``.wav``/``.flac``: audio (stereo downmixed to the channels' mean; a WAV file cut short is
  refused), resampled to ``audio.sample_rate`` when it differs, cut or padded to a
  fixed length and turned into a ``[1, n_mels, frames]`` log-mel spectrogram (standardised with the
  training split's mean and deviation unless ``audio.standardize`` is false);
* ``.png``/``.jpg``/``.jpeg``: an image ``[C, H, W]`` in [0, 1]; grayscale gives ``C = 1``, colour
  ``C = 3`` (alpha dropped; a column mixing both is promoted to 3 channels). All images of a column
  must share their size unless ``image_size: [H, W]`` resizes them;
* ``.npy``: any numeric array; all rows of a column must share its shape.

An empty cell (or a JSON ``null``/missing key) means the sample lacks that modality: its presence
mask is False and its tensor zeros. Labels are integers (used as class indices) or names (mapped to
the sorted names, or to ``classes`` when given); an empty label cell (or -1) marks an unlabelled
sample, which only ever trains (a split column that puts one in test is an error).

Errors name the manifest and the row, e.g. ``manifest.csv row 7: column audio: no such file x.wav``.
CSV rows are counted like a spreadsheet's (the header is row 1); JSONL lines from 1.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from ..errors import DataError
from .batch import RESERVED_KEYS
from .audio import wav_truncation
from .dataset import MultimodalDataset, guess_kind
from .npz import Kind, check_unlabelled_train, encode_labels, parse_split, resolve, stratified_test_mask
from .registry import register_dataset
from .transforms import LogMel, LogMelParams, fix_length

FILE_TYPES = {".wav": "audio", ".flac": "audio", ".png": "image", ".jpg": "image", ".jpeg": "image", ".npy": "npy"}
SUFFIXES = ", ".join(FILE_TYPES)
INTEGER = re.compile(r"^[+-]?\d+$")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ManifestAudioOptions(_Options):
    """Audio preprocessing; ``n_fft``/``hop_length`` default to :class:`LogMelParams`' values scaled
    to ``sample_rate`` (256/200 at 8 kHz, 512/400 at 16 kHz), so the window lasts the same time."""

    sample_rate: PositiveInt = 16000
    n_mels: PositiveInt = LogMelParams.n_mels
    frames: PositiveInt = LogMelParams.frames
    n_fft: PositiveInt | None = None
    hop_length: PositiveInt | None = None
    standardize: bool = True

    def params(self) -> LogMelParams:
        base, scale = LogMelParams(), self.sample_rate / LogMelParams.sample_rate
        return LogMelParams(sample_rate=self.sample_rate, n_fft=self.n_fft or max(16, round(base.n_fft * scale)),
                            hop_length=self.hop_length or max(1, round(base.hop_length * scale)),
                            n_mels=self.n_mels, frames=self.frames)


class ManifestOptions(_Options):
    path: str
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    label_column: str = "label"
    split_column: str = "split"
    modalities: list[str] | None = None
    kinds: dict[str, Kind] | None = None
    classes: list[str] | None = None
    audio: ManifestAudioOptions = ManifestAudioOptions()
    image_size: tuple[PositiveInt, PositiveInt] | None = None


@dataclass
class Row:
    where: str  # "<manifest> row 7" (CSV) or "<manifest> line 7" (JSONL), to start error messages
    pos: str  # "row 7" / "line 7"
    cells: dict[str, str]


# --- reading the manifest ----------------------------------------------------------------------
def _read_csv(path: Path) -> tuple[list[str], list[Row]]:
    rows: list[Row] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise DataError(f"{path}: empty manifest (no header row)") from None
            for i, name in enumerate(header):
                if not name:
                    raise DataError(f"{path} row 1: column {i + 1} has no name")
                if header.index(name) != i:
                    raise DataError(f"{path} row 1: column {name!r} appears twice")
            while True:
                try:
                    record = next(reader)
                except StopIteration:
                    break
                except csv.Error as err:
                    raise DataError(f"{path} row {reader.line_num}: malformed CSV ({err})") from None
                if not record:
                    continue  # a blank line
                where = f"{path} row {reader.line_num}"
                if len(record) != len(header):
                    raise DataError(f"{where}: {len(record)} columns but the header has {len(header)}")
                rows.append(Row(where, f"row {reader.line_num}", {h: v.strip() for h, v in zip(header, record)}))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    except csv.Error as err:
        raise DataError(f"{path}: malformed CSV ({err})") from None
    return header, rows


def _cell(where: str, key: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    raise DataError(f"{where}: column {key}: expected a string, got {json.dumps(value)[:60]}")


def _read_jsonl(path: Path) -> tuple[list[str], list[Row]]:
    header: list[str] = []
    rows: list[Row] = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path} line {number}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{where}: invalid JSON, truncated or malformed "
                                    f"({err.msg} at column {err.colno})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
                for key in obj:
                    if key not in header:
                        header.append(key)
                rows.append(Row(where, f"line {number}", {key: _cell(where, key, v) for key, v in obj.items()}))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    for row in rows:
        for key in header:
            row.cells.setdefault(key, "")
    return header, rows


# --- loading the files -------------------------------------------------------------------------
def _file(manifest: Path, row: Row, column: str, cell: str) -> Path:
    p = Path(cell).expanduser()
    if not p.is_absolute():
        inside = os.path.normpath(os.path.join(os.path.abspath(manifest.parent), p))
        if os.path.commonpath([inside, os.path.abspath(manifest.parent)]) != os.path.abspath(manifest.parent):
            raise DataError(f"{row.where}: column {column}: {cell} leads out of the manifest's folder "
                            f"{manifest.parent}; paths are relative to it (give an absolute path to use another)")
        p = Path(inside)
    if not p.is_file():
        raise DataError(f"{row.where}: column {column}: no such file {cell}")
    return p


def _load_wave(file: Path, row: Row, column: str, cell: str, sample_rate: int) -> np.ndarray:
    import soundfile

    truncated = wav_truncation(file)
    if truncated:
        raise DataError(f"{row.where}: column {column}: WAV file {cell} is cut short (its data chunk declares "
                        f"{truncated[0]} bytes, {truncated[1]} are present)")
    try:
        wave, rate = soundfile.read(file, dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises its own error types for corrupt files
        raise DataError(f"{row.where}: column {column}: cannot decode audio {cell} ({err})") from None
    if wave.shape[0] == 0:
        raise DataError(f"{row.where}: column {column}: empty recording {cell}")
    wave = wave.mean(axis=1)
    if not np.isfinite(wave).all():
        raise DataError(f"{row.where}: column {column}: {cell} has NaN or infinite samples")
    if rate != sample_rate:
        import librosa

        wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate)
    return wave.astype(np.float32)


def _load_image(file: Path, row: Row, column: str, cell: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(file) as img:
            img.load()
            if img.mode in ("1", "L", "LA"):
                arr = np.asarray(img.convert("L"), dtype=np.float32)[None] / 255.0
            elif img.mode.startswith("I"):  # 16/32-bit grayscale
                arr = np.clip(np.asarray(img, dtype=np.float32)[None] / 65535.0, 0.0, 1.0)
            elif img.mode == "F":
                arr = np.clip(np.asarray(img, dtype=np.float32)[None], 0.0, 1.0)
            else:  # RGB, RGBA, P, CMYK, YCbCr, ...
                arr = np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    except Exception as err:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise DataError(f"{row.where}: column {column}: cannot decode image {cell} ({err})") from None
    return np.ascontiguousarray(arr)


def _load_npy(file: Path, row: Row, column: str, cell: str) -> np.ndarray:
    try:
        arr = np.load(file, allow_pickle=False)
    except Exception as err:
        raise DataError(f"{row.where}: column {column}: cannot decode array {cell} ({err})") from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise DataError(f"{row.where}: column {column}: {cell} is not a single .npy array")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{row.where}: column {column}: {cell} has dtype {arr.dtype}, expected numbers")
    arr = arr.astype(np.float32).reshape(arr.shape or (1,))
    if not np.isfinite(arr).all():
        raise DataError(f"{row.where}: column {column}: {cell} has NaN or infinite values")
    return arr


def _stack(arrays: list[np.ndarray | None], rows: list[Row], column: str, cells: list[str],
           hint: str = "") -> torch.Tensor:
    """[N, *shape] with zeros where the sample lacks the modality; all shapes must agree."""
    first = next(i for i, a in enumerate(arrays) if a is not None)
    shape = arrays[first].shape
    for i, a in enumerate(arrays):
        if a is not None and a.shape != shape:
            raise DataError(f"{rows[i].where}: column {column}: {cells[i]} has shape {list(a.shape)} but "
                            f"{cells[first]} ({rows[first].pos}) has {list(shape)}{hint}")
    out = np.zeros((len(arrays), *shape), dtype=np.float32)
    for i, a in enumerate(arrays):
        if a is not None:
            out[i] = a
    return torch.from_numpy(out)


def _images(arrays: list[np.ndarray | None], size) -> list[np.ndarray | None]:
    """Resize to ``size`` (bilinear, antialiased) and promote grayscale to RGB when colour is mixed in."""
    channels = max(a.shape[0] for a in arrays if a is not None)
    out = []
    for a in arrays:
        if a is not None:
            if size is not None and tuple(a.shape[1:]) != tuple(size):
                t = torch.from_numpy(a)[None]
                a = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False,
                                  antialias=True)[0].clamp_(0, 1).numpy()
            if a.shape[0] < channels:
                a = np.repeat(a, channels, axis=0)
        out.append(a)
    return out


def _log_mel(waves: list[np.ndarray | None], params: LogMelParams) -> torch.Tensor:
    """[N, 1, n_mels, frames]; rows without audio stay zero."""
    out = torch.zeros(len(waves), 1, params.n_mels, params.frames)
    present = [i for i, w in enumerate(waves) if w is not None]
    transform = LogMel(params)
    for start in range(0, len(present), 256):
        chunk = present[start:start + 256]
        batch = torch.from_numpy(np.stack([fix_length(waves[i], params.num_samples) for i in chunk]))
        out[chunk] = transform(batch).unsqueeze(1)
    return out


@register_dataset("manifest", ManifestOptions)
def build_manifest(root, options: ManifestOptions, seed: int):
    path = resolve(root, options.path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (manifest path, relative paths are under the data root {root})")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header, rows = _read_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        header, rows = _read_jsonl(path)
    else:
        raise DataError(f"{path}: unknown manifest format {path.suffix!r} (expected .csv or .jsonl)")
    if not rows:
        raise DataError(f"{path}: the manifest lists no samples")
    if options.label_column not in header:
        raise DataError(f"{path}: no label column {options.label_column!r} (columns: {', '.join(header)})")

    # labels and split first: they are cheap, and their errors should not wait for decoding.
    texts = [r.cells[options.label_column] for r in rows]
    describe = lambda i: rows[i].pos  # noqa: E731
    if options.classes is None and all(INTEGER.match(t) for t in texts if t):
        raw: list = [int(t) if t else None for t in texts]
    else:
        raw = [t if t else None for t in texts]  # an empty cell: unlabelled
    labels, classes = encode_labels(str(path), raw, options.classes, describe)
    has_split = options.split_column in header
    if has_split:
        is_test = parse_split(str(path), np.array([r.cells[options.split_column] for r in rows]), describe)
        check_unlabelled_train(f"{path}", labels, is_test, describe)
        split_used = f"column {options.split_column}"
    else:
        is_test = stratified_test_mask(labels, options.test_fraction, seed)
        split_used = f"stratified test_fraction={options.test_fraction} seed={seed}"

    reserved = {options.label_column} | ({options.split_column} if has_split else set())
    if options.modalities is not None:
        for m in options.modalities:
            if m not in header:
                raise DataError(f"{path}: no column {m!r} (columns: {', '.join(header)})")
            if m in reserved:
                raise DataError(f"{path}: column {m!r} is the label or split column, not a modality")
        columns = list(options.modalities)
    else:
        columns = [h for h in header if h not in reserved]
    if not columns:
        raise DataError(f"{path}: no modality columns (only {', '.join(header)})")
    for m in options.kinds or {}:
        if m not in columns:
            raise DataError(f"{path}: kinds names {m!r}, which is not a modality column ({', '.join(columns)})")

    # the file type of each column, from its cells' suffixes
    column_types: dict[str, str] = {}
    for column in columns:
        if column in RESERVED_KEYS:
            raise DataError(f"{path}: column {column!r} is a reserved name and cannot be a modality")
        kind, first = None, None
        for row in rows:
            cell = row.cells[column]
            if not cell:
                continue
            t = FILE_TYPES.get(Path(cell).suffix.lower())
            if t is None:
                raise DataError(f"{row.where}: column {column}: {cell!r} is not a {SUFFIXES} file "
                                "(name the modality columns in `modalities` to ignore other columns)")
            if kind is None:
                kind, first = t, row
            elif t != kind:
                raise DataError(f"{row.where}: column {column}: {cell} is {t} but {first.pos} "
                                f"of the column holds {kind}")
        if kind is None:
            raise DataError(f"{path}: column {column!r} has no files (every cell is empty)")
        column_types[column] = kind

    params = options.audio.params()
    modalities, present, kinds, described, stats = {}, {}, {}, {}, {}
    for column, ftype in column_types.items():
        cells = [r.cells[column] for r in rows]
        loaded: list[np.ndarray | None] = []
        for row, cell in zip(rows, cells):
            if not cell:
                loaded.append(None)
                continue
            file = _file(path, row, column, cell)
            if ftype == "audio":
                loaded.append(_load_wave(file, row, column, cell, params.sample_rate))
            elif ftype == "image":
                loaded.append(_load_image(file, row, column, cell))
            else:
                loaded.append(_load_npy(file, row, column, cell))
        mask = torch.tensor([a is not None for a in loaded])
        if ftype == "audio":
            tensor = _log_mel(loaded, params)
            if options.audio.standardize:
                ref = tensor[mask & torch.from_numpy(~is_test)]
                ref = ref if len(ref) else tensor[mask]
                mean, std = ref.mean(), ref.std().clamp_min(1e-6)
                tensor[mask] = (tensor[mask] - mean) / std
                stats[column] = {"mean": float(mean), "std": float(std)}
        elif ftype == "image":
            tensor = _stack(_images(loaded, options.image_size), rows, column, cells,
                            "" if options.image_size else "; set image_size: [H, W] to resize")
        else:
            tensor = _stack(loaded, rows, column, cells)
        modalities[column] = tensor
        present[column] = mask
        kinds[column] = (options.kinds or {}).get(column) or (
            ftype if ftype in ("audio", "image") else guess_kind(tensor.shape[1:]))
        described[column] = {"kind": kinds[column], "files": ftype, "shape": list(tensor.shape[1:]),
                             "present": int(mask.sum())}

    num_classes = len(classes) if classes is not None else max(int(labels.max()) + 1, 0)
    labels_t = torch.from_numpy(labels)
    full = MultimodalDataset(modalities, labels_t, num_classes=num_classes, kinds=kinds, present=present,
                             name=path.name)
    out = [full.subset(np.flatnonzero(sel), f"{path.name}/{part}") for part, sel in (("train", ~is_test), ("test", is_test))]
    info = {"dataset": "manifest", "path": str(path), "format": "csv" if suffix == ".csv" else "jsonl",
            "split": split_used, "num_classes": num_classes, "modalities": described}
    if classes is not None:
        info["classes"] = classes
    if options.image_size is not None and "image" in column_types.values():
        info["image_size"] = list(options.image_size)
    if "audio" in column_types.values():
        info["audio"] = {**params.to_dict(), "standardize": options.audio.standardize}
    if stats:
        info["standardise"] = stats
    if (labels < 0).any():
        info["unlabelled"] = int((labels < 0).sum())
    return out[0], out[1], info
