"""Export a checkpoint to a deployable folder, check it against PyTorch, quantise it, predict with it.

An export folder holds ``model.onnx`` (or ``model.pt`` for TorchScript), ``model.json`` (inputs,
preprocessing and standardisation statistics, class names, opset, accuracy, parity),
``mmdistill_runtime.py``, the torch-free ONNX Runtime loader (:mod:`mmdistill.export.runtime`),
and ``run.json``, its run record (kind ``export``). The export is built and checked in a temporary
folder and moved into ``--out`` under the run directory's lock (:class:`~mmdistill.rundir.RunDir`),
so a failed export leaves nothing behind and ``--overwrite`` replaces only an earlier export.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError, MMDistillError
from ..rundir import LOCK, METRICS, MODEL_JSON, RECORD, RunDir, check_run_dir, write_text
from .onnx import export_onnx, export_torchscript, input_names, onnx_opset
from .runtime import PRESENT_PREFIX, ExportedModel, softmax

FORMAT = "mmdistill-export/1"
TOLERANCE = 1e-4
RUNTIME_FILE = "mmdistill_runtime.py"


class ParityError(MMDistillError):
    """The exported model's logits differ from PyTorch's by more than the tolerance."""


def class_names(dataset: str, info: Mapping, num_classes: int) -> list[str]:
    """The dataset's class names when it records them, else the class indices (digits: "0".."9")."""
    if info.get("classes"):
        return [str(c) for c in info["classes"]]
    return [str(i) for i in range(num_classes)]


def dataset_arrays(dataset, modalities: Sequence[str], limit: int | None = None):
    """(inputs, present, labels) of a MultimodalDataset as numpy arrays."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    inputs = {m: dataset.modalities[m][:n].numpy() for m in modalities}
    present = {m: dataset.present[m][:n].numpy() for m in modalities}
    return inputs, present, dataset.labels[:n].numpy()


# --- preprocessing description -----------------------------------------------------------------
def describe_preprocessing(cfg, info: Mapping, specs: Mapping) -> dict:
    """What a deployer must do to a raw sample to get the model's input, per modality: what the
    dataset's options model says (:meth:`~mmdistill.data.source.DatasetOptions.describe`), then
    the standardisation the training run recorded."""
    from ..data import DATASETS

    name, options = cfg.name, cfg.options
    describe = getattr(DATASETS.options(name), "describe", None) if name in DATASETS else None
    stats = info.get("standardise", {})
    out = {}
    for m, spec in specs.items():
        entry: dict = {"kind": spec.kind, "shape": list(spec.shape)}
        entry.update((describe(m, spec, info, options) if describe else None)
                     or {"description": f"{spec.kind} array of shape {list(spec.shape)} as dataset {name!r} stores it"})
        entry["standardise"] = stats.get(m)
        if entry["standardise"]:
            entry["description"] += "; then (x - mean) / std with the training split's statistics below"
        out[m] = entry
    return {"dataset": name, "options": options, "data_info": dict(info), "modalities": out}


# --- parity ------------------------------------------------------------------------------------
@torch.no_grad()
def _torch_logits(model: nn.Module, inputs, present) -> np.ndarray:
    batch = {m: torch.from_numpy(x) for m, x in inputs.items()}
    batch["present"] = {m: torch.from_numpy(p) for m, p in present.items()}
    return model(batch).float().cpu().numpy()


def parity_cases(inputs: Mapping, present: Mapping) -> dict[str, tuple[dict, dict]]:
    """``{"all present": ..., "without <m>": ...}``: each absent modality zeroed and marked absent."""
    cases = {"all present": (dict(inputs), {m: np.ones_like(p) for m, p in present.items()})}
    for m in inputs:
        x = dict(inputs)
        x[m] = np.zeros_like(inputs[m])
        mask = {k: (np.zeros_like(p) if k == m else np.ones_like(p)) for k, p in present.items()}
        cases[f"without {m}"] = (x, mask)
    return cases


def check_parity(model: nn.Module, run: Callable[[dict, dict], np.ndarray], inputs: Mapping, present: Mapping,
                 tolerance: float = TOLERANCE) -> dict[str, float]:
    """Max abs logit difference between ``model`` and ``run(inputs, present)`` per case; raises
    :class:`ParityError` naming the worst case above ``tolerance``."""
    model = model.cpu().eval()
    diffs = {}
    for case, (x, mask) in parity_cases(inputs, present).items():
        diffs[case] = float(np.abs(_torch_logits(model, x, mask) - run(x, mask)).max())
    worst = max(diffs, key=diffs.get)
    if not diffs[worst] <= tolerance:
        raise ParityError(f"exported model differs from PyTorch by {diffs[worst]:.3g} (> {tolerance:g}) "
                          f"in case '{worst}' on {len(next(iter(inputs.values())))} real samples")
    return diffs


def _torchscript_runner(path: Path, modalities: Sequence[str]):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path))

    @torch.no_grad()
    def run(x, mask):
        args = [torch.from_numpy(x[m]) for m in modalities] + [torch.from_numpy(mask[m]) for m in modalities]
        return module(*args).numpy()

    return run


# --- quantisation ------------------------------------------------------------------------------
def quantize_int8(fp32: Path, out: Path, inputs: Mapping, present: Mapping, *, batch: int = 64) -> Path:
    """Static int8 quantisation of the convolutions and matmuls (ONNX Runtime, QDQ, per-channel
    weights, min-max calibration) calibrated on ``inputs``: each batch with every modality present and with each one absent."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    modalities = list(inputs)
    n = len(next(iter(inputs.values())))
    feeds = []
    for start in range(0, n, batch):
        x = {m: inputs[m][start:start + batch] for m in modalities}
        p = {m: present[m][start:start + batch] for m in modalities}
        for xs, masks in parity_cases(x, p).values():
            feeds.append({**xs, **{PRESENT_PREFIX + m: masks[m] for m in modalities}})

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix="mmdistill-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        # only the matmuls and convolutions: the masked attention scores hold -inf, which has no int8 scale
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    return out


# --- export ------------------------------------------------------------------------------------
def _checkpoint_record(path: Path, payload: dict) -> dict:
    meta = payload["meta"]
    record = {"path": str(path), "role": meta.get("role"), "seed": meta.get("seed"), "epoch": meta.get("epoch"),
              "val_accuracy": (meta.get("metrics") or {}).get("val_accuracy")}
    metrics = path.parent / METRICS
    if metrics.is_file():
        try:
            record["test_accuracy"] = json.loads(metrics.read_text()).get("accuracy")
        except (ValueError, AttributeError):
            pass
    return record


def export_files(folder: Path) -> set[str] | None:
    """The names of the files an export wrote into ``folder`` (``model.json`` and its ``files``, its
    run record and lock); None when ``folder`` holds no mmdistill export's ``model.json``."""
    try:
        meta = json.loads((folder / MODEL_JSON).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        return None
    return {MODEL_JSON, RECORD, LOCK, *(str(name) for name in meta["files"].values())}


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that :class:`~mmdistill.rundir.RunDir` would refuse (a folder a live run
    writes into; an existing one without ``overwrite``), and with ``overwrite`` one that is not an
    export folder holding only the files that export wrote (so replacing it deletes nothing of the user's)."""
    check_run_dir(out, overwrite=overwrite)
    if out.exists() and any(out.iterdir()):
        written = export_files(out)
        if written is None:
            raise ConfigError(f"--out {out}: exists and is not an mmdistill export folder; refusing to replace it")
        others = sorted(p.name for p in out.iterdir() if p.name not in written or p.is_symlink() or not p.is_file())
        if others:
            more = f" and {len(others) - 1} more" if len(others) > 1 else ""
            raise ConfigError(f"--out {out}: holds {others[0]}{more}, which no export wrote; --overwrite replaces "
                              "only an export's own files: move them or choose another folder")


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, format: str = "onnx", quantize: str | None = None,
                      data_root: str | None = None, tolerance: float | None = None, parity_samples: int = 256,
                      calibration_samples: int = 512, overwrite: bool = False, opset: int | None = None,
                      log: Callable[[str], None] = print, trust_code: bool = False) -> dict:
    """Export ``checkpoint`` to the folder ``out`` and return its ``model.json``.

    Parity with PyTorch is checked on ``parity_samples`` test samples with every modality present
    and with each one absent; above ``tolerance`` (default :data:`TOLERANCE`, 1e-4) it raises :class:`ParityError` and writes nothing.
    With ``quantize="int8"`` (ONNX only) a statically quantised ``model.int8.onnx`` is added,
    calibrated on ``calibration_samples`` training samples; test accuracy and latency of both
    are recorded under ``quantized``. ``trust_code``: run the code the checkpoint names (imports,
    factory); refused without it.
    """
    from ..checkpoint import load_checkpoint
    from ..checkpoint_data import checkpoint_data

    if format not in ("onnx", "torchscript"):
        raise ConfigError(f"--format {format}: expected onnx or torchscript")
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize {quantize}: only int8 is supported")
    if quantize and format != "onnx":
        raise ConfigError("--quantize int8: needs --format onnx (ONNX Runtime quantises ONNX models)")
    from ..guard import check_out, checkpoint_inputs

    checkpoint, out = Path(checkpoint), Path(out)
    tolerance = TOLERANCE if tolerance is None else tolerance
    check_out(out, checkpoint_inputs(checkpoint))
    model, payload = load_checkpoint(checkpoint, "cpu", trust_code=trust_code)
    check_out(out, checkpoint_inputs(checkpoint, payload, data_root=data_root))
    _prepare_out(out, overwrite)
    data_cfg, data = checkpoint_data(checkpoint, model, payload, data_root)
    modalities = list(model.modalities)
    specs = {m: payload["specs"][m] for m in modalities}
    classes = class_names(data_cfg.name, data.info, payload["num_classes"])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.part-"))
    tmp.chmod(0o755)
    try:
        start = time.perf_counter()
        files = {"runtime": RUNTIME_FILE}
        if format == "onnx":
            files["onnx"] = export_onnx(model, specs, tmp / "model.onnx", opset=opset).name
        else:
            files["torchscript"] = export_torchscript(model, specs, tmp / "model.pt").name
        log(f"exported {checkpoint} to {format} in {time.perf_counter() - start:.1f} s")
        shutil.copyfile(Path(__file__).with_name("runtime.py"), tmp / RUNTIME_FILE)
        meta = {
            "format": FORMAT, "export_format": format, "files": files, "modalities": modalities,
            "inputs": {m: {"shape": list(specs[m].shape), "dtype": "float32", "kind": specs[m].kind,
                           "batch_axis": 0} for m in modalities},
            "presence_inputs": {m: {"name": PRESENT_PREFIX + m, "dtype": "bool", "shape": ["batch"]}
                                for m in modalities},
            "input_order": input_names(modalities),
            "output": {"name": "logits", "dtype": "float32", "shape": ["batch", payload["num_classes"]]},
            "classes": classes, "num_classes": payload["num_classes"],
            "opset": onnx_opset(tmp / files["onnx"]) if format == "onnx" else None,
            "preprocessing": describe_preprocessing(data_cfg, data.info, specs),
            "checkpoint": _checkpoint_record(checkpoint, payload), "model_config": payload["model_config"],
            "versions": _versions(),
        }
        if payload.get("provenance"):  # pretrained weights: package, version, file hash, licence
            meta["provenance"] = payload["provenance"]
        _write(tmp / MODEL_JSON, meta)

        if format == "onnx":
            runtime = ExportedModel(tmp)
            run = runtime.logits
        else:
            runtime = None
            script = _torchscript_runner(tmp / files["torchscript"], modalities)
            run = lambda x, mask: script(x, mask)  # noqa: E731
        x, present, _ = dataset_arrays(data.test, modalities, parity_samples)
        diffs = check_parity(model, run, x, present, tolerance)
        meta["parity"] = {"tolerance": tolerance, "samples": len(next(iter(x.values()))), "split": "test",
                          "max_abs_diff": diffs}
        for case, d in diffs.items():
            log(f"parity {case:>20}: max |logits - PyTorch logits| = {d:.2e}")

        x, present, labels = dataset_arrays(data.test, modalities)
        torch_acc = float((_torch_logits(model, x, present).argmax(1) == labels).mean())
        meta["accuracy"] = {"split": "test", "samples": int(len(labels)), "pytorch": torch_acc,
                            format: float((run(x, present).argmax(1) == labels).mean())}
        if quantize:
            meta["quantized"] = _quantize(tmp, files, runtime, data, modalities, calibration_samples, log)
        _write(tmp / MODEL_JSON, meta)
        _prepare_out(out, overwrite)  # again: nothing but the old export's files is deleted
        with RunDir(out, kind="export", role=meta["checkpoint"]["role"], overwrite=overwrite,
                    config={"checkpoint": str(checkpoint), "format": format, "quantize": quantize}) as run:
            for part in sorted(tmp.iterdir()):
                part.replace(run / part.name)
    except OSError as err:  # e.g. a full disk: one line naming the export (nothing of it is left)
        if err.filename is None:
            err.filename = str(out)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _quantize(folder: Path, files: dict, fp32: ExportedModel, data, modalities, calibration_samples: int, log) -> dict:
    from .profile import onnx_latency

    rng = np.random.default_rng(0)
    idx = np.sort(rng.permutation(len(data.train))[:calibration_samples])
    calib = data.train.subset(idx)
    x, present, _ = dataset_arrays(calib, modalities)
    start = time.perf_counter()
    files["onnx_int8"] = quantize_int8(folder / files["onnx"], folder / "model.int8.onnx", x, present).name
    log(f"quantised to int8 on {len(idx)} training samples in {time.perf_counter() - start:.1f} s")
    meta = json.loads((folder / MODEL_JSON).read_text())
    _write(folder / MODEL_JSON, {**meta, "files": files})
    int8 = ExportedModel(folder, variant="int8")
    x, present, labels = dataset_arrays(data.test, modalities)
    report = {"method": "onnxruntime quantize_static, QDQ, int8 activations and per-channel int8 weights, "
                        "min-max calibration", "calibration_samples": int(len(idx)), "file": files["onnx_int8"],
              "bytes": (folder / files["onnx_int8"]).stat().st_size, "fp32_bytes": (folder / files["onnx"]).stat().st_size}
    for name, runtime, file in (("fp32", fp32, files["onnx"]), ("int8", int8, files["onnx_int8"])):
        acc = float((runtime.predict(x, present) == labels).mean())
        b1 = onnx_latency(folder / file, batch=1, threads=1, repeats=100, warmup=10)
        b64 = onnx_latency(folder / file, batch=64, threads=1, repeats=10, warmup=2)
        report[name] = {"accuracy": acc, "onnx_ms_b1": b1["p50_ms"], "onnx_p95_ms_b1": b1["p95_ms"],
                        "onnx_sps_b64": b64["samples_per_s"], "threads": 1}
    return report


def is_predictions(path: Path) -> bool:
    """Whether ``path`` is a predictions file (:func:`predict_export`'s JSON lines), which predict may replace."""
    from ..guard import first_line

    try:
        row = json.loads(first_line(path) or "null")
    except ValueError:
        return False
    return isinstance(row, dict) and {"index", "label", "pred", "prob"} <= set(row)


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _write(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


# --- predict -----------------------------------------------------------------------------------
def export_labels(labels: np.ndarray, data_classes: Sequence[str], export_classes: Sequence[str],
                  where) -> np.ndarray:
    """The data's labels (indices into ``data_classes``) as indices into the export's own classes,
    matched by name: data holding a subset of the classes, or naming them in another order, is
    scored against what the model predicts. A class the model does not know is an error naming it."""
    lookup = {name: i for i, name in enumerate(export_classes)}
    out = np.full(len(labels), -1, dtype=np.int64)
    for c in np.unique(labels[labels >= 0]):
        name = str(data_classes[int(c)])
        if name not in lookup:
            first = int(np.flatnonzero(labels == c)[0])
            raise DataError(f"{where}: sample {first} has class {name!r}, which the exported model does not know "
                            f"(its classes: {', '.join(export_classes)})")
        out[labels == c] = lookup[name]
    return out


def read_export_meta(export_dir: Path, variant: str = "fp32") -> dict:
    """An export folder's ``model.json``, every field :func:`predict_export` reads checked first:
    one :class:`ConfigError` naming the file and the field."""
    from ..checkpoint import check_standardise

    path = export_dir / MODEL_JSON
    if not path.is_file():
        raise ConfigError(f"{export_dir}: no {MODEL_JSON}; not an mmdistill export folder")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not JSON ({err})") from None

    def bad(field: str, why: str):
        return ConfigError(f"{path}: {field}: {why}")

    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise bad("format", f"expected {FORMAT!r}, got {meta.get('format')!r} (not an mmdistill export)")
    modalities = meta.get("modalities")
    if not isinstance(modalities, list) or not modalities or not all(isinstance(m, str) for m in modalities) \
            or len(set(modalities)) < len(modalities):
        raise bad("modalities", f"expected a list of distinct modality names, got {modalities!r}")
    inputs = meta.get("inputs")
    if not isinstance(inputs, dict):
        raise bad("inputs", f"expected {{modality: {{shape, ...}}}}, got {inputs!r}")
    for m in modalities:
        shape = (inputs.get(m) or {}).get("shape") if isinstance(inputs.get(m), dict) else None
        if not isinstance(shape, list) or not shape or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise bad(f"inputs.{m}.shape", f"expected a list of positive sizes, got {shape!r}")
    classes, n = meta.get("classes"), meta.get("num_classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes) \
            or len(set(classes)) < len(classes):
        raise bad("classes", f"expected a list of at least 2 distinct class names, got {classes!r}")
    if n != len(classes):
        raise bad("num_classes", f"{n!r}, but classes names {len(classes)}")
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise bad("files", f"expected {{role: file name}}, got {files!r}")
    for role, name in files.items():
        # a bare file name inside the export folder: never a path that leads elsewhere
        if Path(name).name != name or name in ("", ".", ".."):
            raise bad(f"files.{role}", f"{name!r} is not a file name inside the export folder")
    role = "onnx_int8" if variant == "int8" else "onnx"
    if role in files and not (export_dir / files[role]).is_file():
        raise bad(f"files.{role}", f"{export_dir / files[role]} is missing")
    pre = meta.get("preprocessing", {})
    mods = pre.get("modalities", {}) if isinstance(pre, dict) else None
    if not isinstance(mods, dict) or not all(isinstance(v, dict) for v in mods.values()):
        raise bad("preprocessing", "expected {modalities: {modality: {...}}}")
    stats = {m: e["standardise"] for m, e in mods.items() if e.get("standardise") is not None}
    problem = check_standardise(stats, {m: inputs[m]["shape"] for m in modalities if m in stats}) if stats else None
    if problem:
        raise bad("preprocessing.modalities", f"standardise: {problem}")
    ckpt = meta.get("checkpoint", {})
    if not isinstance(ckpt, dict):
        raise bad("checkpoint", f"expected a mapping, got {type(ckpt).__name__}")
    seed = ckpt.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise bad("checkpoint.seed", f"expected an integer >= 0, got {seed!r}")
    meta.setdefault("checkpoint", ckpt)
    return meta


def check_session(export_dir: Path, model: ExportedModel, meta: dict, variant: str) -> None:
    """The ONNX file ``model`` loaded against ``model.json``: one input per modality of the recorded
    shape and a presence input each, and logits over the recorded classes (not another model's file)."""
    graph = model.session
    got = {i.name: i.shape for i in graph.get_inputs()}
    name = meta["files"]["onnx_int8" if variant == "int8" else "onnx"]
    for m in model.modalities:
        shape = got.get(m)
        if shape is None or PRESENT_PREFIX + m not in got or [d for d in shape[1:]] != list(model.inputs[m]["shape"]):
            raise ConfigError(f"{export_dir / name}: does not match {MODEL_JSON} (input {m!r} of shape "
                              f"{model.inputs[m]['shape']} expected; the model takes {sorted(got)}); "
                              "not this export's model")
    outputs = {o.name: o.shape for o in graph.get_outputs()}
    if "logits" not in outputs or outputs["logits"][-1] != len(model.classes):
        raise ConfigError(f"{export_dir / name}: does not match {MODEL_JSON} (logits over {len(model.classes)} "
                          f"classes expected, the model outputs {outputs})")


def predict_export(export_dir: str | Path, data_config: str | Path, out: str | Path, *, split: str = "test",
                   data_root: str | None = None, variant: str = "fp32") -> dict:
    """Run an ONNX export on a split of the data a config names; write one JSON line per sample
    (``index``, ``label``, ``pred``, ``class``, ``prob``) to ``out``; return accuracy and counts.

    ``data_config``: a YAML recipe with a ``data:`` section (its ``seed`` and
    ``train.val_fraction``, when present, pick the split; otherwise the exported checkpoint's).
    """
    from ..config import DataConfig, beside_config, format_validation_error, read_yaml
    from ..data import build_data
    from ..guard import Input, check_out, data_inputs

    export_dir = Path(export_dir)
    inputs = [Input("export folder", export_dir), Input("data config", Path(data_config))]
    check_out(out, inputs, file_kind=is_predictions)
    meta = read_export_meta(export_dir, variant)
    try:
        model = ExportedModel(export_dir, variant=variant)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    check_session(export_dir, model, meta, variant)
    raw = read_yaml(data_config)
    seed = raw.get("seed", meta["checkpoint"].get("seed", 0))
    val_fraction = (raw.get("train") or {}).get("val_fraction", 0.0) if isinstance(raw.get("train"), dict) else 0.0
    import pydantic

    from ..options import MAX_SEED

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{data_config}: seed: expected an integer from 0 to {MAX_SEED} (got {seed!r})")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise ConfigError(f"{data_config}: train.val_fraction: expected a number in [0, 1) (got {val_fraction!r})")
    if not isinstance(raw.get("data"), dict):
        raise ConfigError(f"{data_config}: data: section missing (it names the data to predict on)")
    try:
        cfg = DataConfig.model_validate({**beside_config(raw["data"], Path(data_config).parent),
                                         **({"root": data_root} if data_root else {})})
    except pydantic.ValidationError as err:
        raise ConfigError(f"{data_config}: {format_validation_error(err, 'data')}") from None
    cfg.read_from(Path(data_config).parent)
    # the exported model's standardisation statistics (model.json), not ones recomputed from this data
    stored = {m: e["standardise"] for m, e in model.meta.get("preprocessing", {}).get("modalities", {}).items()
              if e.get("standardise")}
    check_out(out, inputs + data_inputs(cfg), file_kind=is_predictions)
    data = build_data(cfg, seed=seed, val_fraction=val_fraction, standardise=stored)
    dataset = data.split(split)
    for m in model.modalities:
        if m not in dataset.specs:
            raise DataError(f"{data_config}: the data has no modality {m!r}, which the exported model takes")
        if list(dataset.specs[m].shape) != list(model.inputs[m]["shape"]):
            raise DataError(f"{data_config}: modality {m!r} has shape {list(dataset.specs[m].shape)}, the exported "
                            f"model takes {model.inputs[m]['shape']}")
    x, present, labels = dataset_arrays(dataset, model.modalities)
    labels = export_labels(labels, class_names(cfg.name, data.info, data.num_classes), model.classes, data_config)
    logits = model.logits(x, present)
    pred, prob = logits.argmax(1), softmax(logits).max(1)
    out = Path(out)
    lines = [json.dumps({"index": i, "label": y, "pred": p, "class": model.classes[p], "prob": round(q, 6)}) + "\n"
             for i, (y, p, q) in enumerate(zip(labels.tolist(), pred.tolist(), prob.tolist()))]
    write_text(out, "".join(lines))  # atomic: a full disk leaves no half-written file
    return {"split": split, "samples": int(len(labels)), "accuracy": float((pred == labels).mean()),
            "variant": variant, "out": str(out)}
