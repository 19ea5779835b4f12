"""Capture any submodule's output by its dotted path with forward hooks.

``"logits"`` names the model's own output; any other path (``encoders.audio``, ``fusion``,
``head.0``) is looked up with ``model.get_submodule``, so users never rewrite a model to expose
its features.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..errors import ConfigError

OUTPUT = "logits"


class FeatureCapture:
    """Registers forward hooks on ``paths`` of ``model``; ``features`` holds the latest outputs."""

    def __init__(self, model: nn.Module, paths: Iterable[str], owner: str = "model"):
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for path in sorted(set(paths) - {OUTPUT}):
            try:
                module = model.get_submodule(path)
            except AttributeError:
                names = ", ".join(n for n, _ in model.named_modules() if n and n.count(".") < 2)
                raise ConfigError(f"{owner} has no module {path!r} (top-level modules: {names})") from None
            self._handles.append(module.register_forward_hook(self._hook(path)))

    def _hook(self, path: str):
        def hook(module, inputs, output):
            self.features[path] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def run(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        """Forward ``batch`` and return ``{path: output}`` including ``"logits"``."""
        self.features = {}
        logits = model(batch)
        return {**self.features, OUTPUT: logits}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
