"""What a report reads: run directories (``train``, ``distill``, ``evaluate``, ...) and folders of them
(the demo's ``teacher/``, ``student_scratch/``, ``student_distilled/`` with a ``summary.json``).

A run's kind and role are read from its ``run.json`` (:func:`mmdistill.rundir.describe`, which
infers them for folders written before they were recorded), never guessed here."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MMDistillError, RunDirError
from ..rundir import BEST, HISTORY, METRICS, RECORD, SUMMARY, describe

# cost fields shown when a run's metrics.json (or its parent's summary.json) has them
COST_KEYS = ("params", "macs", "onnx_ms_b1", "onnx_sps_b64", "latency_ms")


class ReportError(MMDistillError):
    """A report input is not a run directory, or one of its files cannot be read."""


#: fields the report computes with, which must hold numbers (or null) wherever they appear
NUMBER_KEYS = frozenset({"accuracy", "macro_f1", "ece", "samples", "params", "macs", "onnx_bytes", "onnx_ms_b1",
                         "onnx_p95_ms_b1", "onnx_sps_b64", "latency_ms", "teacher_agreement", "best_epoch",
                         "val_accuracy", "train_seconds", "epoch", "lr", "extra_params"})


def _is_number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def check_record(path: Path, record, where: str = "") -> dict:
    """A run file's JSON object, with the fields a report computes with checked: an object (not a
    list or a string), numbers where numbers are read, a square confusion matrix of counts.
    Nested objects (a summary's ``student``, ``teacher``) are checked the same way."""
    if not isinstance(record, dict):
        raise ReportError(f"{path}{where}: expected a JSON object, got {type(record).__name__}")
    for key, value in record.items():
        if key in NUMBER_KEYS and not _is_number(value):
            raise ReportError(f"{path}{where}: {key}: expected a number, got {value!r}")
        if key == "confusion":
            k = len(value) if isinstance(value, list) else -1
            if k < 1 or not all(isinstance(row, list) and len(row) == k and all(
                    isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in row) for row in value):
                raise ReportError(f"{path}{where}: confusion: expected a square matrix of counts")
        if isinstance(value, dict) and key in ("student", "teacher", "model", "teachers"):
            for sub in ([value] if key != "teachers" else list(value.values())):
                if isinstance(sub, dict):
                    check_record(path, sub, f"{where}: {key}")
    return record


def _read_json(path: Path):
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: cannot be read as JSON ({err})") from None
    return check_record(path, record)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise ReportError(f"{path}: cannot be read ({err})") from None
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError as err:
                raise ReportError(f"{path}: line {i} is not JSON ({err})") from None
            rows.append(check_record(path, row, f": line {i}"))
            for key, value in row.items():  # every per-epoch value is a number the curves plot
                if not _is_number(value):
                    raise ReportError(f"{path}: line {i}: {key}: expected a number, got {value!r}")
    return rows


@dataclass
class Run:
    """One run directory, as far as its files go (any of them may be missing)."""

    name: str
    path: Path
    kind: str  # what wrote it (run.json's kind: train, distill, evaluate, auto, ...), "run" when unknown
    status: str = "unknown"
    history: list[dict] = field(default_factory=list)  # metrics.jsonl
    metrics: dict = field(default_factory=dict)  # metrics.json (test metrics)
    summary: dict = field(default_factory=dict)  # summary.json
    teacher_checkpoint: str | None = None  # a distill run's (first) teacher checkpoint
    role: str = ""  # teacher, student (distilled), ... as the report labels it (from run.json's role)

    @property
    def best_epoch(self) -> int | None:
        return self.summary.get("best_epoch")


def is_run(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in (HISTORY, METRICS))


#: how the report labels a run's recorded role
ROLE_LABELS = {"student": "student (distilled)", "scratch": "student (scratch)"}


def load_run(path: Path, name: str | None = None) -> Run:
    path = Path(path)
    if (path / RECORD).is_file():
        _read_json(path / RECORD)  # a record that is not a JSON object: one line naming it
    try:
        info = describe(path) or {}
    except RunDirError as err:  # a newer record format than this mmdistill reads
        raise ReportError(str(err)) from None
    summary = _read_json(path / SUMMARY) if (path / SUMMARY).is_file() else {}
    metrics = _read_json(path / METRICS) if (path / METRICS).is_file() else {}
    history = _read_jsonl(path / HISTORY) if (path / HISTORY).is_file() else []
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    distill = config.get("distill") if isinstance(config.get("distill"), dict) else {}
    teachers = distill.get("teachers") or ([distill["teacher"]] if distill.get("teacher") else [])
    teacher_checkpoint = teachers[0].get("checkpoint") if teachers and isinstance(teachers[0], dict) else None
    run = Run(name=name or path.name, path=path, kind=info.get("kind") or "run", status=info.get("status", "unknown"),
              history=history, metrics=metrics, summary=summary, teacher_checkpoint=teacher_checkpoint)
    role = info.get("role")
    if run.kind == "evaluate":
        checkpoint = Path(str(metrics.get("checkpoint") or config.get("checkpoint") or ""))
        role = f"evaluation of {checkpoint.parent.name or checkpoint.name}".strip()
        if metrics.get("dropped"):
            role += f" without {', '.join(metrics['dropped'])}"
        if metrics.get("corrupt"):
            role += f", corrupted ({', '.join(metrics['corrupt'])})"
    run.role = ROLE_LABELS.get(role, role or "model")
    return run


@dataclass
class Group:
    """A folder of runs with its own ``summary.json`` (the demo's comparison)."""

    name: str
    path: Path
    summary: dict
    runs: list[Run]


def collect(paths) -> tuple[list[Run], list[Group]]:
    """Every run under ``paths``: a run directory is taken as is; a folder whose sub-folders are
    runs contributes each of them (with the folder's ``summary.json`` cost fields filled in)."""
    runs, groups = [], []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise ReportError(f"{path}: no such run directory")
        if is_run(path):
            runs.append(load_run(path))
            continue
        children = sorted(p for p in path.iterdir() if is_run(p))
        if not children:
            raise ReportError(f"{path}: not a run directory (no metrics.jsonl or metrics.json), "
                              "and none of its sub-folders is one")
        summary = _read_json(path / SUMMARY) if (path / SUMMARY).is_file() else {}
        order = [k for k in summary if isinstance(summary.get(k), dict)]
        children.sort(key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
        members = []
        for child in children:
            run = load_run(child)
            entry = summary.get(child.name)
            if isinstance(entry, dict):  # e.g. the demo's macs / onnx_ms_b1 per model
                for key in COST_KEYS:
                    if key in entry and key not in run.metrics:
                        run.metrics[key] = entry[key]
            members.append(run)
        runs += members
        groups.append(Group(name=path.name, path=path, summary=summary, runs=members))
    _name_uniquely(runs)
    _assign_roles(runs)
    return runs, groups


def _name_uniquely(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
    for run in runs:
        if seen[run.name] > 1:
            run.name = f"{run.path.parent.name}/{run.path.name}"


def same_file(a, b: Path) -> bool:
    if not a:
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _assign_roles(runs: list[Run]) -> None:
    """A run whose best checkpoint another run distilled from is that run's teacher, whatever it
    recorded (a model trained on its own becomes a teacher once something distils from it)."""
    teacher_ckpts = [r.teacher_checkpoint for r in runs if r.teacher_checkpoint]
    for run in runs:
        if any(same_file(c, run.path / BEST) for c in teacher_ckpts):
            run.role = "teacher"
