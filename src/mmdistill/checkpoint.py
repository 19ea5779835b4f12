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
            except Exception:
                if writer.error is not None:  # torch may wrap the disk's error in its own RuntimeError
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
    """A file for ``torch.save`` that writes every byte (retrying short writes) and keeps the
    OSError a write raised (disk full, file too large), which torch would report as its own."""

    def __init__(self, f, name: str):
        self.f, self.name, self.error = f, name, None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[self.f.write(view):]
        except OSError as err:
            self.error = err
            raise
        return len(data)

    def flush(self) -> None:
        self.f.flush()


def read_checkpoint(path: str | Path) -> dict:
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
    try:
        specs = {m: ModalitySpec.from_dict(s) for m, s in payload["specs"].items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: malformed 'specs' (expected {{modality: {{name, kind, shape}}}})") from None
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
