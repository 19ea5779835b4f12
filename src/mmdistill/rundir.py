"""Run directories that never look finished when they are not, and are never deleted by mistake.

``run.json`` is an mmdistill run record, ``{"format": "mmdistill-run", "version": 1, "status": ...}``.
It is written first with ``"status": "running"`` and rewritten at the end with ``"complete"``,
``"failed"`` (and the error) or ``"interrupted"`` (Ctrl-C, SIGTERM). Result files
(``summary.json``, ``metrics.json``) are written atomically and only on success.

While a run writes into a directory, ``run.lock`` holds its pid and host. A second run into a
directory whose lock names a live process is refused. A lock whose process is gone (the run was
killed) is stale: the run it left is reported ``interrupted`` (``run.json`` is rewritten) and the
lock is replaced.

An existing, non-empty directory is reused only with ``overwrite=True`` and only when its
``run.json`` is an mmdistill run record; anything else is refused, never deleted. With
``resume=True`` the directory of an unfinished run is reopened as it is (files kept) and marked
``running`` again; the caller continues the run.
"""
from __future__ import annotations

import contextlib

import errno
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import RunDirError

FORMAT = "mmdistill-run"
VERSION = 1
RECORD = "run.json"
LOCK = "run.lock"
#: errors of the disk rather than of the program: reported in one line, never with a traceback
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically (temporary file, then rename); no ``.part`` file survives a
    failure. The file gets the permissions ``open`` would give it (the umask's), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(path) as (fd, _):
        with os.fdopen(fd, "w") as f:
            umask = os.umask(0o022)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)
            f.write(text)
    return path


@contextlib.contextmanager
def _replacing(path: Path):
    """(fd, name) of a temporary file beside ``path`` that replaces it once the block completes; on
    any failure it is removed, and an OSError that names no file is given ``path``'s name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and err.filename is None:  # a failed write names no file: name it
            err.filename = str(path)
        raise


def append_text(path: Path, text: str) -> None:
    """Append to a file whole or not at all: a failed write (a full disk) truncates the file back
    to its previous length, so no half line is left behind."""
    with open(path, "ab", buffering=0) as f:  # unbuffered: nothing is left to flush after a failure
        size = f.seek(0, os.SEEK_END)
        try:
            view = memoryview(text.encode())
            while view:
                view = view[f.write(view):]
        except OSError:
            try:
                f.truncate(size)
            except OSError:
                pass
            raise


def copy_file(source: Path, path: Path) -> Path:
    """Copy a file atomically (temporary file beside ``path``, then rename)."""
    path = Path(path)
    with _replacing(path) as (fd, tmp):
        os.close(fd)
        shutil.copyfile(source, tmp)
    return path


def write_json(path: Path, payload: Any) -> Path:
    """Write JSON atomically (temporary file, then rename)."""
    return write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def disk_message(err: OSError, fallback: str | Path | None = None) -> str:
    """``<file>: No space left on device (ENOSPC)``: one line naming the file an OSError is about
    (``fallback`` when the error names none)."""
    name = errno.errorcode.get(err.errno or 0, "")
    where = err.filename or fallback
    return (f"{where}: " if where else "") + f"{err.strerror or err}" + (f" ({name})" if name else "")


def read_record(path: str | Path) -> dict | None:
    """The run record in ``path/run.json``; None when there is none or it is not an mmdistill run record."""
    try:
        record = json.loads((Path(path) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("format") == FORMAT and isinstance(record.get("version"), int):
        return record
    return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process not yet reaped by its parent (a zombie) is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def lock_holder(path: str | Path) -> dict | None:
    """``{"pid", "host"}`` of the live process holding ``path/run.lock``; None when unlocked or stale.

    A lock taken on another host cannot be checked and counts as live.
    """
    try:
        lock = json.loads((Path(path) / LOCK).read_text())
        pid, host = int(lock["pid"]), str(lock["host"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable or half-written: its writer died before finishing it
    if host != socket.gethostname() or _pid_alive(pid):
        return {"pid": pid, "host": host}
    return None


def recover(path: str | Path) -> dict | None:
    """The run record of ``path``, with a run left ``running`` by a dead process marked ``interrupted``.

    A stale lock (its process is gone) is removed and ``run.json`` rewritten with
    ``"status": "interrupted"``; a live run is left alone. Returns the record (None if there is none).
    """
    path = Path(path)
    record = read_record(path)
    if lock_holder(path) is not None:
        return record
    if record is not None and record.get("status") == "running":
        record.update(status="interrupted", error="the process stopped without finishing (killed or crashed)")
        try:
            write_json(path / RECORD, record)
        except OSError:
            return record  # reported as interrupted even where it cannot be rewritten
    try:
        (path / LOCK).unlink()
    except OSError:
        pass
    return record


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_run_dir(path: str | Path, *, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse, before anything is computed or written, a run directory that :class:`RunDir` would refuse.

    ``path`` must be creatable (its nearest existing parent a writable directory on a writable
    file system) and, when it exists and is not empty, locked by no live run and, for
    ``overwrite``, an mmdistill run directory (``resume``: an unfinished one).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path}: exists and is not a directory")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise RunDirError(f"{path}: cannot be created, {base} is not a directory")
    try:
        read_only = bool(os.statvfs(base).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only or not os.access(base, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if read_only else "is not writable"
        raise RunDirError(f"{path}: cannot write the run directory, {base} {why}")
    try:
        empty = not path.exists() or not any(path.iterdir())
    except OSError as err:
        raise RunDirError(disk_message(err, path)) from None
    if empty:
        if resume:
            raise RunDirError(f"{path}: no run to resume (the directory is missing or empty)")
        return
    holder = lock_holder(path)
    if holder is not None:
        raise RunDirError(f"{path}: a run (pid {holder['pid']} on {holder['host']}) is writing into this directory; "
                          f"wait for it or stop it (or delete {LOCK} if no such run exists)")
    record = recover(path)
    status = record.get("status") if record else None
    if resume:
        if record is None:
            raise RunDirError(f"{path}: not an mmdistill run directory ({RECORD} is missing or not a run record); "
                              "nothing to resume")
        if status == "complete":
            raise RunDirError(f"{path}: the run is already complete; nothing to resume")
        return
    if not overwrite:
        what = f"holds an {status} run" if status in ("interrupted", "failed") else "directory is not empty"
        raise RunDirError(f"{path}: {what}; pass --overwrite to replace it")
    if record is None:
        raise RunDirError(f"{path}: not an mmdistill run directory ({RECORD} is missing or not an mmdistill run "
                          "record); refusing to overwrite it")


class RunDir:
    """A run directory, locked while open; ``with RunDir(...) as run:`` records how the run ended.

    ``resume=True`` reopens an unfinished run's directory (files kept; the previous record is
    ``self.previous``) instead of creating a fresh one.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False, command: str = "", config: Any = None,
                 resume: bool = False):
        self.path = Path(path)
        check_run_dir(self.path, overwrite=overwrite, resume=resume)
        created = not self.path.exists()
        self._locked = False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
            self.previous = read_record(self.path) if resume else None
            if not resume:
                self._clear()
            self.started = time.time()
            info = {"format": FORMAT, "version": VERSION, "status": "running",
                    "command": command or " ".join(sys.argv), "started": self.started, "pid": os.getpid(),
                    "config": config}
            if self.previous is not None:
                info = {**{k: v for k, v in self.previous.items() if k not in ("error", "seconds")}, **info,
                        "started": self.previous.get("started", self.started),
                        "resumed": [*self.previous.get("resumed", []), self.started]}
            self.info = info
            write_json(self.path / RECORD, self.info)
        except OSError as err:
            self._unlock()
            if created:
                shutil.rmtree(self.path, ignore_errors=True)
            raise RunDirError(f"{disk_message(err, self.path)}; the run was not started") from None

    def _lock(self) -> None:
        lock = self.path / LOCK
        payload = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = lock_holder(self.path)
                if holder is not None:
                    raise RunDirError(f"{self.path}: a run (pid {holder['pid']}) is writing into this "
                                      "directory") from None
                recover(self.path)  # stale: its run is reported interrupted and the lock removed
                continue
            with os.fdopen(fd, "w") as f:
                f.write(payload)
            self._locked = True
            return
        raise RunDirError(f"{self.path}: could not take {LOCK} (another run is starting in this directory)")

    def _unlock(self) -> None:
        if self._locked:
            try:
                (self.path / LOCK).unlink()
            except OSError:
                pass
            self._locked = False

    def _clear(self) -> None:
        """Empty the directory (an mmdistill run that ``overwrite`` replaces), keeping the lock."""
        for child in self.path.iterdir():
            if child.name == LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def _remove_partial_files(self) -> None:
        for part in self.path.rglob(".*.part"):
            try:
                part.unlink()
            except OSError:
                pass

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.info.update(status="complete", seconds=round(time.time() - self.started, 2))
        elif isinstance(exc, KeyboardInterrupt):
            self.info.update(status="interrupted", error=f"{exc_type.__name__}: {exc}".rstrip(": "))
        else:
            self.info.update(status="failed", error=f"{exc_type.__name__}: {exc}")
        self._remove_partial_files()
        try:
            write_json(self.path / RECORD, self.info)
            written = True
        except OSError:
            written = False  # the lock stays: once this process is gone the run reads as interrupted
        if written:
            self._unlock()
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            said = f"{RECORD} says failed" if written else f"{RECORD} could not be updated"
            raise RunDirError(f"{disk_message(exc, self.path)}; the run stopped, {said}") from None
        return False
