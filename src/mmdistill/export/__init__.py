"""Deployment: export to ONNX / TorchScript, the torch-free ONNX Runtime loader, and cost measurement.

* :func:`export_onnx` / :func:`export_torchscript`: a model to a file (``mmdistill.export.onnx``).
* :func:`export_checkpoint`: a checkpoint to a checked export folder (``mmdistill.export.bundle``).
* :class:`ExportedModel`: predict from an export folder with numpy and onnxruntime only
  (``mmdistill.export.runtime``, copied into every export folder as ``mmdistill_runtime.py``).
* :func:`measure_cost`, :func:`count_macs`, :func:`onnx_latency`, :func:`torch_latency`
  (``mmdistill.export.profile``).
"""
from .bundle import ParityError, export_checkpoint, predict_export
from .onnx import export_onnx, export_torchscript
from .profile import count_macs, count_params, measure_cost, onnx_latency, profile_checkpoints, torch_latency
from .runtime import ExportedModel

__all__ = ["ExportedModel", "ParityError", "count_macs", "count_params", "export_checkpoint", "export_onnx",
           "export_torchscript", "measure_cost", "onnx_latency", "predict_export", "profile_checkpoints",
           "torch_latency"]
