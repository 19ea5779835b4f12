"""The loss contract and the loss registry.

Every distillation loss is an ``nn.Module`` with one contract (as in torchdistill)::

    loss(student, teacher, *, target=None, index=None) -> scalar tensor

``student`` and ``teacher`` are what the term compares: logits for logit losses, captured
features for feature losses. ``target`` holds the class labels and ``index`` the dataset indices
of the batch's samples (for losses with a memory bank). A loss that needs the feature shapes or
the dataset size to create its parameters overrides :meth:`DistillationLoss.bind`, which the
engine calls once before training; parameters it creates train with the student and are
reported apart from it.

A user adds a loss without editing the package::

    from mmdistill.losses import DistillationLoss, register_loss

    @register_loss("cosine")
    class CosineLoss(DistillationLoss):
        \"\"\"1 - cos(student, teacher), averaged over the batch.\"\"\"
        def forward(self, student, teacher, *, target=None, index=None):
            return 1 - torch.nn.functional.cosine_similarity(student.flatten(1), teacher.flatten(1)).mean()
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

import pydantic
import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

LOSSES: Registry[type["DistillationLoss"]] = Registry("loss")


class DistillationLoss(nn.Module):
    """Base class of distillation losses (see the module docstring for the contract)."""

    #: "logits" for losses on class scores, "features" for losses on intermediate features.
    inputs: str = "logits"
    #: True when the loss compares features element-wise, so the engine must insert an adapter
    #: when student and teacher shapes differ.
    needs_adapter: bool = False
    #: where ``mmdistill distill --loss NAME`` puts a feature loss on the built-in models:
    #: "fusion" (the fused embedding), "encoders" (each modality's embedding, one term per
    #: modality) or "maps" (each modality's last convolutional map, ``encoders.<m>.features``).
    default_layer: str = "fusion"

    def bind(self, student_shape: torch.Size, teacher_shape: torch.Size, num_samples: int) -> None:
        """Create shape-dependent parameters; the default needs none."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, *, target=None, index=None):
        raise NotImplementedError

    def mix_teachers(self, logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """One target [B, C] from several teachers' logits [K, B, C] and per-sample weights [B, K].

        Default: the mixture of the teachers' distributions at the loss's ``temperature`` (1 if it
        has none), returned as logits: z = T * log sum_k w_k softmax(z_k / T). For KD this equals
        weighting each teacher's loss per sample (see :mod:`mmdistill.distill.ensemble`).
        Losses whose target is not a distribution override it (logit MSE: the weighted mean).
        """
        t = float(getattr(self, "temperature", 1.0))
        log_p = torch.log_softmax(logits / t, dim=2) + torch.log(weights.T.clamp_min(1e-12)).unsqueeze(2)
        return t * torch.logsumexp(log_p, dim=0)

    @classmethod
    def describe(cls) -> str:
        """The first line of the class docstring."""
        doc = inspect.getdoc(cls) or ""
        return doc.splitlines()[0] if doc else ""


def register_loss(name: str):
    """Class decorator registering a :class:`DistillationLoss` under ``name``."""

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, DistillationLoss)):
            raise TypeError(f"@register_loss({name!r}) expects a DistillationLoss subclass")
        cls.registered_name = name
        return LOSSES.register(name)(cls)

    return decorator


def loss_options(name: str) -> dict[str, inspect.Parameter]:
    """The constructor options of loss ``name``."""
    params = inspect.signature(LOSSES.get(name).__init__).parameters
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: p for k, p in params.items() if k != "self" and p.kind in named}


def build_loss(name: str, options: Mapping[str, Any] | None = None, where: str = "loss") -> DistillationLoss:
    """Build loss ``name`` with ``options``, validated against its constructor.

    An unknown option or a value of the wrong type raises :class:`ConfigError` naming
    ``where.option``.
    """
    cls = LOSSES.get(name)
    known = loss_options(name)
    checked = {}
    for key, value in (options or {}).items():
        if key not in known:
            names = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"{where}.{key}: unknown option for loss {name!r} (known: {names})")
        annotation = known[key].annotation
        if annotation is inspect.Parameter.empty:
            checked[key] = value
            continue
        try:
            checked[key] = pydantic.TypeAdapter(annotation).validate_python(value, strict=False)
        except pydantic.ValidationError as err:
            msg = err.errors()[0]["msg"]
            raise ConfigError(f"{where}.{key}: {msg} (got {value!r})") from None
    try:
        return cls(**checked)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from None
