"""What a model costs to run: parameters, MACs, exported size, latency and throughput.

Latency is measured on random inputs of the model's shapes with every modality present: the
median (p50) and 95th percentile of single calls after warm-up runs, and throughput as samples
per second over repeated calls at a larger batch. Eager PyTorch and ONNX Runtime are timed with
the same thread count, which is recorded (1 by default: the per-sample cost, without the noise
of a shared thread pool).
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import MMDistillError
from .onnx import cpu_eval_copy, example_inputs, export_onnx, input_names, input_shapes


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, specs: Mapping | None = None) -> int:
    """Multiply-accumulates of one forward pass on one sample with every modality present:
    the FLOPs ``torch.utils.flop_counter.FlopCounterMode`` counts (matmuls, convolutions), halved."""
    from torch.utils.flop_counter import FlopCounterMode

    from .onnx import PositionalModel

    shapes = input_shapes(model, specs)
    device = next(model.parameters()).device
    wrapper = PositionalModel(model)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            wrapper(*(t.to(device) for t in example_inputs(shapes, batch=1)))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def _timings(call: Callable[[], object], repeats: int, warmup: int, sync: Callable[[], None] | None = None) -> list[float]:
    for _ in range(warmup):
        call()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return times


def _summary(times: Sequence[float], batch: int) -> dict:
    t = np.asarray(times, dtype=np.float64)
    return {"p50_ms": round(float(np.percentile(t, 50)) * 1000, 4), "p95_ms": round(float(np.percentile(t, 95)) * 1000, 4),
            "samples_per_s": round(batch * len(t) / float(t.sum()), 1), "batch": batch, "repeats": len(t)}


@contextlib.contextmanager
def torch_threads(threads: int | None):
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def torch_latency(model: nn.Module, specs: Mapping | None = None, *, batch: int = 1, threads: int | None = 1,
                  repeats: int = 100, warmup: int = 10, device: str | torch.device | None = None) -> dict:
    """Eager PyTorch timing of ``model(batch_dict)``: ``{p50_ms, p95_ms, samples_per_s, batch, repeats}``."""
    from .onnx import PositionalModel

    device = torch.device(device) if device is not None else next(model.parameters()).device
    shapes = input_shapes(model, specs)
    wrapper = PositionalModel(model)
    args = tuple(t.to(device) for t in example_inputs(shapes, batch=batch))
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    was_training = model.training
    model.eval()
    try:
        with torch_threads(threads), torch.inference_mode():
            times = _timings(lambda: wrapper(*args), repeats, warmup, sync)
    finally:
        model.train(was_training)
    return _summary(times, batch)


def onnx_latency(path: str | Path, specs: Mapping | None = None, *, batch: int = 1, threads: int | None = 1,
                 repeats: int = 100, warmup: int = 10, provider: str = "CPUExecutionProvider") -> dict:
    """ONNX Runtime timing of one ``session.run``: ``{p50_ms, p95_ms, samples_per_s, batch, repeats}``.

    ``specs`` (``{modality: shape or ModalitySpec}``) defaults to the graph's own input shapes.
    """
    from .runtime import PRESENT_PREFIX, session

    sess = session(path, threads=threads, providers=[provider])
    if specs is None:
        shapes = {i.name: tuple(i.shape[1:]) for i in sess.get_inputs() if not i.name.startswith(PRESENT_PREFIX)}
    else:
        shapes = {m: tuple(getattr(s, "shape", s)) for m, s in specs.items()}
    graph_inputs = {i.name for i in sess.get_inputs()}
    shapes = {m: s for m, s in shapes.items() if m in graph_inputs}
    tensors = example_inputs(shapes, batch=batch)
    feed = {name: t.numpy() for name, t in zip(input_names(list(shapes)), tensors)}
    times = _timings(lambda: sess.run(["logits"], feed), repeats, warmup)
    return {**_summary(times, batch), "provider": provider}


def cuda_available() -> dict[str, bool]:
    import onnxruntime as ort

    return {"torch": torch.cuda.is_available(), "onnxruntime": "CUDAExecutionProvider" in ort.get_available_providers()}


def measure_cost(model: nn.Module, specs: Mapping | None = None, *, threads: int = 1, repeats: int = 100,
                 warmup: int = 10, large_batch: int = 64, large_repeats: int | None = None,
                 onnx_path: str | Path | None = None, eager: bool = True, cuda: bool | None = None) -> dict:
    """Every cost field of ``model``, flat and JSON-ready.

    ``params``, ``macs`` (per sample), ``onnx_bytes``; ``onnx_ms_b1`` / ``onnx_p95_ms_b1`` and
    ``onnx_sps_b64`` (ONNX Runtime, CPU, ``threads`` intra-op threads); the same with prefix
    ``torch_`` for eager PyTorch on CPU (``eager``); ``cuda_*`` ones when CUDA is available and
    ``cuda`` is not False. ``onnx_path``: an existing export to time (else the model is exported
    to a temporary file). ``large_batch`` replaces 64 in the throughput keys' batch.
    """
    for name, value, least in (("threads", threads, 1), ("repeats", repeats, 1), ("warmup", warmup, 0),
                               ("large_batch", large_batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name}: expected an integer >= {least} (got {value!r})")
    large_repeats = large_repeats or max(3, repeats // 10)
    shapes = input_shapes(model, specs)
    cpu_model = model if next(model.parameters()).device.type == "cpu" else cpu_eval_copy(model)
    tag = f"b{large_batch}"
    out: dict = {"params": count_params(model), "macs": count_macs(cpu_model, shapes), "threads": threads,
                 "timing_repeats": repeats, "timing_warmup": warmup}
    with tempfile.TemporaryDirectory(prefix="mmdistill-cost-") as tmp:
        path = Path(onnx_path) if onnx_path else export_onnx(cpu_model, shapes, Path(tmp) / "model.onnx")
        out["onnx_bytes"] = path.stat().st_size
        b1 = onnx_latency(path, shapes, batch=1, threads=threads, repeats=repeats, warmup=warmup)
        big = onnx_latency(path, shapes, batch=large_batch, threads=threads, repeats=large_repeats, warmup=2)
        out.update(onnx_ms_b1=b1["p50_ms"], onnx_p95_ms_b1=b1["p95_ms"], **{f"onnx_sps_{tag}": big["samples_per_s"]})
        use_cuda = cuda_available() if cuda is not False else {"torch": False, "onnxruntime": False}
        if use_cuda["onnxruntime"]:
            provider = "CUDAExecutionProvider"
            b1 = onnx_latency(path, shapes, batch=1, threads=threads, repeats=repeats, warmup=warmup, provider=provider)
            big = onnx_latency(path, shapes, batch=large_batch, threads=threads, repeats=large_repeats, warmup=2,
                               provider=provider)
            out.update(cuda_onnx_ms_b1=b1["p50_ms"], cuda_onnx_p95_ms_b1=b1["p95_ms"],
                       **{f"cuda_onnx_sps_{tag}": big["samples_per_s"]})
    if eager:
        b1 = torch_latency(cpu_model, shapes, batch=1, threads=threads, repeats=repeats, warmup=warmup)
        big = torch_latency(cpu_model, shapes, batch=large_batch, threads=threads, repeats=large_repeats, warmup=2)
        out.update(torch_ms_b1=b1["p50_ms"], torch_p95_ms_b1=b1["p95_ms"], **{f"torch_sps_{tag}": big["samples_per_s"]})
        if use_cuda["torch"]:
            gpu = cpu_eval_copy(model).cuda()
            b1 = torch_latency(gpu, shapes, batch=1, threads=threads, repeats=repeats, warmup=warmup)
            big = torch_latency(gpu, shapes, batch=large_batch, threads=threads, repeats=large_repeats, warmup=2)
            out.update(cuda_torch_ms_b1=b1["p50_ms"], cuda_torch_p95_ms_b1=b1["p95_ms"],
                       **{f"cuda_torch_sps_{tag}": big["samples_per_s"]})
    return out


#: (key, label, format) of the rows of the cost table, in order.
COST_ROWS = [
    ("params", "parameters", "{:,}"),
    ("macs", "MACs / sample", "{:,}"),
    ("onnx_bytes", "ONNX file (KB)", "kb"),
    ("torch_ms_b1", "PyTorch p50 ms, batch 1", "{:.3f}"),
    ("torch_p95_ms_b1", "PyTorch p95 ms, batch 1", "{:.3f}"),
    ("torch_sps_b64", "PyTorch samples/s, batch 64", "{:,.0f}"),
    ("onnx_ms_b1", "ONNX Runtime p50 ms, batch 1", "{:.3f}"),
    ("onnx_p95_ms_b1", "ONNX Runtime p95 ms, batch 1", "{:.3f}"),
    ("onnx_sps_b64", "ONNX Runtime samples/s, batch 64", "{:,.0f}"),
    ("cuda_torch_ms_b1", "PyTorch CUDA p50 ms, batch 1", "{:.3f}"),
    ("cuda_torch_sps_b64", "PyTorch CUDA samples/s, batch 64", "{:,.0f}"),
    ("cuda_onnx_ms_b1", "ONNX Runtime CUDA p50 ms, batch 1", "{:.3f}"),
    ("cuda_onnx_sps_b64", "ONNX Runtime CUDA samples/s, batch 64", "{:,.0f}"),
]


def format_cost(key: str, value) -> str:
    fmt = next((f for k, _, f in COST_ROWS if k == key), "{}")
    if value is None:
        return "-"
    return f"{value / 1024:,.1f}" if fmt == "kb" else fmt.format(value)


def run_label(checkpoint: str | Path) -> dict:
    """``{"run", "role"}`` of the run folder holding ``checkpoint``: the folder's name and the role
    its ``run.json`` records (None when it records none, or the file lies in no run folder)."""
    from ..rundir import describe

    folder = Path(checkpoint).parent
    try:
        record = describe(folder) or {}
    except MMDistillError:  # a newer record format: the folder's name still labels it
        record = {}
    return {"run": folder.name or str(folder), "role": record.get("role")}


def column_labels(models: Sequence[Mapping]) -> list[str]:
    """A label per profiled model (:func:`profile_checkpoints`' ``models``): its run folder's name,
    with the recorded role when it says more (``t1 (teacher)``), and the file name where two
    models come from the same run (``t1/best.pt``, ``t1/last.pt``)."""
    def base(m: Mapping) -> str:
        run, role = m.get("run") or Path(m["checkpoint"]).parent.name, m.get("role")
        return f"{run} ({role})" if role and role not in run else run

    labels = [base(m) for m in models]
    return [f"{label}/{Path(m['checkpoint']).name}" if labels.count(label) > 1 else label
            for label, m in zip(labels, models)]


def profile_checkpoints(checkpoints: Sequence[str | Path], out: str | Path, *, threads: int = 1, repeats: int = 200,
                        warmup: int = 20, cuda: bool | None = None, trust_code: bool = False,
                        overwrite: bool = False) -> dict:
    """Measure each checkpoint (:func:`measure_cost`) and write ``out/profile.json`` in a run
    directory (kind ``profile``: locked while written, an existing one replaced only with
    ``overwrite``); each model is labelled by its run (:func:`run_label`). With two or
    more, ``ratios`` says for each other model how many times cheaper it is than the first: the
    first's value over its value (its over the first's for the throughputs, ``*_sps_*``).
    ``cuda``: None times CUDA too when available, False never. ``trust_code``: run the code the
    checkpoints name (imports, factory); refused without it."""
    from ..checkpoint import load_checkpoint
    from ..guard import Input, check_out
    from ..rundir import PROFILE, RunDir, check_run_dir, write_json

    check_out(out, [Input("checkpoint", Path(c)) for c in checkpoints])
    check_run_dir(out, overwrite=overwrite)  # before anything is measured
    models = []
    for ckpt in checkpoints:
        model, payload = load_checkpoint(ckpt, "cpu", trust_code=trust_code)
        try:
            cost = measure_cost(model, payload["specs"], threads=threads, repeats=repeats, warmup=warmup,
                                cuda=cuda)
        except OSError as err:  # the temporary ONNX file (a full disk): one line naming the checkpoint
            if err.filename is None:
                err.filename = f"{ckpt} (its temporary ONNX file)"
            raise
        models.append({"checkpoint": str(ckpt), **run_label(ckpt), "modalities": list(model.modalities), **cost})
    result = {"threads": threads, "repeats": repeats, "warmup": warmup, "torch": torch.__version__,
              "onnxruntime": _ort_version(), "models": models}
    if len(models) > 1:
        first = models[0]
        result["ratios"] = [{"checkpoint": m["checkpoint"], "run": m["run"], "role": m["role"],
                             **{k: round(m[k] / first[k] if "_sps_" in k else first[k] / m[k], 3)
                                for k, _, _ in COST_ROWS if first.get(k) and m.get(k)}} for m in models[1:]]
    with RunDir(out, kind="profile", overwrite=overwrite,
                config={"checkpoints": [str(c) for c in checkpoints], "threads": threads, "repeats": repeats,
                        "warmup": warmup}) as run:
        write_json(run / PROFILE, result)
    return result


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__
