"""Checkpoints: a weights-only ``torch.save`` of a dict of tensors and plain values.

Everything needed to rebuild the model (its config, the modality specs, the number of classes,
the data config it was trained on, the user modules the config imported) is stored as
JSON-compatible values beside the state dict, so :func:`load_checkpoint` never unpickles
arbitrary objects (``weights_only=True``): it rebuilds the model through its kind
(:mod:`mmdistill.models.kinds`) and loads the weights into it.

Trust: loading runs no code the file names. A checkpoint that records ``imports`` or a
``model: {factory: ...}`` is refused (:func:`check_code`, one line naming them) unless the caller
trusts it (``trust_code=True``, the CLI's ``--trust-code``), or the user's own config being run
names that code already: each recorded import is one of the config's ``imports:``, and the
factory is the config's own ``model.factory`` or a function defined in a module the config
imports (looked up in the already imported module, nothing imported).
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .data.dataset import ModalitySpec
from .errors import CheckpointError

FORMAT = "mmdistill/1"


def save_checkpoint(path: str | Path, model: nn.Module, *, model_config: dict, specs: dict[str, ModalitySpec],
                    num_classes: int, meta: dict[str, Any] | None = None, imports: Sequence[str] = ()) -> Path:
    """Write atomically: the file appears only once complete. ``imports``: the resolved
    ``imports:`` of the config (:mod:`mmdistill.plugins`), imported again on loading."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model_config": model_config,
        "specs": {m: s.to_dict() for m, s in specs.items()},
        "num_classes": int(num_classes),
        "meta": meta or {},
        "imports": list(imports),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    provenance = getattr(model, "provenance", None)  # weights from elsewhere (a pretrained model kind)
    if provenance:
        payload["provenance"] = dict(provenance)
    return atomic_torch_save(payload, path)


def atomic_torch_save(payload, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: the file appears only once
    complete, and no ``.part`` file survives a failure. It writes through a Python file object, so
    a full disk raises ``OSError(ENOSPC)`` naming the file (a path makes torch's C++ writer raise
    an opaque RuntimeError instead)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            writer = _Writer(f, tmp)
            try:
                torch.save(payload, writer)
            except BaseException:
                # torch wraps what a write raised (a full disk, Ctrl-C, SIGTERM's Interrupted arriving
                # while Python code of the writer runs) in its own RuntimeError: raise the original
                if writer.error is not None:
                    raise writer.error from None
                raise
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is None:
            err.filename = str(path)
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


class _Writer:
    """A file for ``torch.save`` that writes every byte (retrying short writes) and keeps what a
    write raised (an OSError for a full disk or a file too large; KeyboardInterrupt or the CLI's
    Interrupted for a signal), which torch would report as its own RuntimeError."""

    def __init__(self, f, name: str):
        self.f, self.name, self.error = f, name, None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[self.f.write(view):]
        except BaseException as err:
            self.error = err
            raise
        return len(data)

    def flush(self) -> None:
        self.f.flush()


def read_checkpoint(path: str | Path) -> dict:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a checkpoint path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (not a torch.save archive)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if "Weights only load failed" in str(err):  # pickled objects: never unpickled, they could run code
            raise CheckpointError(f"{path}: holds objects other than tensors and plain values, which are never "
                                  "loaded (a checkpoint is loaded weights-only)") from None
        why = (str(err).splitlines() or [""])[0] if not isinstance(err, KeyError) else ""
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint{f' ({why})' if why else ''}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mmdistill checkpoint (format {FORMAT})")
    return payload


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_payload(path, payload: dict) -> None:
    """Every field of a checkpoint's metadata, before anything is built from it: one
    :class:`CheckpointError` naming the file and the field. ``num_classes`` an integer >= 2 that the
    weights can hold; ``specs`` ``{modality: {name, kind, shape}}`` with positive integer sizes;
    ``meta.seed`` and ``meta.val_fraction`` in their config ranges; recorded standardisation
    statistics finite, with positive spreads; the state dict a mapping of names to finite tensors."""
    import math

    from .data.kinds import MODALITY_KINDS
    from .options import MAX_COUNT, MAX_SEED

    def bad(field: str, why: str):
        return CheckpointError(f"{path}: malformed {field!r}: {why}")

    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise bad("state_dict", "expected a mapping of parameter names to tensors")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise bad("state_dict", f"weight {name!r} holds NaN or infinite values")
    if not isinstance(payload["model_config"], dict):
        raise bad("model_config", f"expected a mapping, got {type(payload['model_config']).__name__}")
    n = payload["num_classes"]
    if not _is_int(n) or n < 2:
        raise bad("num_classes", f"expected an integer >= 2, got {n!r}")
    weights = sum(t.numel() for t in state.values())
    if n > weights:  # every model's output layer holds at least one number per class
        raise bad("num_classes", f"{n} classes, but the weights hold only {weights} numbers")
    specs = payload["specs"]
    if not isinstance(specs, dict) or not specs:
        raise bad("specs", "expected {modality: {name, kind, shape}} with at least one modality")
    for m, spec in specs.items():
        if not isinstance(spec, dict) or not {"name", "kind", "shape"} <= set(spec):
            raise bad("specs", f"modality {m!r}: expected {{name, kind, shape}}")
        shape = spec["shape"]
        if spec["name"] != m:
            raise bad("specs", f"modality {m!r} is named {spec['name']!r}")
        if spec["kind"] not in MODALITY_KINDS:
            raise bad("specs", f"modality {m!r}: unknown kind {spec['kind']!r} (kinds: {', '.join(MODALITY_KINDS)})")
        if not isinstance(shape, list) or not shape or not all(_is_int(d) and 0 < d <= MAX_COUNT for d in shape) \
                or math.prod(shape) > MAX_COUNT:
            raise bad("specs", f"modality {m!r}: shape {shape!r} is not a list of positive sizes")
    meta = payload.get("meta", {})
    if not isinstance(meta, dict):
        raise bad("meta", f"expected a mapping, got {type(meta).__name__}")
    seed = meta.get("seed", 0)
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise bad("meta.seed", f"expected an integer from 0 to {MAX_SEED}, got {seed!r}")
    fraction = meta.get("val_fraction", 0.0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise bad("meta.val_fraction", f"expected a number in [0, 1), got {fraction!r}")
    info = meta.get("data_info", {})
    if not isinstance(info, dict):
        raise bad("meta.data_info", f"expected a mapping, got {type(info).__name__}")
    stats = info.get("standardise")
    if stats is not None:
        where = check_standardise(stats, {m: spec["shape"] for m, spec in specs.items()})
        if where:
            raise bad("meta.data_info.standardise", where)


def check_standardise(stats, shapes: dict | None = None) -> str | None:
    """What is wrong with recorded standardisation statistics ``{modality: {mean, std}}`` (each a
    number or a list of numbers, finite, std > 0, mean and std of one length, one per value of a
    sample of ``shapes[modality]`` when given), or None."""
    import math

    if not isinstance(stats, dict):
        return f"expected {{modality: {{mean, std}}}}, got {type(stats).__name__}"
    for m, entry in stats.items():
        if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
            return f"{m}: expected {{mean, std}}"
        values = {}
        for key in ("mean", "std"):
            v = entry[key]
            flat = v if isinstance(v, list) else [v]
            while flat and isinstance(flat[0], list):
                flat = [x for row in flat for x in (row if isinstance(row, list) else [row])]
            if not flat or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                   for x in flat):
                return f"{m}.{key}: expected finite numbers"
            values[key] = flat
        if len(values["mean"]) != len(values["std"]):
            return f"{m}: mean has {len(values['mean'])} values, std {len(values['std'])}"
        shape = (shapes or {}).get(m)
        if isinstance(entry["mean"], list) and shape is not None and len(values["mean"]) != math.prod(shape):
            return f"{m}: {len(values['mean'])} means for samples of shape {shape}"
        if not all(x > 0 for x in values["std"]):
            return f"{m}.std: a standard deviation must be > 0"
    return None


def code_requests(payload: dict) -> tuple[list[str], str | None]:
    """(recorded imports, recorded factory or None): the code a checkpoint asks to run."""
    imports = payload.get("imports", [])
    factory = payload.get("model_config", {}).get("factory") if isinstance(payload.get("model_config"), dict) else None
    return list(imports) if isinstance(imports, list) else [], factory


def _named_by(config, imports: list[str], factory) -> bool:
    """Whether ``config`` (the user's RunConfig being run) names all of this code already."""
    import sys

    from .plugins import is_path, module_name_for

    if config is None:
        return False
    own = [str(i) for i in getattr(config, "imports", None) or []]
    if any(entry not in own for entry in imports):
        return False
    if factory is None:
        return True
    if not isinstance(factory, str):
        return False
    model = getattr(config, "model", None)
    if factory == getattr(model, "factory", None):
        return True
    module, _, attr = factory.partition(":")
    modules = {module_name_for(Path(e)) if is_path(e) else e for e in own}
    loaded = sys.modules.get(module) if module in modules else None
    fn = getattr(loaded, attr, None) if loaded is not None and attr.isidentifier() else None
    # a function the user's own module defines, not one it imported (``from os import system``)
    return callable(fn) and getattr(fn, "__module__", None) == module


def check_code(path: str | Path, payload: dict, *, trust_code: bool = False, config=None) -> None:
    """Refuse (one line, :class:`CheckpointError`) a checkpoint that asks to import modules or call
    a factory, unless ``trust_code`` or ``config`` names that code (see the module docstring)."""
    imports, factory = code_requests(payload)
    if trust_code or (not imports and factory is None) or _named_by(config, imports, factory):
        return
    asks = ([f"imports {', '.join(map(str, imports))}"] if imports else []) + (
        [f"model.factory {factory}"] if factory is not None else [])
    raise CheckpointError(f"{path}: the file asks to run code ({'; '.join(asks)}); loading runs no code a file names "
                          "unless you trust it: pass --trust-code (trust_code=True in Python)")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *, trust_code: bool = False,
                    config=None):
    """(model in eval mode on ``device``, payload without the state dict).

    ``trust_code``: import the checkpoint's recorded ``imports`` and call its ``model.factory``;
    without it such a checkpoint is refused, unless ``config`` (the :class:`~mmdistill.config.RunConfig`
    being run) names that code itself (see the module docstring)."""
    from .errors import ConfigError
    from .models.kinds import build
    from .plugins import load_imports

    payload = read_checkpoint(path)
    missing = [k for k in ("model_config", "specs", "num_classes", "state_dict") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: incomplete mmdistill checkpoint (no {missing[0]!r})")
    check_payload(path, payload)
    specs = {m: ModalitySpec.from_dict(s) for m, s in payload["specs"].items()}
    imports = payload.get("imports", [])
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise CheckpointError(f"{path}: malformed 'imports' (expected a list of module names and files)")
    check_code(path, payload, trust_code=trust_code, config=config)
    try:
        load_imports(imports, where="imports")
    except ConfigError as err:
        raise CheckpointError(f"{path}: its recorded {err}") from None
    try:
        model = build(payload["model_config"], specs, payload["num_classes"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: its stored model config is invalid ({err})") from None
    try:
        model.load_state_dict(payload.pop("state_dict"))
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match the stored model config ({str(err).splitlines()[0]})") from None
    payload["specs"] = specs
    if payload.get("provenance") and hasattr(model, "provenance"):  # the weights' origin, not the installed package's
        model.provenance = dict(payload["provenance"])
    return model.to(device).eval(), payload
