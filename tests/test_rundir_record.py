"""Every folder a command writes says what it is (run.json: kind, role, artefacts, format version);
folders written before (version 1, or exports and profiles without a record) are described by one
compat function; file names are defined once; export and profile write like train."""
import json
import re
from pathlib import Path

import pytest

import mmdistill
from mmdistill import rundir
from mmdistill.errors import RunDirError
from mmdistill.export.profile import column_labels
from mmdistill.report.runs import collect, load_run
from mmdistill.rundir import RunDir, check_run_dir, describe

from test_cli import run_cli, write

TINY = {
    "seed": 0, "device": "cpu",
    "data": {"name": "synthetic", "train_size": 120, "test_size": 40},
    "model": {"encoders": {"image": {"type": "conv", "channels": [2]}, "audio": {"type": "conv", "channels": [2]}}},
    "train": {"epochs": 1, "batch_size": 64, "progress": False},
}


def record(path: Path) -> dict:
    return json.loads((path / "run.json").read_text())


def test_a_run_records_its_kind_role_and_the_files_it_wrote(tmp_path):
    with RunDir(tmp_path / "r", kind="train", role="teacher", config={"a": 1}) as run:
        rundir.write_json(run / rundir.SUMMARY, {})
        (run / "sub").mkdir()
        (run / "sub" / "x.txt").write_text("x")
        with RunDir(run / "child", kind="evaluate"):  # a run of its own inside: listed as a folder
            rundir.write_json(run / "child" / rundir.METRICS, {})
        assert record(run.path)["status"] == "running" and record(run.path)["kind"] == "train"
    info = record(tmp_path / "r")
    assert (info["version"], info["kind"], info["role"], info["status"]) == (2, "train", "teacher", "complete")
    assert info["artefacts"] == ["child/", "sub/x.txt", "summary.json"]
    assert describe(tmp_path / "r") == info  # a version-2 record is read as written
    with pytest.raises(ValueError, match="kind: 'fit' is not one of train, distill"):
        RunDir(tmp_path / "other", kind="fit")


def test_resume_keeps_the_recorded_kind_and_role(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with RunDir(tmp_path / "r", kind="distill", role="student"):
            raise KeyboardInterrupt
    with RunDir(tmp_path / "r", resume=True):
        pass
    info = record(tmp_path / "r")
    assert (info["kind"], info["role"], info["status"]) == ("distill", "student", "complete")


def test_a_resumed_version_1_run_is_recorded_as_version_2_with_its_inferred_kind(tmp_path):
    path = version_1(tmp_path / "teacher", {"model": {}}, metrics_jsonl="")
    info = json.loads((path / "run.json").read_text())
    (path / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    with RunDir(path, resume=True):
        pass
    info = record(path)
    assert (info["version"], info["kind"], info["role"], info["status"]) == (2, "train", "teacher", "complete")


def version_1(path: Path, config: dict, **files) -> Path:
    """A run folder as mmdistill wrote it before kind, role and artefacts were recorded."""
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"format": "mmdistill-run", "version": 1, "status": "complete",
                                               "command": "old", "config": config}))
    for name, payload in files.items():
        (path / name.replace("_", ".")).write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


@pytest.mark.parametrize("folder, config, files, kind, role", [
    ("teacher", {"model": {}}, {"summary_json": {"model": {}}, "metrics_jsonl": ""}, "train", "teacher"),
    ("student_scratch", {"model": {}}, {"summary_json": {"model": {}}}, "train", "scratch"),
    ("run", {"model": {}}, {"metrics_jsonl": ""}, "train", "model"),
    ("s", {"distill": {"teacher": {"checkpoint": "t/best.pt"}}}, {"summary_json": {"student": {}}}, "distill",
     "student"),
    ("a", {"distill": {}}, {"summary_json": {"auto": {}, "student": {}}}, "auto", "student"),
    ("e", {"checkpoint": "s/best.pt", "split": "test"}, {"metrics_json": {"checkpoint": "s/best.pt"}}, "evaluate",
     "evaluation"),
    ("d", {"distill": {}}, {"diagnose_json": {}}, "diagnose", None),
    ("demo", {"teacher": {}, "student": {}}, {"summary_json": {"teacher": {}}}, "demo", None),
])
def test_a_version_1_folder_is_described_by_inference(tmp_path, folder, config, files, kind, role):
    path = version_1(tmp_path / folder, config, **files)
    info = describe(path)
    assert (info["version"], info["kind"], info["role"]) == (1, kind, role)
    assert info["artefacts"] == sorted(name.replace("_", ".") for name in files)


def test_exports_and_profiles_without_a_record_are_described_and_may_be_overwritten(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.json").write_text(json.dumps({"format": "mmdistill-export/1", "files": {}}))
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "profile.json").write_text("{}")
    assert describe(export)["kind"] == "export" and describe(profile)["kind"] == "profile"
    early = tmp_path / "early"  # a run's result files from before run.json was written
    early.mkdir()
    (early / "metrics.jsonl").write_text("")
    assert (describe(early)["kind"], describe(early)["version"], describe(early)["status"]) == ("train", 0, "unknown")
    with pytest.raises(RunDirError, match="not an mmdistill run directory"):
        check_run_dir(early, overwrite=True)  # described for reading, never replaced without a record
    check_run_dir(profile, overwrite=True)  # an old profile folder is replaced like a run ...
    (profile / "notes.txt").write_text("mine")
    assert describe(profile) is None  # ... but not once it holds something no profile wrote
    with pytest.raises(RunDirError, match="not an mmdistill run directory"):
        check_run_dir(profile, overwrite=True)


def test_a_newer_record_is_refused_in_one_line_naming_its_version(tmp_path):
    path = tmp_path / "future"
    path.mkdir()
    (path / "run.json").write_text(json.dumps({"format": "mmdistill-run", "version": 99, "status": "complete"}))
    with pytest.raises(RunDirError, match=r"run record version 99, newer than this mmdistill reads \(version 2\)"):
        describe(path)
    (path / "metrics.json").write_text("{}")
    from mmdistill.report.runs import ReportError

    with pytest.raises(ReportError, match="version 99"):
        load_run(path)


def test_report_reads_kind_and_role_from_the_record_not_the_folder_name(tmp_path):
    # a version-2 train run named like a teacher but recorded as a plain model stays a model
    with RunDir(tmp_path / "teacher", kind="train", role="model") as run:
        rundir.write_json(run / rundir.METRICS, {"accuracy": 0.5})
    with RunDir(tmp_path / "my_scratch_run", kind="train", role="teacher") as run:
        rundir.write_json(run / rundir.METRICS, {"accuracy": 0.5})
    old = version_1(tmp_path / "old" / "student_scratch", {"model": {}}, metrics_json={"accuracy": 0.4},
                    summary_json={"model": {"accuracy": 0.4}})
    (plain, named), _ = collect([tmp_path / "teacher", tmp_path / "my_scratch_run"])
    assert (plain.kind, plain.role) == ("train", "model") and (named.kind, named.role) == ("train", "teacher")
    assert (load_run(old).kind, load_run(old).role) == ("train", "student (scratch)")


def test_file_names_are_defined_once_in_rundir():
    """No module spells a run folder's file names; they are rundir's constants."""
    names = [getattr(rundir, n) for n in ("BEST", "LAST", "STATE", "HISTORY", "METRICS", "SUMMARY", "RECORD",
                                          "LOCK", "DIAGNOSE", "PROFILE", "MODEL_JSON")]
    pattern = re.compile("|".join(rf"""["']{re.escape(n)}["']""" for n in names))
    package = Path(mmdistill.__file__).parent
    found = [f"{p.relative_to(package)}:{i}" for p in sorted(package.rglob("*.py"))
             if p.name != "rundir.py" and p.relative_to(package).as_posix() != "export/runtime.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []
    from mmdistill.export import runtime  # stands alone in an export folder, so it names its file itself

    assert runtime.MODEL_JSON == rundir.MODEL_JSON


def test_profile_labels_columns_by_run():
    models = [{"checkpoint": "runs/t1/best.pt", "run": "t1", "role": "teacher"},
              {"checkpoint": "runs/student_distilled/best.pt", "run": "student_distilled", "role": "student"},
              {"checkpoint": "runs/t1/last.pt", "run": "t1", "role": "teacher"}]
    assert column_labels(models) == ["t1 (teacher)/best.pt", "student_distilled", "t1 (teacher)/last.pt"]
    assert column_labels(models[:2]) == ["t1 (teacher)", "student_distilled"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("record")
    config = write(tmp, "tiny.yaml", TINY)
    assert run_cli("train", config, "--out", tmp / "a") == 0
    assert run_cli("train", config, "--out", tmp / "b", "--set", "seed=1") == 0
    return tmp


def test_export_and_profile_write_run_records_and_refuse_to_overwrite(tiny_runs, capsys):
    tmp = tiny_runs
    assert (record(tmp / "a")["kind"], record(tmp / "a")["role"]) == ("train", "model")
    assert {"best.pt", "last.pt", "metrics.jsonl", "metrics.json", "summary.json"} <= set(record(tmp / "a")["artefacts"])
    assert run_cli("export", tmp / "a" / "best.pt", "--out", tmp / "x") == 0
    info = record(tmp / "x")
    assert (info["kind"], info["role"], info["status"]) == ("export", "model", "complete")
    assert set(info["artefacts"]) == {"model.json", "model.onnx", "mmdistill_runtime.py"}
    assert not (tmp / "x" / "run.lock").exists()

    args = ["profile", tmp / "a" / "best.pt", "--compare", tmp / "b" / "best.pt", "--repeats", "3", "--out", tmp / "p"]
    capsys.readouterr()
    assert run_cli(*args) == 0
    table = capsys.readouterr().out
    assert "a (model)" in table and "b (model)" in table and "best.pt" not in table.split("wrote")[0]
    info = record(tmp / "p")
    assert (info["kind"], info["artefacts"]) == ("profile", ["profile.json"])
    assert [m["run"] for m in json.loads((tmp / "p" / "profile.json").read_text())["models"]] == ["a", "b"]
    assert run_cli(*args) == 2  # as train: an existing folder is replaced only with --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli(*args, "--overwrite") == 0
    (tmp / "q").mkdir()
    (tmp / "q" / "notes.txt").write_text("mine")  # not a run folder: never replaced
    assert run_cli("profile", tmp / "a" / "best.pt", "--repeats", "3", "--out", tmp / "q", "--overwrite") == 2
    assert "not an mmdistill run directory" in capsys.readouterr().err
    assert (tmp / "q" / "notes.txt").read_text() == "mine"
