"""Optimisers and learning-rate schedules, each a registry entry with its options model.

An optimiser is ``builder(params, options) -> torch.optim.Optimizer``; a schedule is
``builder(options, epochs) -> factor(e)``, the learning-rate factor at the (fractional) epoch
``e`` counted after the warm-up. ``train.optimizer`` and ``train.scheduler`` name them by
``name``; a user's entry (registered in a module listed under ``imports:``) works the same, its
options model read from the annotation of its options parameter::

    @OPTIMIZERS.register("rmsprop")
    def rmsprop(params, options: RMSpropOptions):
        return torch.optim.RMSprop(params, lr=options.lr, alpha=options.alpha)
"""
from __future__ import annotations

import math
from typing import Annotated, Callable, Literal

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat, StrictBool

from .options import PositiveInt, Strict
from .registry import Registry

OPTIMIZERS: Registry[Callable] = Registry("optimiser", key="name", default="adam", options_arg=1)
SCHEDULERS: Registry[Callable] = Registry("scheduler", key="name", default="none", options_arg=0)


class OptimizerConfig(Strict):
    """The options of the built-in optimisers (``momentum`` and ``nesterov``: SGD only)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: StrictBool = False


class SchedulerConfig(Strict):
    name: Literal["none", "cosine", "step", "exponential"] = "none"
    step_size: PositiveInt = 10
    gamma: PositiveFloat = 0.1
    warmup_epochs: Annotated[int, Field(strict=True, ge=0)] = 0
    # epoch: the factor changes once per epoch; step: after every optimiser step, with the epoch
    # counted fractionally (cosine then decays smoothly, as in Hinton et al.'s recipe)
    interval: Literal["epoch", "step"] = "epoch"


@OPTIMIZERS.register("sgd", options=OptimizerConfig)
def sgd(params, cfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)


@OPTIMIZERS.register("adam", options=OptimizerConfig)
def adam(params, cfg) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw", options=OptimizerConfig)
def adamw(params, cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@SCHEDULERS.register("none", options=SchedulerConfig)
def constant(cfg, epochs: int) -> Callable[[float], float]:
    return lambda e: 1.0


@SCHEDULERS.register("cosine", options=SchedulerConfig)
def cosine(cfg, epochs: int) -> Callable[[float], float]:
    """0.5 * (1 + cos(pi * e / (epochs - warmup)))."""
    span = max(1, epochs - getattr(cfg, "warmup_epochs", 0))
    return lambda e: 0.5 * (1 + math.cos(math.pi * e / span))


@SCHEDULERS.register("step", options=SchedulerConfig)
def step(cfg, epochs: int) -> Callable[[float], float]:
    """gamma ** floor(e / step_size)."""
    return lambda e: cfg.gamma ** (e // cfg.step_size)


@SCHEDULERS.register("exponential", options=SchedulerConfig)
def exponential(cfg, epochs: int) -> Callable[[float], float]:
    """gamma ** e."""
    return lambda e: cfg.gamma ** e


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    """The optimiser ``cfg.name`` names, over ``params``."""
    return OPTIMIZERS.get(cfg.name)(params, cfg)


def build_scheduler(optimizer, cfg, epochs: int, steps_per_epoch: int = 1) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning-rate factor: linear warm-up, then the schedule ``cfg.name`` names.

    With ``cfg.interval == "epoch"`` the scheduler is stepped once per epoch; with ``"step"`` once
    per optimiser step, and the factor is that of the fractional epoch e = step / steps_per_epoch
    (e.g. cosine: 0.5 * (1 + cos(pi * e / epochs))). Warm-up counts in the same units. Options a
    user's schedule does not have count as ``warmup_epochs: 0`` and ``interval: epoch``.
    """
    per = steps_per_epoch if getattr(cfg, "interval", "epoch") == "step" else 1
    warmup = getattr(cfg, "warmup_epochs", 0)
    schedule = SCHEDULERS.get(cfg.name)(cfg, epochs)

    def factor(count: int) -> float:
        warm = warmup * per
        if count < warm:
            return (count + 1) / (warm + 1)
        return schedule((count - warm) / per)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
