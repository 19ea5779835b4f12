"""Trust nothing you load (issue 19, safety half).

* Loading a checkpoint runs no code it names (recorded ``imports``, ``model.factory``) unless the
  user opts in (``--trust-code``, ``trust_code=True``) or their own config names that code.
* An ``--out`` never removes or replaces one of the command's own inputs.
* A full disk during any write is one line, exit 2, and leaves no half-written file.

Hostile files are checked with marker files: a ``.py`` whose import writes a marker, and a factory
``subprocess:call`` whose crafted modality names are a shell command that writes one.
"""
import errno
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import run_cli, write
from mmdistill.checkpoint import check_code, load_checkpoint, read_checkpoint
from mmdistill.errors import CheckpointError
from mmdistill.plugins import module_name_for

torch.set_num_threads(1)

DATA = {"name": "synthetic", "train_size": 96, "test_size": 32, "num_classes": 4}
TRAIN = {"epochs": 1, "batch_size": 32, "progress": False, "val_fraction": 0.25}
MODEL = {"encoders": {"image": {"type": "mlp", "hidden": [8]}, "audio": {"type": "mlp", "hidden": [8]}},
         "fusion": {"type": "concat"}}


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained run (``run/best.pt``), a checkpoint that imports a marker-writing file, one whose
    factory is ``subprocess:call`` writing a marker, and a fresh marker path per test."""
    w = tmp_path_factory.mktemp("trust")
    cfg = {"seed": 0, "device": "cpu", "data": DATA, "train": TRAIN, "model": MODEL}
    assert run_cli("train", write(w, "t.yaml", cfg), "--out", w / "run") == 0
    payload = read_checkpoint(w / "run" / "best.pt")
    assert payload["imports"] == [] and "factory" not in payload["model_config"]

    # imports: a file whose import appends to a marker
    (w / "evil.py").write_text(f"with open({str(w / 'imported.txt')!r}, 'a') as f:\n    f.write('x')\n")
    torch.save({**payload, "imports": [str(w / "evil.py")]}, w / "imports.pt")
    # factory: subprocess.call(specs, num_classes) runs the modality names as a command
    spec = next(iter(payload["specs"].values()))
    touch = shutil.which("touch")
    torch.save({**payload, "model_config": {"factory": "subprocess:call", "kwargs": {}},
                "specs": {touch: {**spec, "name": touch}, str(w / "called.txt"): {**spec, "name": str(w / "called.txt")}},
                "imports": []}, w / "factory.pt")
    return SimpleNamespace(dir=w, run=w / "run", imports=w / "imports.pt", factory=w / "factory.pt",
                           imported=w / "imported.txt", called=w / "called.txt", cfg=cfg)


@pytest.fixture
def fresh(world):
    """No marker yet, and the marker module not imported in this process (a file loads once)."""
    for marker in (world.imported, world.called):
        marker.unlink(missing_ok=True)
    sys.modules.pop(module_name_for(world.dir / "evil.py"), None)
    return world


# --- loading runs nothing ------------------------------------------------------------------------
LOADERS = {
    "evaluate": lambda w, ckpt, out: ("evaluate", ckpt, "--out", out, "--no-cost"),
    "export": lambda w, ckpt, out: ("export", ckpt, "--out", out),
    "profile": lambda w, ckpt, out: ("profile", ckpt, "--out", out, "--repeats", "2"),
    "distill": lambda w, ckpt, out: ("distill", write(w.dir, f"s_{out.name}.yaml", {
        **w.cfg, "distill": {"teacher": {"checkpoint": str(ckpt)}, "terms": [{"name": "kd"}]}}), "--out", out),
}


@pytest.mark.parametrize("command", list(LOADERS))
def test_a_checkpoint_s_imports_run_only_with_trust_code(fresh, tmp_path, capsys, command):
    args = LOADERS[command](fresh, fresh.imports, tmp_path / "out")
    assert run_cli(*args) == 2
    err = one_line(capsys)
    assert str(fresh.dir / "evil.py") in err and "--trust-code" in err
    assert not fresh.imported.exists() and not (tmp_path / "out").exists()
    assert run_cli(*args, "--trust-code") == 0
    assert fresh.imported.read_text() == "x"  # trusted: imported (once)


@pytest.mark.parametrize("command", list(LOADERS))
def test_a_checkpoint_s_factory_runs_only_with_trust_code_and_its_result_is_checked(fresh, tmp_path, capsys,
                                                                                     command):
    args = LOADERS[command](fresh, fresh.factory, tmp_path / "out")
    assert run_cli(*args) == 2
    err = one_line(capsys)
    assert "model.factory subprocess:call" in err and "--trust-code" in err
    assert not fresh.called.exists() and not (tmp_path / "out").exists()
    # trusted, it runs (the user said so), and what it returns is refused before anything else
    assert run_cli(*args, "--trust-code") == 2
    assert "subprocess:call returned int, not a torch nn.Module" in one_line(capsys)
    assert fresh.called.exists() and not (tmp_path / "out").exists()


def test_predict_runs_no_code_an_export_names(fresh, tmp_path, capsys):
    """An ONNX export is data: model.json's recorded imports/factory and a planted
    mmdistill_runtime.py are never run by predict (no flag exists because none is needed)."""
    export = tmp_path / "export"
    assert run_cli("export", fresh.run / "best.pt", "--out", export) == 0
    meta = json.loads((export / "model.json").read_text())
    meta.update(imports=[str(fresh.dir / "evil.py")], model_config={"factory": "subprocess:call", "kwargs": {}})
    (export / "model.json").write_text(json.dumps(meta))
    (export / "mmdistill_runtime.py").write_text((fresh.dir / "evil.py").read_text())
    capsys.readouterr()
    assert run_cli("predict", export, "--data", write(tmp_path, "d.yaml", {"data": DATA}),
                   "--out", tmp_path / "p.jsonl") == 0
    assert not fresh.imported.exists() and not fresh.called.exists()
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == DATA["test_size"]


def test_the_api_refuses_untrusted_code_and_names_it(fresh):
    with pytest.raises(CheckpointError, match=r"asks to run code \(imports .*evil\.py\).*trust_code=True"):
        load_checkpoint(fresh.imports)
    with pytest.raises(CheckpointError, match=r"model\.factory subprocess:call"):
        load_checkpoint(fresh.factory)
    assert not fresh.imported.exists() and not fresh.called.exists()
    model, payload = load_checkpoint(fresh.imports, trust_code=True)
    assert fresh.imported.exists() and isinstance(model, torch.nn.Module)


def test_code_the_user_s_own_config_names_needs_no_flag(tmp_path, monkeypatch):
    """A checkpoint recording exactly the imports the config imports, and a factory that is the
    config's own or a function defined in one of its modules, loads without the opt-in; a name the
    module merely imported (``from os import system``) or a dotted path through it does not."""
    package = tmp_path / "trustpkg_a1"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text("from os import system\n\ndef build(specs, num_classes):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import trustpkg_a1.nets  # noqa: F401  (the config's imports: have been imported when it is run)

    cfg = SimpleNamespace(imports=["trustpkg_a1.nets"], model=SimpleNamespace(factory="trustpkg_a1.nets:other"))
    ok = [{"imports": ["trustpkg_a1.nets"], "model_config": {}},
          {"imports": ["trustpkg_a1.nets"], "model_config": {"factory": "trustpkg_a1.nets:build"}},
          {"imports": [], "model_config": {"factory": "trustpkg_a1.nets:other"}}]
    for payload in ok:
        check_code("c.pt", payload, config=cfg)
    refused = [{"imports": ["trustpkg_a1.nets", "this"], "model_config": {}},
               {"imports": [], "model_config": {"factory": "trustpkg_a1.nets:system"}},
               {"imports": [], "model_config": {"factory": "trustpkg_a1.nets:os.system"}},
               {"imports": [], "model_config": {"factory": "os:system"}}]
    for payload in refused:
        with pytest.raises(CheckpointError, match="--trust-code"):
            check_code("c.pt", payload, config=cfg)
        check_code("c.pt", payload, trust_code=True)


def test_an_hf_model_folder_with_custom_code_is_refused_without_running_it(tmp_path):
    """``model: {hf: DIR}`` where DIR ships modelling code (``auto_map``): transformers is called
    with trust_remote_code=False (no prompt, nothing imported) and local files only."""
    pytest.importorskip("transformers")
    from mmdistill.data.dataset import ModalitySpec
    from mmdistill.errors import ConfigError
    from mmdistill.models.kinds import build

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evilnet", "hidden_size": 8,
        "auto_map": {"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}}))
    (folder / "modeling_evil.py").write_text(f"open({str(tmp_path / 'ran.txt')!r}, 'w').write('ran')\n")
    with pytest.raises(ConfigError, match="model.hf: .*custom code"):
        build({"hf": str(folder), "modality": "t"}, {"t": ModalitySpec("t", "text", (2, 8))}, 3)
    assert not (tmp_path / "ran.txt").exists()


# --- outputs never clobber inputs ----------------------------------------------------------------
def copy_run(world, tmp_path) -> Path:
    """A private copy of the trained run directory (tests change it)."""
    run = tmp_path / "D"
    shutil.copytree(world.run, run)
    return run


def intact(run: Path, world) -> bool:
    return (run / "best.pt").read_bytes() == (world.run / "best.pt").read_bytes()


def student_config(world, tmp_path, teacher: Path) -> Path:
    return write(tmp_path, "s.yaml", {**world.cfg, "distill": {"teacher": {"checkpoint": str(teacher)},
                                                              "terms": [{"name": "kd"}]}})


@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_evaluate_export_profile_refuse_an_out_holding_their_checkpoint(world, tmp_path, capsys, extra):
    run = copy_run(world, tmp_path)
    for args in (("evaluate", run / "best.pt", "--out", run, "--no-cost"),
                 ("export", run / "best.pt", "--out", run),
                 ("profile", run / "best.pt", "--out", run, "--repeats", "2"),
                 ("profile", world.run / "best.pt", "--compare", run / "best.pt", "--out", tmp_path, "--repeats", "2")):
        if args[0] == "profile" and extra:
            continue  # profile has no --overwrite
        assert run_cli(*args, *extra) == 2
        err = one_line(capsys)
        assert f"--out {args[args.index('--out') + 1]}: contains the checkpoint" in err and "best.pt" in err, err
        assert intact(run, world) and sorted(p.name for p in run.iterdir()) == sorted(
            p.name for p in world.run.iterdir())


@pytest.mark.parametrize("mode", [["--overwrite"], ["--resume"], ["--auto", "--overwrite"]])
def test_distill_refuses_an_out_holding_its_teacher(world, tmp_path, capsys, mode):
    run = copy_run(world, tmp_path)
    assert run_cli("distill", student_config(world, tmp_path, run / "best.pt"), "--out", run, *mode) == 2
    err = one_line(capsys)
    assert f"--out {run}: contains the teacher checkpoint {run / 'best.pt'}" in err, err
    assert intact(run, world)


def test_diagnose_refuses_an_out_holding_its_teacher(world, tmp_path, capsys):
    run = copy_run(world, tmp_path)
    assert run_cli("diagnose", student_config(world, tmp_path, run / "best.pt"), "--out", run, "--overwrite") == 2
    assert f"--out {run}: contains the teacher checkpoint" in one_line(capsys)
    assert intact(run, world)


def test_train_refuses_an_out_holding_its_data_or_config(world, tmp_path, capsys):
    import numpy as np

    run = copy_run(world, tmp_path)  # an mmdistill run directory, which --overwrite would empty
    rng = np.random.default_rng(0)
    np.savez(run / "data.npz", x=rng.normal(size=(40, 6)).astype("float32"), label=np.arange(40) % 4)
    data = (run / "data.npz").read_bytes()
    cfg = {"seed": 0, "device": "cpu", "data": {"name": "npz", "path": str(run / "data.npz")}, "train": TRAIN,
           "model": {"encoders": {"x": {"type": "mlp", "hidden": [4]}}}}
    assert run_cli("train", write(tmp_path, "npz.yaml", cfg), "--out", run, "--overwrite") == 2
    assert f"--out {run}: contains the data.path {run / 'data.npz'}" in one_line(capsys)
    assert (run / "data.npz").read_bytes() == data and intact(run, world)
    # the config file itself, relative data paths (to the data root) and a data folder the output lies in
    cfg["data"] = {"name": "npz", "path": "data.npz", "root": str(run)}
    assert run_cli("train", write(run, "c.yaml", cfg), "--out", run, "--overwrite") == 2
    assert "contains the config" in one_line(capsys)
    assert run_cli("train", write(tmp_path, "c.yaml", cfg), "--out", run, "--overwrite") == 2
    assert f"contains the data.path {run / 'data.npz'}" in one_line(capsys)
    (tmp_path / "arrays").mkdir()
    cfg["data"] = {"name": "npy_dir", "path": str(tmp_path / "arrays")}
    assert run_cli("train", write(tmp_path, "c.yaml", cfg), "--out", tmp_path / "arrays" / "run") == 2
    assert f"lies inside the data.path {tmp_path / 'arrays'}" in one_line(capsys)
    assert not (tmp_path / "arrays" / "run").exists() and (run / "data.npz").read_bytes() == data


def test_demo_refuses_an_out_holding_the_data_root(tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"format": "mmdistill-run", "version": 1, "status": "complete"}))
    (out / "data").mkdir()
    (out / "data" / "keep.txt").write_text("data")
    monkeypatch.setenv("MMDISTILL_DATA", str(out / "data"))
    assert run_cli("demo", "--out", out, "--overwrite", "--quick") == 2
    assert f"--out {out}: contains the data root {out / 'data'}" in one_line(capsys)
    assert (out / "data" / "keep.txt").read_text() == "data"


def test_single_file_outputs_never_replace_a_run_s_or_an_export_s_files(world, tmp_path, capsys):
    run = copy_run(world, tmp_path)
    export = tmp_path / "export"
    assert run_cli("export", run / "best.pt", "--out", export) == 0
    data = write(tmp_path, "d.yaml", {"data": DATA})
    capsys.readouterr()
    before = {p: p.read_bytes() for p in [*run.iterdir(), *export.iterdir()]}
    for target in (run / "metrics.json", run / "best.pt", export / "model.json", export / "model.onnx"):
        assert run_cli("predict", export, "--data", data, "--out", target) == 2
        assert f"--out {target}: would replace a file of the " in one_line(capsys)
        assert run_cli("report", run, "--out", target) == 2
        assert f"--out {target}: would replace a file of the " in one_line(capsys)
    for target, what in ((export, "is the export folder"), (data, "is the data config"), (run, "is the run directory")):
        assert run_cli("predict" if what != "is the run directory" else "report",
                       *((export, "--data", data) if what != "is the run directory" else (run,)), "--out", target) == 2
        assert what in one_line(capsys)
    assert before == {p: p.read_bytes() for p in [*run.iterdir(), *export.iterdir()]}
    # their own outputs inside a run or export folder may be written, and written again
    for _ in range(2):
        assert run_cli("predict", export, "--data", data, "--out", export / "predictions.jsonl") == 0
        assert run_cli("report", run, "--out", run / "report.html") == 0
    capsys.readouterr()
    assert run_cli("report", run, "--out", export / "predictions.jsonl") == 2  # a report does not replace predictions
    assert "would replace a file of the export folder" in one_line(capsys)


def test_export_overwrite_removes_only_what_an_export_wrote(world, tmp_path, capsys):
    export = tmp_path / "export"
    assert run_cli("export", world.run / "best.pt", "--out", export) == 0
    (export / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert run_cli("export", world.run / "best.pt", "--out", export, "--overwrite") == 2
    assert f"--out {export}: holds notes.txt, which no export wrote" in one_line(capsys)
    assert (export / "notes.txt").read_text() == "mine" and (export / "model.onnx").is_file()
    (export / "notes.txt").unlink()
    (export / "sub").mkdir()  # a folder, even one named like an export file, is not an export's
    assert run_cli("export", world.run / "best.pt", "--out", export, "--overwrite") == 2
    assert "holds sub, which no export wrote" in one_line(capsys)
    (export / "sub").rmdir()
    assert run_cli("export", world.run / "best.pt", "--out", export, "--overwrite") == 0
    written = json.loads((export / "model.json").read_text())["files"]
    assert sorted(p.name for p in export.iterdir()) == sorted(["model.json", "run.json", *written.values()])


# --- a full disk ---------------------------------------------------------------------------------
FULL_DISK = r'''
import contextlib, io, json, os, resource, signal, sys
from pathlib import Path

from mmdistill.cli import run
from mmdistill.rundir import append_text

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG, as on a full disk
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
results = {}
for name, limit, argv in json.loads(sys.argv[1]):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run(argv)
    results[name] = [code, err.getvalue()]
resource.setrlimit(resource.RLIMIT_FSIZE, (150, hard))
log = Path(sys.argv[2])
log.write_text("x" * 99 + "\n")
try:
    append_text(log, "y" * 99 + "\n")  # 50 bytes fit, the rest does not
except OSError as e:
    results["append"] = [e.errno, log.read_text()]
print(json.dumps(results))
'''


def test_a_full_disk_is_one_line_exit_2_and_leaves_nothing_half_written(world, tmp_path):
    """Every writer (checkpoints, run records, ONNX and TorchScript exports, predictions, reports,
    profiles, metrics.jsonl) under a real write limit (RLIMIT_FSIZE: a write past it fails with
    EFBIG, as one on a full disk fails with ENOSPC; both are disk errors)."""
    import os
    import subprocess
    import sys

    export = tmp_path / "export0"
    assert run_cli("export", world.run / "best.pt", "--out", export) == 0
    data = write(tmp_path, "d.yaml", {"data": DATA})
    t = tmp_path
    commands = [
        ["train", 8000, ["train", str(write(t, "t.yaml", world.cfg)), "--out", str(t / "run")]],
        ["evaluate", 8000, ["evaluate", str(world.run / "best.pt"), "--out", str(t / "eval")]],
        ["export", 8000, ["export", str(world.run / "best.pt"), "--out", str(t / "export")]],
        ["torchscript", 8000, ["export", str(world.run / "best.pt"), "--out", str(t / "ts"), "--format", "torchscript"]],
        ["predict", 1000, ["predict", str(export), "--data", str(data), "--out", str(t / "p.jsonl")]],
        ["report", 8000, ["report", str(world.run), "--out", str(t / "r.html")]],
        ["profile", 8000, ["profile", str(world.run / "best.pt"), "--out", str(t / "prof"), "--repeats", "2"]],
    ]
    done = subprocess.run([sys.executable, "-c", FULL_DISK, json.dumps(commands), str(t / "log.jsonl")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "MMDISTILL_DATA": str(t)})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    for name, (code, err) in results.items():
        if name == "append":
            continue
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "File too large (EFBIG)" in lines[0], (name, err)
    assert str(t / "run" / "last.pt") in results["train"][1]
    for name in ("export", "torchscript", "predict", "report"):
        assert str(t / {"export": "export", "torchscript": "ts", "predict": "p.jsonl", "report": "r.html"}[name]) in \
            results[name][1], results[name]
    assert not list(t.rglob("*.part")) and not list(t.rglob(".*.part*")), list(t.rglob("*part*"))
    for gone in ("export", "ts", "p.jsonl", "r.html", "prof/profile.json", "run/last.pt", "run/best.pt",
                 "eval/metrics.json"):
        assert not (t / gone).exists(), gone
    for folder in ("run", "eval"):
        assert json.loads((t / folder / "run.json").read_text())["status"] == "failed"
    assert results["append"] == [errno.EFBIG, "x" * 99 + "\n"]  # the half line was taken back


def test_a_full_disk_writing_predictions_or_a_report_says_enospc(world, tmp_path, capsys, monkeypatch):
    import os

    import mmdistill.rundir as rundir

    real = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def fileno(self):
            return self.f.fileno()

        def write(self, text):
            self.f.write(text[:len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "fdopen", lambda fd, *a, **k: Full(real(fd, *a, **k)))
    export = tmp_path / "export"
    shutil.copytree(world.dir / "run", tmp_path / "run")
    assert run_cli("report", tmp_path / "run", "--out", tmp_path / "r.html") == 2
    assert one_line(capsys) == f"error: {tmp_path / 'r.html'}: No space left on device (ENOSPC)"
    monkeypatch.undo()
    assert run_cli("export", world.run / "best.pt", "--out", export) == 0
    monkeypatch.setattr(rundir.os, "fdopen", lambda fd, *a, **k: Full(real(fd, *a, **k)))
    capsys.readouterr()
    assert run_cli("predict", export, "--data", write(tmp_path, "d.yaml", {"data": DATA}),
                   "--out", tmp_path / "p.jsonl") == 2
    assert one_line(capsys) == f"error: {tmp_path / 'p.jsonl'}: No space left on device (ENOSPC)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.yaml", "export", "run"]
