"""The ``torch.backends`` settings of a run: chosen once, by :func:`settings`, applied around a fit
by :func:`configured` (and restored after it), and recorded in ``run.json`` (key ``backends``).

Default (``train.deterministic: false``):

* ``cudnn.benchmark`` on for CUDA: every training batch has the same shape (the last one aside),
  so cuDNN's autotuner times its convolution algorithms once per shape and keeps the fastest;
* TF32 off, for matrix products (``float32_matmul_precision: highest``) and for cuDNN
  convolutions: ``train.precision: fp32`` means float32 arithmetic on every device (TF32 keeps 10
  bits of mantissa, about 3e-4 relative error). On a GPU the fast path is ``precision: bf16``.

``train.deterministic: true``: bit-identical repeats of a run on the same machine and software,
on CUDA too:

* ``torch.use_deterministic_algorithms(True)``: an operation without a deterministic kernel
  raises instead of running (the fit turns it into a ConfigError naming ``train.deterministic``);
* ``cudnn.deterministic`` on and ``cudnn.benchmark`` off: fixed convolution algorithms, not
  always the fastest;
* ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when unset, which cuBLAS needs for reproducible products
  (CUDA 10.2 and later). It must be in place before the process's first cuBLAS call: the fit sets
  it before it moves anything to the device, but a program that already ran CUDA matrix products
  should set it in its environment.

Adaptive average pooling, which every conv encoder ends with and whose CUDA backward torch can
only run non-deterministically, switches to a sliced formulation in this mode
(:mod:`mmdistill.models.pooling`). What it costs: on CPU nothing measurable (its kernels are deterministic already and cuDNN is not
used). On CUDA, convolutions lose the autotuner's choice, a few operations (``index_add_``,
``scatter_add_`` and other atomics-based backward passes) run slower deterministic kernels or
refuse to run, and cuBLAS keeps 8 workspaces of 4 MiB (32 MiB of GPU memory) per stream. The
throughput cost on our models is measured by ``benchmarks/gpu_check.sh`` (row
``mmdistill_distill_cache_deterministic``).
"""
from __future__ import annotations

import contextlib
import os

import torch

#: the cuBLAS workspace setting deterministic CUDA runs need (see the module docstring)
CUBLAS_WORKSPACE = ":4096:8"


def settings(device: torch.device | str, deterministic: bool = False) -> dict:
    """The backend settings a fit on ``device`` runs with (what ``run.json`` records)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    out = {
        "device": device.type,
        "deterministic": bool(deterministic),
        "deterministic_algorithms": bool(deterministic),
        "cudnn_benchmark": cuda and not deterministic,
        "cudnn_deterministic": bool(deterministic),
        "float32_matmul_precision": "highest",
        "cudnn_allow_tf32": False,
        "torch": torch.__version__,
    }
    if cuda:
        out["cuda"] = torch.version.cuda
        out["cublas_workspace_config"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG") or (
            CUBLAS_WORKSPACE if deterministic else None)
    return out


def _current() -> dict:
    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}


def _apply(s: dict) -> None:
    torch.use_deterministic_algorithms(s["deterministic_algorithms"], warn_only=s.get("warn_only", False))
    torch.backends.cudnn.benchmark = s["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = s["cudnn_deterministic"]
    torch.set_float32_matmul_precision(s["float32_matmul_precision"])
    torch.backends.cudnn.allow_tf32 = s["cudnn_allow_tf32"]


@contextlib.contextmanager
def configured(device: torch.device | str, deterministic: bool = False):
    """Apply :func:`settings` for the body (yields them), then restore what was set before."""
    chosen = settings(device, deterministic)
    before = _current()
    if chosen.get("cublas_workspace_config") and not os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = chosen["cublas_workspace_config"]
    _apply(chosen)
    try:
        yield chosen
    finally:
        _apply(before)


def is_nondeterminism_error(err: BaseException) -> bool:
    """Whether ``err`` is torch's refusal of an op without a deterministic implementation."""
    return isinstance(err, RuntimeError) and "does not have a deterministic implementation" in str(err)
