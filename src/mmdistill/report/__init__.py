"""``mmdistill report``: one self-contained HTML page from run directories.

It shows the teacher-vs-student cost table, training curves (loss and each loss term, train and
validation accuracy per epoch), confusion matrices and per-class accuracy, and the accuracy with
each subset of modalities present when an ``evaluate --all-subsets`` run is given. Figures are
matplotlib PNGs embedded as ``data:`` URIs, so the file can be mailed or archived alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..rundir import write_text
from .html import GENERATOR, render
from .runs import ReportError, Run, collect

__all__ = ["ReportError", "Run", "collect", "render", "write_report"]


def write_report(paths: Iterable[str | Path], out: str | Path, *, title: str = "mmdistill report") -> Path:
    """Write the report of the runs under ``paths`` (run directories, or folders of them) to ``out``."""
    from ..guard import Input, check_out

    paths = list(paths)
    if not paths:
        raise ReportError("report: give at least one run directory")
    check_out(out, [Input("run directory", Path(p)) for p in paths], file_kind=is_report)
    runs, groups = collect(paths)
    return write_text(Path(out), render(runs, groups, title=title))


def is_report(path: Path) -> bool:
    """Whether ``path`` is a report this command wrote (which it may replace)."""
    try:
        with open(path, "rb") as f:
            return GENERATOR.encode() in f.read(512)
    except OSError:
        return False
