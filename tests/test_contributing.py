"""CONTRIBUTING.md's worked examples run as written.

Each ``## Add a ...`` section with a ``<!-- run -->`` block runs in a fresh folder: every block
marked ``<!-- file: NAME -->`` is written to ``NAME``, then every ``<!-- run -->`` block runs in
order (``python``: as a script; ``console``: line by line, ``mmdistill ...`` as the CLI), each in a
new process so that a section's registrations never leak into another's.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"
BLOCK = re.compile(r"<!-- (file: (?P<name>[\w./-]+)|run) -->\s*\n```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)


def sections() -> dict[str, str]:
    """``## `` heading -> the section's text."""
    parts = re.split(r"^## (.+)$", GUIDE.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


RUNNABLE = [title for title, text in sections().items() if "<!-- run -->" in text]
#: sections whose example needs more than a fresh folder (e.g. a module inside the package), run by a test of their own
OWN_TEST = {"Add a command": "test_contributing_command.py", "Add a data source": "test_contributing_data.py",
            "Add a modality kind": "test_contributing_data.py"}


def test_every_extension_section_is_runnable_and_counts_its_files():
    assert {"Add a loss", "Add an encoder", "Add a model kind"} <= set(RUNNABLE)
    for title, text in sections().items():
        if title.startswith("Add a"):
            assert title in RUNNABLE or (Path(__file__).parent / OWN_TEST.get(title, "-")).is_file(), \
                f"{title}: no <!-- run --> block and no test of its own"
            assert re.search(r"Files\s+touched: \*\*\d+\*\*", text), f"{title}: no 'Files touched: **N**'"


def _run(args: list[str], cwd: Path, what: str) -> None:
    path = os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")]))  # the section's own modules
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{what} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("title", RUNNABLE)
def test_section_runs_as_written(title, tmp_path):
    blocks = list(BLOCK.finditer(sections()[title]))
    for block in blocks:
        if block["name"]:
            (tmp_path / block["name"]).write_text(block["code"])
    for i, block in enumerate(b for b in blocks if not b["name"]):
        if block["lang"] == "python":
            _run([sys.executable, "-c", block["code"]], tmp_path, f"{title}: python block {i}")
        else:
            for line in filter(None, (ln.strip() for ln in block["code"].splitlines())):
                args = shlex.split(line)
                if args[0] == "mmdistill":
                    args = [sys.executable, "-m", "mmdistill", *args[1:]]
                _run(args, tmp_path, f"{title}: {line}")
