"""The loss contract and the loss registry.

Every distillation loss is an ``nn.Module`` with one contract (as in torchdistill)::

    loss(student, teacher, *, target=None, index=None) -> scalar tensor

``student`` and ``teacher`` are what the term compares: logits for logit losses, captured
features for feature losses. ``target`` holds the class labels and ``index`` the dataset indices
of the batch's samples (for losses with a memory bank). A loss that needs the feature shapes or
the dataset size to create its parameters overrides :meth:`DistillationLoss.bind`, which the
engine calls once before training; parameters it creates train with the student and are
reported apart from it. A loss that sets ``needs_labels`` also receives the class labels of the
whole training set there (``bind(..., labels=...)``, indexed like ``index``).

Precision: the built-in losses compute in float32 whatever their inputs (float16 and bfloat16
features are upcast and autocast is off inside them, see :func:`compute_in_float32`), so a
half-precision student gets a finite loss and finite gradients; float64 stays float64.

A user adds a loss without editing the package::

    from mmdistill.losses import DistillationLoss, register_loss

    @register_loss("cosine")
    class CosineLoss(DistillationLoss):
        \"\"\"1 - cos(student, teacher), averaged over the batch.\"\"\"
        def forward(self, student, teacher, *, target=None, index=None):
            return 1 - torch.nn.functional.cosine_similarity(student.flatten(1), teacher.flatten(1)).mean()
"""
from __future__ import annotations

import contextlib

import functools
import inspect
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry, options_of


_HALF = (torch.float16, torch.bfloat16)


#: the temperatures a loss accepts: logits divided by T must stay finite in float32 (|z| / T below
#: 3.4e38) and T^2-scaled losses must not overflow, so T is kept within six orders of magnitude of 1
TEMPERATURE_RANGE = (1e-3, 1e3)


def check_temperature(temperature: float) -> float:
    """``temperature`` if it lies in :data:`TEMPERATURE_RANGE`, else ValueError naming the option."""
    low, high = TEMPERATURE_RANGE
    if not low <= temperature <= high:
        raise ValueError(f"temperature must be in [{low:g}, {high:g}] (logits are divided by it), got {temperature:g}")
    return temperature


def full_precision(x):
    """``x`` as float32 when it is a float16/bfloat16 tensor, else unchanged (float64 stays float64)."""
    return x.float() if isinstance(x, torch.Tensor) and x.dtype in _HALF else x


def compute_in_float32(forward):
    """Decorate a loss's ``forward(student, teacher, ...)``: upcast half inputs, autocast off.

    Softmaxes, norms, exp(score / tau) and the epsilons of the losses then act in float32: in
    float16 an epsilon of 1e-8 rounds to 0 and exp(1 / 0.07) overflows. Gradients flow back to
    the inputs in their own dtype.
    """

    @functools.wraps(forward)
    def wrapper(self, student, teacher, *args, **kwargs):
        device = student.device.type if isinstance(student, torch.Tensor) else "cpu"
        # a device without autocast (``meta``) has none to turn off
        off = (torch.autocast(device_type=device, enabled=False) if torch.amp.is_autocast_available(device)
               else contextlib.nullcontext())
        with off:
            return forward(self, full_precision(student), full_precision(teacher), *args, **kwargs)

    return wrapper


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
    #: True when :meth:`bind` needs the class labels of the training set (``labels=``).
    needs_labels: bool = False
    #: True when :meth:`forward` needs every sample's label (``target``), so it cannot train on
    #: unlabelled samples.
    needs_target: bool = False

    def bind(self, student_shape: torch.Size, teacher_shape: torch.Size, num_samples: int, *,
             labels: torch.Tensor | None = None) -> None:
        """Create shape-dependent parameters; the default needs none.

        ``labels`` [num_samples]: the training labels, passed only to losses with ``needs_labels``.
        """

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
        logits, weights = full_precision(logits), full_precision(weights)
        log_p = torch.log_softmax(logits / t, dim=2) + torch.log(weights.T.clamp_min(1e-12)).unsqueeze(2)
        return t * torch.logsumexp(log_p, dim=0)

    @classmethod
    def describe(cls) -> str:
        """The first line of the class docstring."""
        doc = inspect.getdoc(cls) or ""
        return doc.splitlines()[0] if doc else ""


LOSSES: Registry[type[DistillationLoss]] = Registry("loss", group="losses", key="name", base=DistillationLoss)
#: ``@register_loss(name, options=None)``: the registry's one way to register (options read from
#: the constructor's keyword parameters when not given); the loss is built as ``cls(**options)``
register_loss = LOSSES.register


def loss_options(name: str) -> dict[str, Any]:
    """The options of loss ``name`` and their defaults (None where an option is required)."""
    return {k: (None if f.is_required() else f.default) for k, f in LOSSES.options(name).model_fields.items()}


def build_loss(name: str, options: Mapping[str, Any] | None = None, where: str = "loss") -> DistillationLoss:
    """Build loss ``name`` with ``options``, validated against its options model.

    An unknown option or a value of the wrong type raises :class:`ConfigError` naming
    ``where.option``.
    """
    cls = LOSSES.get(name)
    checked = LOSSES.validate(name, options, where=where)
    try:
        return cls(**options_of(checked, LOSSES.key))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from None
