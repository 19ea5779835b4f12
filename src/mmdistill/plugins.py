"""``imports:``: the user's modules a config loads before it is validated.

Each entry is a dotted module name (``my_pkg.models``, imported with :mod:`importlib`) or a path
to a ``.py`` file (``./my_models.py``, relative to the config file), loaded under a stable module
name derived from its absolute path, so loading it again (a checkpoint's teacher, ``evaluate``)
reuses the module. Only the listed modules run, and they run as ordinary Python code: list only
code you trust. Checkpoints record the resolved entries; loading one imports them again only when
trusted (``--trust-code``) or named by the config being run (:func:`mmdistill.checkpoint.check_code`).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Sequence

from .errors import ConfigError

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_path(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def resolve_imports(entries: Sequence[str], base: str | Path | None = None, where: str = "imports") -> list[str]:
    """Entries with file paths made absolute (relative to ``base``, the config's folder)."""
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError(f"{where}[{i}]: expected a module name or a .py file path (got {entry!r})")
        entry = entry.strip()
        if is_path(entry):
            path = Path(entry).expanduser()
            if not path.is_absolute() and base is not None:
                path = Path(base) / path
            out.append(str(path.resolve()))
        elif _DOTTED.match(entry):
            out.append(entry)
        else:
            raise ConfigError(f"{where}[{i}]: {entry!r} is neither a dotted module name nor a .py file path")
    return out


def module_name_for(path: Path) -> str:
    """The stable module name a file is loaded under: ``mmdistill_user.<stem>_<hash of its path>``."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    return f"mmdistill_user.{stem}_{digest}"


def load_imports(entries: Sequence[str], base: str | Path | None = None, where: str = "imports") -> list[str]:
    """Import every entry (see the module docstring); returns the resolved entries.

    Errors are one line naming the entry: a missing module or file, or the exception the module
    raised while it was imported."""
    resolved = resolve_imports(entries, base, where)
    for i, entry in enumerate(resolved):
        label = f"{where}[{i}] ({entries[i]})"
        try:
            if is_path(entry):
                _load_file(Path(entry), label)
            else:
                try:
                    importlib.import_module(entry)
                except ModuleNotFoundError as err:
                    if err.name and (entry == err.name or entry.startswith(err.name + ".")):
                        raise ConfigError(f"{label}: no module named {err.name!r} (is it installed, or on "
                                          f"PYTHONPATH?)") from None
                    raise
        except ConfigError:
            raise
        except Exception as err:  # the user's code failed while being imported: one line, not a traceback
            why = (str(err).splitlines() or [""])[0]
            raise ConfigError(f"{label}: importing it raised {type(err).__name__}: {why}") from None
    return resolved


def _load_file(path: Path, label: str) -> None:
    if not path.is_file():
        raise ConfigError(f"{label}: no such file {path}")
    name = module_name_for(path)
    if name in sys.modules:
        return
    if "mmdistill_user" not in sys.modules:  # the namespace the files' modules live in
        spec = importlib.machinery.ModuleSpec("mmdistill_user", None, is_package=True)
        package = importlib.util.module_from_spec(spec)
        package.__path__ = []
        sys.modules["mmdistill_user"] = package
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]  # a failed import leaves nothing half-initialised behind
        raise
