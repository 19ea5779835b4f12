"""Model kinds: what the ``model:`` section of a config builds.

The section is either the multimodal model (``encoders``/``fusion``/``head``, kind
``multimodal``) or another registered kind, selected by its key::

    model: {factory: "my_pkg.models:build", kwargs: {width: 64}}

Contract of a kind (register yours with ``@MODEL_KINDS.register(KEY)`` on its builder):

* ``OptionsModel`` is a pydantic model (``extra="forbid"``) with a field named ``KEY``; a
  ``model:`` section holding ``KEY`` is validated against it (errors name ``model.<key>``).
* the registered builder is ``build(cfg: OptionsModel, specs, num_classes) -> nn.Module`` (the
  annotation of ``cfg`` is the options model; or pass ``options=``): ``cfg`` the validated
  options, ``specs`` ``{modality: ModalitySpec}``. :func:`build` validates the section and, given
  a seed, runs the builder on a global RNG seeded with it alone (and restored after), so a builder
  neither validates nor seeds.
* the module's ``forward`` takes the batch dict (``{modality: tensor, "present": {...}}``) and
  returns logits ``[B, num_classes]``; ``modalities`` lists the modalities it reads (set to all of
  ``specs`` when the module does not say); ``feature_points()`` (see :mod:`.points`) is optional:
  without it, feature losses need explicit ``student:``/``teacher:`` module paths.
* ``cfg.model_dump()`` is JSON-compatible: checkpoints store it and rebuild the model through
  the kind before loading the weights (weights-only); a stored ``factory`` is called only when the
  checkpoint is trusted (:func:`mmdistill.checkpoint.check_code`), and what it returns is checked
  (an ``nn.Module``) before anything else.

Each kind registers itself in the module that defines it. Built-in kinds: ``multimodal``
(:mod:`.multimodal`), ``factory`` (``build(specs, num_classes, **kwargs)``, any importable
function, e.g. from a module listed under ``imports:``), ``hf`` (a transformers model, :mod:`.hf`)
and ``timm`` (a timm network, :mod:`.timm`); the last two import their library only when built
(optional extras ``hf`` and ``timm``); ``pretrained`` (an encoder whose weights ship in an
installed package, :mod:`.pretrained`: ``resemblyzer``'s GE2E speaker encoder).
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

import torch
from pydantic import BaseModel, Field
from torch import nn

from ..data.dataset import ModalitySpec
from ..errors import ConfigError
from ..options import Strict
from ..registry import Registry


def kind_of(raw: Any) -> str:
    """The kind a ``model:`` section selects: the one kind key it holds, else ``multimodal``."""
    if isinstance(raw, BaseModel):
        for name in MODEL_KINDS:
            options = MODEL_KINDS.options(name)
            if isinstance(raw, options) and (name == "multimodal" or name in type(raw).model_fields):
                return name
        raise ValueError(f"{type(raw).__name__} is not the options of a registered model kind")
    if not isinstance(raw, dict):
        raise ValueError(f"expected a mapping (encoders: ..., or one of {', '.join(_keys())}) (got {raw!r})")
    given = [k for k in raw if k in _keys()]
    if len(given) > 1:
        raise ValueError(f"{given[1]}: give one model kind, not both {given[0]} and {given[1]}")
    return given[0] if given else "multimodal"


def _keys() -> list[str]:
    return [k for k in MODEL_KINDS if k != "multimodal"]


#: the model kinds; a ``model:`` section selects one by the kind key it holds (:func:`kind_of`)
MODEL_KINDS: Registry = Registry("model kind", group="models", key=None, select=kind_of, options_arg=0)


def build(cfg: Any, specs: Mapping[str, ModalitySpec], num_classes: int, *, seed: int | None = None) -> nn.Module:
    """Build the model a ``model:`` section (validated options or a raw dict) describes.

    With ``seed``, the initial weights depend on that seed alone (the global RNG is left as it
    was); without, they come from the global RNG, as in plain PyTorch."""
    try:
        cfg = MODEL_KINDS.parse(cfg)
    except ValueError as err:
        key = str(err).partition(": ")[0]
        raise ConfigError(f"model.{err}" if key and " " not in key else f"model: {err}") from None
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return MODEL_KINDS.get(kind_of(cfg))(cfg, specs, num_classes)


class FactoryModelConfig(Strict):
    """``factory``: ``"package.module:function"``, called as ``function(specs, num_classes, **kwargs)``."""

    factory: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    kwargs: dict[str, Any] = {}


def resolve_factory(spec: str):
    """The function ``"pkg.module:name"`` names (one-line ConfigError naming ``model.factory``)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ConfigError(f"model.factory: no module named {err.name!r} (list your module under imports:, "
                          f"or install it)") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model.factory: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model.factory: {spec} is not callable")
    return obj


@MODEL_KINDS.register("factory")
def build_factory(cfg: FactoryModelConfig, specs: Mapping[str, ModalitySpec], num_classes: int) -> nn.Module:
    fn = resolve_factory(cfg.factory)
    try:
        model = fn(dict(specs), num_classes, **cfg.kwargs)
    except Exception as err:  # the user's code: one line naming the factory, not a traceback
        why = (str(err).splitlines() or [""])[0]
        raise ConfigError(f"model.factory: {cfg.factory} raised {type(err).__name__}: {why}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.factory: {cfg.factory} returned {type(model).__name__}, not a torch nn.Module")
    if not hasattr(model, "modalities"):
        model.modalities = list(specs)
    return model
