"""Checkpoints: a weights-only ``torch.save`` of a dict of tensors and plain values.

Everything needed to rebuild the model (its config, the modality specs, the number of classes,
the data config it was trained on, the user modules the config imported) is stored as
JSON-compatible values beside the state dict, so :func:`load_checkpoint` never unpickles
arbitrary objects (``weights_only=True``): it imports the recorded modules, rebuilds the model
through its kind (:mod:`mmdistill.models.kinds`, e.g. a ``factory`` with its kwargs) and loads
the weights into it.
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
    complete, and no ``.part`` file survives a failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode on ``device``, payload without the state dict)."""
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
