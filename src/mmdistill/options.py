"""Shared pieces of option models (a leaf module: config, registries and plugins import it).

``Strict`` forbids unknown keys; :func:`format_validation_error` turns a pydantic error into one
line naming the first offending key (``model.encoders.audio.widht: unknown key``).
"""
from __future__ import annotations

import re
from typing import Annotated, Collection

import pydantic
from pydantic import BaseModel, ConfigDict, Field

#: the largest count an option takes (epochs, batch sizes, widths): beyond it, sizes no longer fit
#: the int32/int64 arithmetic of the libraries below (2**70 would overflow deep inside them)
MAX_COUNT = 2**31 - 1
#: seeds are 0..2**32-1, the range every random number generator below accepts
MAX_SEED = 2**32 - 1

# Strict: YAML ``true`` is a bool, never the integer 1 (``epochs: true`` is an error naming the key).
PositiveInt = Annotated[int, Field(strict=True, gt=0, le=MAX_COUNT)]
Seed = Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)]

#: every options model: no unknown keys, and no NaN or infinite number (YAML ``.inf``, ``1e400``)
#: for any float option, so a non-finite value is an error naming its key, not a diverged run
OPTIONS_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


class Strict(BaseModel):
    model_config = OPTIONS_CONFIG


def format_validation_error(err: pydantic.ValidationError, prefix: str = "", tags: Collection[str] = ()) -> str:
    """One line naming the first offending key, e.g. ``train.epochs: Input should be ...``.

    ``tags``: discriminator values of tagged unions inside lists, dropped from the key after an
    index (``train.augment.image[0].pixel``, not ``...[0].translate.pixel``)."""
    first = err.errors()[0]
    loc = [str(p) if not isinstance(p, int) else f"[{p}]" for p in first["loc"]]
    loc = [p for i, p in enumerate(loc) if not (p in tags and i and loc[i - 1].startswith("["))]
    key = ".".join(loc).replace(".[", "[")
    if prefix:
        key = f"{prefix}.{key}" if key else prefix
    msg = first["msg"]
    if first["type"] == "value_error":  # a validator's "subkey: message" names the key below
        msg = msg.removeprefix("Value error, ")
        sub, sep, rest = msg.partition(": ")
        if sep and " " not in sub:
            joint = "" if re.match(r"\[\d+\]", sub) else "."  # a list index joins without a dot
            key, msg = (f"{key}{joint}{sub}" if key else sub), rest
        return f"{key}: {msg}" if key else msg
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict):
        msg = f"{msg} (got {first['input']!r})"
    return f"{key}: {msg}" if key else msg
