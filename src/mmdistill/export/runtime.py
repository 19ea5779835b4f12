"""Run an exported mmdistill model with ONNX Runtime: numpy and onnxruntime only, no torch.

This file is self-contained (standard library, numpy, onnxruntime) and ``mmdistill export`` copies
it into every export folder as ``mmdistill_runtime.py``, so a deployment needs only that folder::

    import numpy as np
    from mmdistill_runtime import ExportedModel

    model = ExportedModel("export/")                 # reads model.json and model.onnx
    x = model.standardise("audio", log_mel)          # the training data's (x - mean) / std
    labels = model.predict({"audio": x})             # absent modalities: zeros, present_<m> = False

The graph takes one float32 input per modality (``[batch, *shape]``) and one boolean input
``present_<modality>`` (``[batch]``) per modality, and outputs ``logits`` (``[batch, classes]``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnxruntime as ort

#: this file is copied into export folders and imports nothing of mmdistill, so it names the file
#: itself; equal to :data:`mmdistill.rundir.MODEL_JSON` (tests/test_rundir_record.py checks)
MODEL_JSON = "model.json"
PRESENT_PREFIX = "present_"


def session(path: str | Path, *, threads: int | None = None, providers: Sequence[str] | None = None,
            ) -> ort.InferenceSession:
    """An ONNX Runtime session; ``threads`` sets intra-op threads (None: ONNX Runtime's default)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=list(providers or ["CPUExecutionProvider"]))


class ExportedModel:
    """An export folder (``model.json`` + an ONNX file) ready to predict on numpy arrays.

    ``variant``: ``"fp32"`` (``model.onnx``) or ``"int8"`` (the statically quantised model, when
    the export made one).
    """

    def __init__(self, export_dir: str | Path, *, variant: str = "fp32", threads: int | None = None,
                 providers: Sequence[str] | None = None):
        self.dir = Path(export_dir)
        meta_path = self.dir / MODEL_JSON
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: no model.json (is {self.dir} an mmdistill export folder?)")
        self.meta = json.loads(meta_path.read_text())
        files = self.meta.get("files", {})
        name = files.get("onnx_int8" if variant == "int8" else "onnx")
        if name is None:
            raise FileNotFoundError(f"{meta_path}: the export has no {variant} ONNX model (files: {', '.join(files)})")
        self.modalities: list[str] = list(self.meta["modalities"])
        self.inputs = {m: self.meta["inputs"][m] for m in self.modalities}
        self.classes: list[str] = list(self.meta["classes"])
        try:
            self.session = session(self.dir / name, threads=threads, providers=providers)
        except Exception as err:  # onnxruntime's load errors (no such file, invalid protobuf) share no base class
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise ValueError(f"{self.dir / name}: not a loadable ONNX model ({first})") from None

    def standardise(self, modality: str, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` with the training split's statistics (unchanged when the data had none)."""
        stats = self.meta["preprocessing"]["modalities"][modality].get("standardise")
        x = np.asarray(x, dtype=np.float32)
        return x if not stats else ((x - stats["mean"]) / stats["std"]).astype(np.float32)

    def feeds(self, inputs: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray] | None = None) -> dict:
        """The graph's input dict: modalities missing from ``inputs`` become zeros marked absent."""
        unknown = [m for m in inputs if m not in self.inputs]
        if unknown:
            raise ValueError(f"input {unknown[0]!r}: the model has no such modality (it has {', '.join(self.modalities)})")
        if not inputs:
            raise ValueError(f"no inputs: give at least one of {', '.join(self.modalities)}")
        size = len(next(iter(inputs.values())))
        present = dict(present or {})
        feed = {}
        for m in self.modalities:
            shape = tuple(self.inputs[m]["shape"])
            if m in inputs:
                x = np.ascontiguousarray(inputs[m], dtype=np.float32)
                if x.shape != (size, *shape):
                    raise ValueError(f"input {m!r}: shape {list(x.shape)}, expected [{size}, "
                                     f"{', '.join(map(str, shape))}]")
                mask = np.asarray(present.get(m, np.ones(size, dtype=bool)), dtype=bool).reshape(size)
            else:
                x = np.zeros((size, *shape), dtype=np.float32)
                mask = np.zeros(size, dtype=bool)
            feed[m] = x
            feed[PRESENT_PREFIX + m] = mask
        return feed

    def logits(self, inputs: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray] | None = None, *,
               batch_size: int = 256) -> np.ndarray:
        """``[N, classes]`` float32 logits; ``present[m]`` (bool ``[N]``) marks which samples carry ``m``."""
        feed = self.feeds(inputs, present)
        size = len(feed[self.modalities[0]])
        out = [self.session.run(["logits"], {k: v[i:i + batch_size] for k, v in feed.items()})[0]
               for i in range(0, size, batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), dtype=np.float32)

    def predict(self, inputs: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray] | None = None, *,
                batch_size: int = 256) -> np.ndarray:
        """``[N]`` predicted class indices (``self.classes[i]`` names them)."""
        return self.logits(inputs, present, batch_size=batch_size).argmax(1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
