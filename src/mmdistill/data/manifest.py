"""Bring your own data as files listed in a manifest: dataset ``manifest``.

The manifest is a CSV file (``.csv``, with a header row) or a JSON-lines file (``.jsonl``/``.ndjson``,
one object per line). Besides the label column (``label_column``) and the optional split column
(``split_column``, values ``train``/``val``/``test`` or 0/1/2, :mod:`mmdistill.data.split`; without it ``test_fraction`` of each class is held out
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

Derived modalities: ``modalities`` may instead map each modality name to its source column and
transform, so that several representations of one file reach different models (a wav2vec2
teacher on the waveform, a CNN student on the log-mel of the same recording)::

    modalities:
      audio: {column: wav}                                      # log-mel (the default for audio)
      waveform: {column: wav, transform: waveform, seconds: 1.0}  # [samples] raw audio
      text: {column: transcript, transform: text, tokenizer: tok/, max_length: 32}

``ge2e``: the front end of the pretrained GE2E speaker encoder (model kind ``pretrained``,
:mod:`.ge2e`): ``[40, frames]`` mel frames of the recording at 16 kHz, cut or padded to
``seconds`` (default 1.6 here). ``waveform``: ``seconds * audio.sample_rate`` samples (cut or zero-padded; onset kept),
standardised per recording (zero mean, unit variance, as wav2vec2's feature extractor does) unless
``normalize`` is false. ``text``: the cells are the strings themselves, tokenised as
:mod:`mmdistill.data.text` describes (``[2, max_length]``: ids, attention mask); the tokenizer
directory is taken relative to the data root unless absolute.

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
from typing import Annotated, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
import pydantic
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, StrictBool

from ..options import PositiveInt
from ..errors import DataError
from .batch import RESERVED_KEYS
from .audio import read_wave
from .dataset import MultimodalDataset, check_kind, guess_kind
from .ge2e import GE2EParams, describe_ge2e, ge2e_features
from .npz import Kind, encode_labels, stratified_test_mask
from .text import load_tokenizer, tokenize
from .registry import register_dataset
from .root import find_path, resolve
from .split import TEST, TRAIN, apply_split, check_unlabelled_train, parse_split
from .source import DatasetOptions
from .transforms import LogMel, LogMelParams, describe_log_mel, fix_length

FILE_TYPES = {".wav": "audio", ".flac": "audio", ".png": "image", ".jpg": "image", ".jpeg": "image", ".npy": "npy"}
SUFFIXES = ", ".join(FILE_TYPES)
INTEGER = re.compile(r"^[+-]?\d+$")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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


class ManifestModality(_Options):
    """One modality read from a column: ``transform`` defaults to the column's file type (audio:
    ``logmel``); ``waveform`` and ``text`` derive other representations (see the module doc)."""

    column: str | None = None  # default: the modality's name
    transform: Literal["logmel", "waveform", "text", "ge2e"] | None = None
    seconds: PositiveFloat = 1.0  # waveform length (ge2e: 1.6 unless given)
    normalize: bool = True  # waveform: zero mean, unit variance per recording
    tokenizer: str | None = None  # text: a local tokenizer directory
    max_length: PositiveInt = 64  # text: tokens per sample

    @pydantic.model_validator(mode="before")
    @classmethod
    def _ge2e_window(cls, value):  # ge2e: the encoder's 1.6 s window unless a length is given
        if isinstance(value, dict) and value.get("transform") == "ge2e" and "seconds" not in value:
            return {**value, "seconds": 1.6}
        return value

    @pydantic.model_validator(mode="after")
    def _tokenizer_for_text(self):
        if self.transform == "text" and self.tokenizer is None:
            raise ValueError("tokenizer: transform text needs a tokenizer directory")
        if self.tokenizer is not None and self.transform != "text":
            raise ValueError("tokenizer: only used with transform: text")
        return self


class ManifestOptions(DatasetOptions):
    PATHS: ClassVar[dict[str, str]] = {"path": "file", "modalities.*.tokenizer": "folder"}
    path: str
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    label_column: str = "label"
    split_column: str = "split"
    # a list of columns (each a modality of the same name), or modality -> its column and transform
    modalities: dict[str, ManifestModality] | None = None
    kinds: dict[str, Kind] | None = None
    classes: list[str] | None = None
    audio: ManifestAudioOptions = ManifestAudioOptions()
    image_size: tuple[PositiveInt, PositiveInt] | None = None
    # (x - mean) / std with the training split's statistics: auto = feature vectors (.npy columns of
    # 1-D arrays), per feature (see mmdistill.data.standardize); true: every modality; false: none
    standardize: Literal["auto"] | StrictBool = "auto"

    @pydantic.field_validator("modalities", mode="before")
    @classmethod
    def _list_as_columns(cls, value):  # [a, b]: modalities a and b from the columns of those names
        if isinstance(value, list) and all(isinstance(m, str) for m in value):
            return {m: {} for m in value}
        return value

    @classmethod
    def describe(cls, modality, spec, info, options):
        ge2e = ((info.get("modalities") or {}).get(modality) or {}).get("ge2e")
        if ge2e:
            return {"description": describe_ge2e(ge2e, spec.shape), "ge2e": ge2e}
        if spec.kind == "audio" and "audio" in info:
            return {"description": "audio file: " + describe_log_mel(info["audio"]),
                    "log_mel": {k: v for k, v in info["audio"].items() if k != "standardize"}}
        if spec.kind == "image":
            return {"description": f"image file decoded to [0, 1], channels first, resized (bilinear, antialiased) "
                                   f"to {info.get('image_size') or list(spec.shape[1:])} -> {list(spec.shape)}"}
        return None


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


def _waveforms(waves: list[np.ndarray | None], length: int, normalize: bool) -> torch.Tensor:
    """[N, length] waveforms cut or zero-padded to ``length``; rows without audio stay zero."""
    out = np.zeros((len(waves), length), dtype=np.float32)
    for i, w in enumerate(waves):
        if w is not None:
            w = fix_length(w, length)
            out[i] = (w - w.mean()) / np.sqrt(w.var() + 1e-7) if normalize else w
    return torch.from_numpy(out)


def _ge2e(waves: list[np.ndarray | None], rate: int, seconds: float) -> torch.Tensor:
    """[N, 40, frames] GE2E front-end features (:mod:`.ge2e`) of waves read at ``rate`` (resampled
    to 16 kHz when it differs); rows without audio stay zero."""
    params = GE2EParams(seconds=seconds)
    if rate != params.sample_rate:
        import librosa

        waves = [None if w is None else librosa.resample(w, orig_sr=rate, target_sr=params.sample_rate)
                 for w in waves]
    return ge2e_features(waves, params)


@register_dataset("manifest")
def build_manifest(root, options: ManifestOptions, seed: int):
    path = find_path(options.path, root, what="manifest path")
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
        codes = parse_split(f"{path}: column {options.split_column}",
                            np.array([r.cells[options.split_column] for r in rows]), lambda i: f"{path} {describe(i)}")
        check_unlabelled_train(codes, labels, lambda i: f"{path} {describe(i)}")
        split_used = f"column {options.split_column}"
    else:
        codes = np.where(stratified_test_mask(labels, options.test_fraction, seed), TEST, TRAIN)
        split_used = f"stratified test_fraction={options.test_fraction} seed={seed}"
    is_test = codes == TEST

    reserved = {options.label_column} | ({options.split_column} if has_split else set())
    # modality -> its source (column, transform options)
    if options.modalities is not None:
        sources = {m: (spec.column or m, spec) for m, spec in options.modalities.items()}
    else:
        sources = {h: (h, ManifestModality()) for h in header if h not in reserved}
    for m, (column, _) in sources.items():
        if column not in header:
            raise DataError(f"{path}: no column {column!r} (columns: {', '.join(header)})")
        if column in reserved:
            raise DataError(f"{path}: column {column!r} is the label or split column, not a modality")
        if m in RESERVED_KEYS:
            raise DataError(f"{path}: {m!r} is a reserved name and cannot be a modality")
    columns = list(sources)
    if not columns:
        raise DataError(f"{path}: no modality columns (only {', '.join(header)})")
    for m in options.kinds or {}:
        if m not in columns:
            raise DataError(f"{path}: kinds names {m!r}, which is not a modality column ({', '.join(columns)})")

    # the file type of each column read as files, from its cells' suffixes (text columns hold strings)
    column_types: dict[str, str] = {}
    for column in dict.fromkeys(c for c, spec in sources.values() if spec.transform != "text"):
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
    for m, (column, spec) in sources.items():
        if spec.transform in ("logmel", "waveform", "ge2e") and column_types[column] != "audio":
            raise DataError(f"{path}: modality {m!r}: transform {spec.transform} needs an audio column, "
                            f"{column!r} holds {column_types[column]} files")

    params = options.audio.params()
    modalities, present, kinds, described, stats = {}, {}, {}, {}, {}
    files: dict[str, list[np.ndarray | None]] = {}  # column -> decoded files, read once per column
    for name, (column, spec) in sources.items():
        cells = [r.cells[column] for r in rows]
        if spec.transform == "text":
            tokenizer = load_tokenizer(resolve(root, spec.tokenizer))
            texts = [cell or None for cell in cells]
            mask = torch.tensor([t is not None for t in texts])
            if not mask.any():
                raise DataError(f"{path}: column {column!r} has no text (every cell is empty)")
            modalities[name], present[name], kinds[name] = tokenize(texts, tokenizer, spec.max_length), mask, "text"
            described[name] = {"kind": "text", "column": column, "tokenizer": spec.tokenizer,
                               "shape": [2, spec.max_length], "present": int(mask.sum())}
            continue
        ftype = column_types[column]
        if column not in files:
            loaded: list[np.ndarray | None] = []
            for row, cell in zip(rows, cells):
                if not cell:
                    loaded.append(None)
                    continue
                file = _file(path, row, column, cell)
                if ftype == "audio":
                    loaded.append(read_wave(file, params.sample_rate, where=f"{row.where}: column {column}: {cell}"))
                elif ftype == "image":
                    loaded.append(_load_image(file, row, column, cell))
                else:
                    loaded.append(_load_npy(file, row, column, cell))
            files[column] = loaded
        loaded = files[column]
        mask = torch.tensor([a is not None for a in loaded])
        if spec.transform == "waveform":
            tensor = _waveforms(loaded, max(1, round(spec.seconds * params.sample_rate)), spec.normalize)
            modalities[name], present[name], kinds[name] = tensor, mask, "waveform"
            described[name] = {"kind": "waveform", "column": column, "files": ftype, "shape": list(tensor.shape[1:]),
                               "sample_rate": params.sample_rate, "normalize": spec.normalize,
                               "present": int(mask.sum())}
            continue
        if spec.transform == "ge2e":
            tensor = _ge2e(loaded, params.sample_rate, spec.seconds)
            modalities[name], present[name], kinds[name] = tensor, mask, "sequence"
            described[name] = {"kind": "sequence", "column": column, "files": ftype, "transform": "ge2e",
                               "shape": list(tensor.shape[1:]), "ge2e": GE2EParams(seconds=spec.seconds).to_dict(),
                               "present": int(mask.sum())}
            continue
        if ftype == "audio":
            tensor = _log_mel(loaded, params)
            if options.audio.standardize:
                ref = tensor[mask & torch.from_numpy(~is_test)]
                ref = ref if len(ref) else tensor[mask]
                mean, std = ref.mean(), ref.std().clamp_min(1e-6)
                tensor[mask] = (tensor[mask] - mean) / std
                stats[name] = {"mean": float(mean), "std": float(std)}
        elif ftype == "image":
            tensor = _stack(_images(loaded, options.image_size), rows, column, cells,
                            "" if options.image_size else "; set image_size: [H, W] to resize")
        else:
            tensor = _stack(loaded, rows, column, cells)
        modalities[name] = tensor
        present[name] = mask
        kinds[name] = (options.kinds or {}).get(name) or (
            ftype if ftype in ("audio", "image") else guess_kind(tensor.shape[1:]))
        if name in (options.kinds or {}):
            check_kind(str(path), name, kinds[name], tensor.shape[1:])
        described[name] = {"kind": kinds[name], "files": ftype, "shape": list(tensor.shape[1:]),
                           "present": int(mask.sum())}
        if column != name:
            described[name]["column"] = column

    num_classes = len(classes) if classes is not None else max(int(labels.max()) + 1, 0)
    labels_t = torch.from_numpy(labels)
    full = MultimodalDataset(modalities, labels_t, num_classes=num_classes, kinds=kinds, present=present,
                             name=path.name)
    out = apply_split(full, codes, path.name)
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
