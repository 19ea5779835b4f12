"""CONTRIBUTING's "Add a command" example works as written: its two code blocks (a work module and
a cli.py command) are run here, on a tiny synthetic teacher, through the real command line."""
import json
import re
import sys
import types

import pytest
import typer

from conftest import REPO
from test_cli import run_cli, write

SECTION = "## Add a command"

TEACHER = {
    "seed": 0, "device": "cpu",
    "data": {"name": "synthetic", "train_size": 120, "test_size": 40},
    "model": {"encoders": {"image": {"type": "conv", "channels": [2]}, "audio": {"type": "conv", "channels": [2]}}},
    "train": {"epochs": 1, "batch_size": 64, "progress": False},
}


def section() -> str:
    """The "Add a command" section of CONTRIBUTING.md."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    assert SECTION in text, f"no '{SECTION}' section in CONTRIBUTING.md"
    return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


def blocks() -> dict[str, str]:
    """``{file named on the block's first line: code}`` of the section's python blocks."""
    return dict(re.findall(r"```python\n# (\S+)\n(.*?)```", section(), re.S))


@pytest.fixture
def teachers_command(monkeypatch):
    """The example's module installed as ``mmdistill.teachers`` and its command added to a copy of
    the CLI app (the real app is left as it is)."""
    from mmdistill import cli

    code = blocks()
    assert set(code) == {"src/mmdistill/teachers.py", "src/mmdistill/cli.py"}
    module = types.ModuleType("mmdistill.teachers")
    module.__package__ = "mmdistill"
    monkeypatch.setitem(sys.modules, "mmdistill.teachers", module)
    exec(compile(code["src/mmdistill/teachers.py"], "teachers.py", "exec"), module.__dict__)
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    for info in cli.app.registered_commands:
        app.registered_commands.append(info)
    namespace = {**vars(cli), "app": app}
    exec(compile(code["src/mmdistill/cli.py"], "cli.py", "exec"), namespace)
    monkeypatch.setattr(cli, "app", app)
    return module


def test_the_example_command_writes_a_run_folder_through_the_building_blocks(tmp_path, teachers_command, capsys):
    assert run_cli("train", write(tmp_path, "t.yaml", TEACHER), "--out", tmp_path / "t") == 0
    student = {**TEACHER, "distill": {"teacher": {"checkpoint": str(tmp_path / "t" / "best.pt")},
                                      "terms": [{"name": "kd"}]}}
    config = write(tmp_path, "s.yaml", student)
    capsys.readouterr()
    assert run_cli("teachers", config, "--out", tmp_path / "out") == 0
    assert "teachers' test metrics" in capsys.readouterr().out
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert (record["kind"], record["role"], record["status"]) == ("evaluate", "teacher", "complete")
    assert record["artefacts"] == ["metrics.json", "summary.json"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    trained = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert [m["accuracy"] for m in summary["teachers"].values()] == [trained["accuracy"]]

    assert run_cli("teachers", config, "--out", tmp_path / "out") == 2  # the shared overwrite guarantee
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli("teachers", config, "--out", tmp_path / "out", "--overwrite") == 0
    assert run_cli("teachers", write(tmp_path, "plain.yaml", TEACHER), "--out", tmp_path / "x") == 2
    assert "distill: section missing" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert run_cli("report", tmp_path / "out", "--out", tmp_path / "r.html") == 0
