"""Distillation losses: one file per family, all in one registry (:data:`LOSSES`)."""
from .base import LOSSES, DistillationLoss, build_loss, compute_in_float32, loss_options, register_loss
from . import logits  # noqa: F401  (registers the logit losses)
from . import features  # noqa: F401  (fitnet, at, nst, vid)
from . import relations  # noqa: F401  (sp, rkd, rkd_distance, rkd_angle, pkt, cc)
from . import contrastive  # noqa: F401  (crd)

__all__ = ["LOSSES", "DistillationLoss", "build_loss", "compute_in_float32", "loss_options", "register_loss"]
