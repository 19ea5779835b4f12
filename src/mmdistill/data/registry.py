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
from ..registry import Registry


@dataclass(frozen=True)
class DatasetEntry:
    options: type[pydantic.BaseModel]
    builder: Callable


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(name: str, options: type[pydantic.BaseModel]):
    """Function decorator registering a dataset builder with its options model."""

    def decorator(fn):
        DATASETS.register(name)(DatasetEntry(options, fn))
        return fn

    return decorator


def parse_options(name: str, options: dict, prefix: str = "data") -> pydantic.BaseModel:
    from ..config import format_validation_error

    entry = DATASETS.get(name)
    try:
        return entry.options.model_validate(options)
    except pydantic.ValidationError as err:
        raise ConfigError(f"{prefix}.{format_validation_error(err)}") from None
