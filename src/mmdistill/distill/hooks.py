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
    """Forward hooks on ``paths`` of ``model``; :meth:`run` returns their latest outputs.

    The modules are looked up (and a missing one reported) at construction; hooks are registered
    by :meth:`attach` and unregistered by :meth:`remove` (as torchdistill's ``clean_modules``),
    so whoever attaches them owns their removal: :class:`~mmdistill.distill.tasks.DistillationTask`
    attaches them for a fit and removes them in its ``teardown``. A :meth:`run` while detached
    registers the hooks for that one forward only, leaving nothing behind.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], owner: str = "model"):
        self.features: dict[str, torch.Tensor] = {}
        self._modules: list[tuple[str, nn.Module]] = []
        self._handles = []
        for path in sorted(set(paths) - {OUTPUT}):
            try:
                module = model.get_submodule(path)
            except AttributeError:
                names = ", ".join(n for n, _ in model.named_modules() if n and n.count(".") < 2)
                raise ConfigError(f"{owner} has no module {path!r} (top-level modules: {names})") from None
            self._modules.append((path, module))

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> None:
        """Register the hooks (once; attaching again is a no-op)."""
        if not self._handles:
            self._handles = [module.register_forward_hook(self._hook(path)) for path, module in self._modules]

    def _hook(self, path: str):
        def hook(module, inputs, output):
            self.features[path] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def run(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        """Forward ``batch`` and return ``{path: output}`` including ``"logits"``."""
        self.features = {}
        if self.attached or not self._modules:
            logits = model(batch)
        else:
            self.attach()
            try:
                logits = model(batch)
            finally:
                self.remove()
        features, self.features = self.features, {}
        return {**features, OUTPUT: logits}

    def remove(self) -> None:
        """Unregister every hook this capture registered."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
