"""The dataset registry: a name, a pydantic model of its options, and a builder.

A builder is ``builder(root, options, seed) -> (train, test, info)``; ``root`` is the resolved
data root, ``options`` the validated options model, ``info`` a JSON-able dict describing the
data actually used (recorded in run directories and summaries).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pydantic

from ..errors import ConfigError
from ..options import format_validation_error
from ..registry import Registry


@dataclass(frozen=True)
class DatasetEntry:
    options: type[pydantic.BaseModel]
    builder: Callable


DATASETS: Registry[DatasetEntry] = Registry("dataset", key="name")


def register_dataset(name: str, options: type[pydantic.BaseModel]):
    """Function decorator registering a dataset builder with its options model."""

    def decorator(fn):
        DATASETS.register(name, options=options)(DatasetEntry(options, fn))
        return fn

    return decorator


def check_options(name: str, options: dict) -> pydantic.BaseModel:
    """``options`` validated against dataset ``name``'s options model; raises ``ValueError("key:
    message")`` (for pydantic validators; an unknown dataset names ``name``)."""
    if name not in DATASETS:
        raise ValueError(f"name: unknown dataset {name!r} (known: {', '.join(DATASETS) or 'none'})")
    try:
        return DATASETS.get(name).options.model_validate(options)
    except pydantic.ValidationError as err:
        raise ValueError(format_validation_error(err)) from None


def parse_options(name: str, options: dict, prefix: str = "data") -> pydantic.BaseModel:
    """``options`` validated against dataset ``name``'s options model; a ConfigError names the key
    under ``prefix`` (``data``, or ``data.unlabelled`` for a transfer set)."""
    entry = DATASETS.get(name)
    try:
        return entry.options.model_validate(options)
    except pydantic.ValidationError as err:
        raise ConfigError(f"{prefix}.{format_validation_error(err)}") from None
