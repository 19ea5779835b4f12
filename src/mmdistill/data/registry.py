"""The dataset registry: a name, a pydantic model of its options, and a builder.

A builder is ``builder(root, options, seed) -> (train, test, info)``; ``root`` is the resolved
data root, ``options`` the validated options model (the annotation of ``options`` is the model
the registry validates against), ``info`` a JSON-able dict describing the data actually used
(recorded in run directories and summaries)::

    @register_dataset("mine")
    def build_mine(root, options: MineOptions, seed: int): ...
"""
from __future__ import annotations

from typing import Callable

import pydantic

from ..registry import Registry

DATASETS: Registry[Callable] = Registry("dataset", key="name", options_arg=1)

#: ``@register_dataset(name, options=None)``: the registry's one way to register
register_dataset = DATASETS.register


def parse_options(name: str, options: dict, prefix: str = "data") -> pydantic.BaseModel:
    """``options`` validated against dataset ``name``'s options model; a ConfigError names the key
    under ``prefix`` (``data``, or ``data.unlabelled`` for a transfer set)."""
    return DATASETS.validate(name, options, where=prefix)
