"""Run directories that never look finished when they are not, and are never deleted by mistake.

``run.json`` is an mmdistill run record, ``{"format": "mmdistill-run", "version": 2, "status": ...}``
that says what the folder is: ``kind`` (the command that wrote it, one of :data:`KINDS`), ``role``
(``teacher``, ``student``, ``scratch``, ``model``, ... where the command knows it, else null) and,
once the run ends, ``artefacts`` (the files it wrote, relative to the folder). Folders written before
version 2 are read through :func:`describe`, which infers these fields once. It is written first with ``"status": "running"`` and rewritten at the end with ``"complete"``,
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
#: 2: ``kind``, ``role`` and ``artefacts`` recorded (1: without them; :func:`describe` infers them)
VERSION = 2
#: what a run folder can be: the command that wrote it
KINDS = ("train", "distill", "evaluate", "diagnose", "auto", "demo", "export", "profile")

# The file names of a run folder, defined here once; every module names them through these.
RECORD = "run.json"  # the run record (this module)
LOCK = "run.lock"  # held while a run writes into the folder
BEST = "best.pt"  # weights-only checkpoint of the best validation epoch
LAST = "last.pt"  # weights-only checkpoint of the last epoch
STATE = "state.pt"  # training state after the last complete epoch (--resume)
HISTORY = "metrics.jsonl"  # one line per epoch
METRICS = "metrics.json"  # test metrics (train, distill, auto) or the evaluation's (evaluate)
SUMMARY = "summary.json"  # what the run found, written on success
DIAGNOSE = "diagnose.json"  # diagnose's evidence, score and verdict
PROFILE = "profile.json"  # profile's cost per model
MODEL_JSON = "model.json"  # an export's description (also named in export/runtime.py, which stands alone)
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
    if record is None and _legacy_kind(path) is None:
        raise RunDirError(f"{path}: not an mmdistill run directory ({RECORD} is missing or not an mmdistill run "
                          "record); refusing to overwrite it")


def artefacts(path: str | Path) -> list[str]:
    """The files in a run folder, relative to it and sorted, less the record and the lock; a
    sub-folder holding a run of its own (the demo's ``teacher/``) is listed as ``name/``."""
    path = Path(path)
    found = []

    def walk(folder: Path, prefix: str) -> None:
        for child in sorted(folder.iterdir()):
            name = prefix + child.name
            if child.is_dir() and not child.is_symlink():
                if (child / RECORD).is_file():
                    found.append(name + "/")
                else:
                    walk(child, name + "/")
            elif prefix or child.name not in (RECORD, LOCK):
                found.append(name)

    try:
        walk(path, "")
    except OSError:
        pass  # the listing is a description; a folder that cannot be read is described by what was found
    return found


def _read_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _legacy_kind(path: Path) -> str | None:
    """``export`` or ``profile`` for a folder those commands wrote before they kept a run record
    (an export's ``model.json``; a folder holding nothing but ``profile.json``), else None."""
    if str(_read_object(path / MODEL_JSON).get("format", "")).startswith("mmdistill-export/"):
        return "export"
    try:
        names = {p.name for p in path.iterdir()}
    except OSError:
        return None
    return "profile" if names == {PROFILE} else None


def _infer_kind(path: Path, record: dict) -> str | None:
    """The command that wrote a folder of format version 1, from the files it holds."""
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    summary = _read_object(path / SUMMARY)
    if (path / DIAGNOSE).is_file():
        return "diagnose"
    if "auto" in summary or (path / "candidates").is_dir():
        return "auto"
    if {"teacher", "student"} <= set(config):  # the demo's two recipes
        return "demo"
    if "student" in summary or config.get("distill"):
        return "distill"
    if "model" in summary or (path / HISTORY).is_file():
        return "train"
    if "checkpoint" in config or "checkpoint" in _read_object(path / METRICS):
        return "evaluate"
    return _legacy_kind(path)


def _infer_role(path: Path, kind: str | None) -> str | None:
    """A version-1 run's role: from its kind, and for a train run from the demo's folder names."""
    if kind in ("distill", "auto"):
        return "student"
    if kind == "evaluate":
        return "evaluation"
    if kind == "train":
        return "teacher" if path.name == "teacher" else "scratch" if "scratch" in path.name else "model"
    return None


def describe(path: str | Path) -> dict | None:
    """The run record of ``path`` with ``kind``, ``role`` and ``artefacts`` always present: as
    written (version 2), or inferred here, once, for a folder written before (version 1; version 0:
    an export or profile folder, or a run's result files, without a record); None when ``path`` is
    no mmdistill run folder.
    A record of a newer format than this mmdistill reads is refused in one line naming its version."""
    path = Path(path)
    record = read_record(path)
    if record is None:  # an export or profile folder, or a run from before run.json was written
        kind = (_legacy_kind(path) or _infer_kind(path, {})) if path.is_dir() else None
        if kind is None:
            return None
        record = {"format": FORMAT, "version": 0, "status": "unknown" if kind not in ("export", "profile") else
                  "complete"}
    else:
        kind = record.get("kind")
    if record["version"] > VERSION:
        raise RunDirError(f"{path / RECORD}: run record version {record['version']}, newer than this mmdistill "
                          f"reads (version {VERSION}); upgrade mmdistill to read it")
    if record["version"] < VERSION:
        kind = kind or _infer_kind(path, record)
        record = {**record, "kind": kind, "role": record.get("role") or _infer_role(path, kind),
                  "artefacts": record.get("artefacts") or artefacts(path)}
    return record


class RunDir:
    """A run directory, locked while open; ``with RunDir(...) as run:`` records how the run ended.

    ``kind`` (one of :data:`KINDS`) and ``role`` say what the run is; its record lists, once it
    ends, the files it wrote (``artefacts``). ``resume=True`` reopens an unfinished run's directory
    (files kept; the previous record is ``self.previous``) instead of creating a fresh one.
    """

    def __init__(self, path: str | Path, *, kind: str | None = None, role: str | None = None,
                 overwrite: bool = False, command: str = "", config: Any = None, resume: bool = False):
        self.path = Path(path)
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
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
            info = {"format": FORMAT, "version": VERSION, "kind": kind, "role": role, "status": "running",
                    "command": command or " ".join(sys.argv), "started": self.started, "pid": os.getpid(),
                    "config": config, "artefacts": []}
            if self.previous is not None:
                kept = {k: v for k, v in self.previous.items() if k not in ("error", "seconds")}
                if self.previous["version"] < VERSION:  # a run started before kind and role were recorded
                    described = describe(self.path) or {}
                    kept.update(kind=described.get("kind"), role=described.get("role"))
                info = {**kept, **info, "kind": kind or kept.get("kind"), "role": role or kept.get("role"),
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
        self.info["artefacts"] = artefacts(self.path)
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
