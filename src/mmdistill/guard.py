"""Outputs never clobber inputs: one check every command makes before it writes or deletes.

A command first lists what it reads (:class:`Input`: checkpoints, teachers, export folders, config
files, the data files a data config names, the data root) and then :func:`check_out` refuses,
in one line naming both, an ``--out`` that

* equals one of them, or contains one (``--overwrite`` would delete it, a run would replace it);
* lies inside one (a folder written into an export or an ``npy_dir`` data folder); a data root
  may hold run folders, so for it only the first rule applies;
* for a single-file output (``predict --out``, ``report --out``): replaces an existing file of a
  run directory or an export folder, unless that file is this command's own kind of output (a
  predictions file, a report), so writing ``RUN/report.html`` twice works but ``RUN/metrics.json``
  or ``EXPORT/model.json`` are refused.

Paths are compared resolved (symbolic links followed, ``..`` removed).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from .errors import ConfigError


class Input(NamedTuple):
    """Something a command reads: ``label`` names it in messages ("checkpoint", "data file");
    ``root``: an output may lie inside it (a data root), only not be it or contain it."""

    label: str
    path: Path
    root: bool = False


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and child.is_relative_to(parent)


def data_inputs(data_cfg, where: str = "data") -> list[Input]:
    """The files a data config reads: its ``path`` option (npz, npy_dir, manifest; relative to the
    root) or else, for datasets read from the data root, the root; the same for ``unlabelled``."""
    from .data.root import data_root

    if data_cfg is None:
        return []
    options = data_cfg.options
    try:
        root = data_root(data_cfg.root)
    except Exception:  # an unusable root is reported by the data loader, naming it
        return []
    found = []
    if isinstance(options.get("path"), str):
        path = Path(options["path"]).expanduser()
        found.append(Input(f"{where}.path", path if path.is_absolute() else root / path))
    elif data_cfg.name != "synthetic":  # the built-in datasets read the root; synthetic reads nothing
        found.append(Input(f"{where} root", root, root=True))
    return found + data_inputs(getattr(data_cfg, "unlabelled", None), f"{where}.unlabelled")


def config_inputs(cfg, config_path: str | os.PathLike | None = None) -> list[Input]:
    """The config file (when given) and the data files of a run config."""
    found = [Input("config", Path(config_path))] if config_path is not None else []
    return found + data_inputs(cfg.data)


def checkpoint_inputs(path: str | os.PathLike, payload: dict | None = None, label: str = "checkpoint",
                      data_root: str | None = None) -> list[Input]:
    """A checkpoint and the data files its recorded data config (``meta.data``; ``data_root``
    replacing its root, as the command does) reads."""
    from .checkpoint_data import recorded_data_config

    found = [Input(label, Path(path))]
    if payload is not None:
        try:
            found += data_inputs(recorded_data_config(path, payload, data_root), f"{label}'s data")
        except Exception:  # a missing or invalid recorded data config is reported where the data is built
            pass
    return found


def check_out(out: str | os.PathLike | None, inputs: Iterable[Input], *, option: str = "--out",
              file_kind: Callable[[Path], bool] | None = None) -> None:
    """Refuse (:class:`ConfigError`, one line naming both) an output that would clobber an input
    (see the module docstring). ``file_kind``: the output is a single file, and this tells whether
    an existing file is this command's own kind of output (which it may replace)."""
    if out is None:
        return
    target = _real(out)
    for item in inputs:
        source = _real(item.path)
        where = f"{option} {out}"
        if target == source:
            raise ConfigError(f"{where}: is the {item.label} {item.path} this command reads; write elsewhere")
        if _inside(source, target):
            raise ConfigError(f"{where}: contains the {item.label} {item.path}, which this command reads; "
                              "choose another output")
        if _inside(target, source) and not item.root and not (file_kind is not None and source.is_dir()):
            raise ConfigError(f"{where}: lies inside the {item.label} {item.path}, which this command reads; "
                              "choose another output")
    if file_kind is not None:
        _check_file_out(Path(out), target, file_kind, option)


def _check_file_out(out: Path, target: Path, file_kind: Callable[[Path], bool], option: str) -> None:
    if target.is_dir():
        raise ConfigError(f"{option} {out}: is a directory; give a file name")
    if not target.exists():
        return
    owner = owning_folder(target)
    if owner is not None and not file_kind(target):
        folder, what = owner
        raise ConfigError(f"{option} {out}: would replace a file of the {what} {folder}; write elsewhere")


def owning_folder(path: Path) -> tuple[Path, str] | None:
    """(folder, "run directory" or "export folder") of the nearest mmdistill run directory or
    export folder holding ``path``; None when there is none."""
    from .rundir import read_record

    for folder in _real(path).parents:
        if read_record(folder) is not None:
            return folder, "run directory"
        if is_export(folder):
            return folder, "export folder"
    return None


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds an mmdistill export's ``model.json`` (the name of
    :data:`mmdistill.export.runtime.MODEL_JSON`, spelt out: the export commands import this module)."""
    try:
        meta = json.loads((folder / "model.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and str(meta.get("format", "")).startswith("mmdistill-export/")


def first_line(path: Path, limit: int = 4096) -> str:
    """The first line of a file (at most ``limit`` bytes), '' when unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read(limit).split(b"\n", 1)[0].decode("utf-8", "replace")
    except OSError:
        return ""
