"""Distillation losses: one file per family, all in one registry (:data:`LOSSES`)."""
from .base import LOSSES, DistillationLoss, build_loss, loss_options, register_loss
from . import logits  # noqa: F401  (registers the logit losses)

__all__ = ["LOSSES", "DistillationLoss", "build_loss", "loss_options", "register_loss"]
