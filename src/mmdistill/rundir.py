"""Run directories that never look finished when they are not.

``run.json`` is written first with ``"status": "running"`` and rewritten with ``"complete"``
(or ``"failed"`` and the error) at the end; result files (``summary.json``, ``metrics.json``) are
written atomically and only on success. An existing directory is reused only with
``overwrite=True`` and only if it is an mmdistill run directory or empty; ``resume=True`` reopens
one as it is (its files kept, ``status`` back to ``running``) to continue an interrupted run.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import MMDistillError


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write_json(path: Path, payload: Any) -> Path:
    """Write JSON atomically (temporary file, then rename)."""
    return write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


class RunDir:
    def __init__(self, path: str | Path, *, overwrite: bool = False, command: str = "", config: Any = None,
                 resume: bool = False):
        self.path = Path(path)
        if resume:
            self._reopen()
            return
        if self.path.exists() and not self.path.is_dir():
            raise MMDistillError(f"{self.path}: exists and is not a directory")
        if self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise MMDistillError(f"{self.path}: directory is not empty; pass --overwrite to replace it")
            if not (self.path / "run.json").exists():
                raise MMDistillError(f"{self.path}: not an mmdistill run directory (no run.json); refusing to overwrite it")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.info = {"status": "running", "command": command or " ".join(sys.argv), "started": self.started,
                     "config": config}
        write_json(self.path / "run.json", self.info)

    def _reopen(self) -> None:
        try:
            info = json.loads((self.path / "run.json").read_text())
        except (OSError, ValueError) as err:
            raise MMDistillError(f"{self.path / 'run.json'}: cannot reopen the run ({err})") from None
        self.started = time.time()
        info.pop("error", None)
        self.info = {**info, "status": "running", "resumed": [*info.get("resumed", []), self.started]}
        write_json(self.path / "run.json", self.info)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.info.update(status="complete", seconds=round(time.time() - self.started, 2))
        else:
            self.info.update(status="failed", error=f"{exc_type.__name__}: {exc}")
        write_json(self.path / "run.json", self.info)
        return False
