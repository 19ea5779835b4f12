"""Export a :class:`~mmdistill.models.MultimodalModel` to ONNX or TorchScript.

The exported graph takes, in this order, one float32 input per modality (``[batch, *shape]``)
and one boolean input ``present_<modality>`` (``[batch]``) per modality, and returns ``logits``
(``[batch, classes]``). ONNX export uses the default (``torch.export``-based) exporter: the legacy
one cannot export ``adaptive_avg_pool2d`` when the pooling grid does not divide the map.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

PRESENT_PREFIX = "present_"


class PositionalModel(nn.Module):
    """``forward(*modality_inputs, *presence_masks) -> logits``: a batch dict made positional for export."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.modalities = list(model.modalities)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        k = len(self.modalities)
        batch = {m: inputs[i] for i, m in enumerate(self.modalities)}
        batch["present"] = {m: inputs[k + i] for i, m in enumerate(self.modalities)}
        return self.model(batch)


def input_shapes(model: nn.Module, specs: Mapping | None = None) -> dict[str, tuple[int, ...]]:
    """``{modality: per-sample shape}`` for the modalities ``model`` sees. ``specs`` maps names to
    :class:`~mmdistill.data.dataset.ModalitySpec` or shapes; None reads the model's own."""
    if specs is None:
        return {m: tuple(model.input_shapes[m]) for m in model.modalities}
    return {m: tuple(getattr(specs[m], "shape", specs[m])) for m in model.modalities}


def input_names(modalities: Sequence[str]) -> list[str]:
    return list(modalities) + [PRESENT_PREFIX + m for m in modalities]


def example_inputs(shapes: Mapping[str, Sequence[int]], batch: int, *, seed: int = 0,
                   present: bool = True) -> tuple[torch.Tensor, ...]:
    """Random standard-normal inputs and all-True (or all-False) presence masks, in graph order."""
    gen = torch.Generator().manual_seed(seed)
    xs = tuple(torch.randn((batch, *shape), generator=gen) for shape in shapes.values())
    masks = tuple(torch.full((batch,), present, dtype=torch.bool) for _ in shapes)
    return xs + masks


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and warnings (e.g. 'torchvision is not installed')."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(model: nn.Module, specs: Mapping | None, path: str | Path, *, opset: int | None = None) -> Path:
    """Write ``model`` (in eval mode, on CPU) to the ONNX file ``path`` with a dynamic batch axis."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = input_shapes(model, specs)
    wrapper = PositionalModel(cpu_eval_copy(model)).eval()
    args = example_inputs(shapes, batch=2)
    batch = torch.export.Dim("batch")
    with _quiet():
        torch.onnx.export(wrapper, args, str(path), input_names=input_names(list(shapes)), output_names=["logits"],
                          dynamic_shapes=(tuple({0: batch} for _ in args),), opset_version=opset, dynamo=True,
                          external_data=False, verbose=False)
    _strip_debug_info(path)
    return path


def _strip_debug_info(path: Path) -> None:
    """Drop the exporter's per-node metadata (source stack traces with local paths, FX node text):
    it is most of a small model's file and nothing a deployment needs."""
    import onnx

    proto = onnx.load(str(path))
    for node in proto.graph.node:
        del node.metadata_props[:]
    for value in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        del value.metadata_props[:]
    for tensor in proto.graph.initializer:
        del tensor.metadata_props[:]
    onnx.save(proto, str(path))


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset an ONNX file was written with."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def export_torchscript(model: nn.Module, specs: Mapping | None, path: str | Path) -> Path:
    """Write ``model`` as a traced TorchScript module: ``torch.jit.load(path)(*inputs, *masks)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = input_shapes(model, specs)
    wrapper = PositionalModel(cpu_eval_copy(model)).eval()
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(wrapper, example_inputs(shapes, batch=2), check_trace=False)
        buffer = io.BytesIO()  # torch's own file writer aborts the process on a full disk; Python's raises OSError
        torch.jit.save(traced, buffer)
    path.write_bytes(buffer.getvalue())
    return path


def cpu_eval_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the CPU in eval mode (the original is left where it is)."""
    import copy

    return copy.deepcopy(model).cpu().eval()
