"""--resume: a run killed after an epoch continues to exactly the weights of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mmdistill
from mmdistill.api import distill, train
from conftest import run_cli, write
from mmdistill.config import TrainConfig
from mmdistill.data import DataSplits
from mmdistill.data.registry import DATASETS, parse_options
from mmdistill.errors import CheckpointError
from mmdistill.losses.contrastive import CRD
from mmdistill.models import build_model

torch.set_num_threads(1)

SRC = Path(mmdistill.__file__).resolve().parents[1]

# ~0.5 s per epoch on one thread: slow enough for the test to kill the run between epochs
TEACHER = {
    "seed": 0, "device": "cpu",
    "data": {"name": "synthetic", "train_size": 1200, "test_size": 60},
    "model": {"encoders": {"image": {"type": "conv", "channels": [16]}, "audio": {"type": "conv", "channels": [16]}},
              "fusion": {"type": "attention", "dim": 16}},
    "train": {"epochs": 4, "batch_size": 32, "progress": False, "val_fraction": 0.2,
              "scheduler": {"name": "cosine"}},
}


def student(checkpoint) -> dict:
    """Distillation with the teacher cache, a CRD term (memory banks, random negatives) and modality
    dropout (the augmentation generator)."""
    cfg = json.loads(json.dumps(TEACHER))
    cfg["model"]["encoders"] = {m: {"type": "conv", "channels": [8, 8]} for m in ("image", "audio")}
    cfg["train"]["modality_dropout"] = {"audio": 0.3}
    cfg["distill"] = {"teacher": {"checkpoint": str(checkpoint)}, "gamma": 0.5,
                      "terms": [{"name": "kd", "temperature": 4.0},
                                {"name": "crd", "weight": 0.5, "student": "fusion", "teacher": "fusion",
                                 "feat_dim": 16, "num_negatives": 64}]}
    return cfg



def kill_after_epoch(command: str, config: Path, out: Path, epoch: int) -> None:
    """Run the CLI in a subprocess and SIGKILL it once ``metrics.jsonl`` has ``epoch`` lines."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from mmdistill.cli import main; main()", command, str(config),
                             "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= epoch:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        else:
            pytest.fail(f"the run ended (rc {proc.poll()}) or stalled before epoch {epoch}: "
                        f"{proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ''}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"
    assert json.loads((out / "run.json").read_text())["status"] == "running"


def state_dict(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = state_dict(a), state_dict(b)
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{b} differs from {a} in {different}"


def epochs_logged(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def check_kill_and_resume(tmp_path: Path, command: str, config: Path) -> None:
    assert run_cli(command, config, "--out", tmp_path / "whole") == 0
    kill_after_epoch(command, config, tmp_path / "killed", epoch=2)
    assert run_cli(command, config, "--out", tmp_path / "killed", "--resume") == 0
    for name in ("best.pt", "last.pt"):
        assert_same_weights(tmp_path / "whole" / name, tmp_path / "killed" / name)
    assert epochs_logged(tmp_path / "killed") == epochs_logged(tmp_path / "whole")  # each epoch once
    info = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert info["status"] == "complete" and len(info["resumed"]) == 1


def test_killed_training_resumes_bit_identically(tmp_path):
    check_kill_and_resume(tmp_path, "train", write(tmp_path, "t.yaml", TEACHER))


def test_killed_distillation_with_cache_and_crd_resumes_bit_identically(tmp_path):
    teacher = dict(TEACHER, train={**TEACHER["train"], "epochs": 1})
    assert run_cli("train", write(tmp_path, "t.yaml", teacher), "--out", tmp_path / "teacher") == 0
    check_kill_and_resume(tmp_path, "distill", write(tmp_path, "s.yaml", student(tmp_path / "teacher" / "best.pt")))


# --- in process: a failure after the epoch was logged but before its state was saved -----------

class Crash(Exception):
    pass


def tiny_data() -> DataSplits:
    train_set, test_set, _ = DATASETS.get("synthetic")(
        None, parse_options("synthetic", {"train_size": 120, "test_size": 30}), 0)
    return DataSplits(train=train_set, test=test_set, val=test_set)


def model(data, channels):
    return build_model({"encoders": {m: {"type": "conv", "channels": channels} for m in ("image", "audio")}},
                       data.specs, data.num_classes, seed=1)


def crashing_save(at_epoch: int):
    """A checkpoint writer that fails at ``at_epoch``: after the metrics line, before ``state.pt``."""

    def save(path, model, meta):
        if meta["epoch"] == at_epoch:
            raise Crash(path)
        torch.save({"state_dict": model.state_dict()}, path)

    return save


def test_resume_after_a_crash_skips_the_unsaved_epoch_and_logs_each_epoch_once(tmp_path):
    """Mixup (the augmentation generator and Beta draws), input augmentation (its own generator), VID and CRD (trained loss state and
    memory banks), cosine schedule, no teacher cache; the crash leaves epoch 3 in metrics.jsonl
    without a state, so the resumed run redoes it."""
    data = tiny_data()
    teacher = model(data, [8])
    terms = [{"name": "kd"}, {"name": "vid", "student": "encoders.image", "teacher": "encoders.image"},
             {"name": "crd", "student": "fusion", "teacher": "fusion", "feat_dim": 8, "num_negatives": 16}]
    cfg = TrainConfig(epochs=4, batch_size=40, progress=False, mixup=0.4, scheduler={"name": "cosine"},
                      optimizer={"name": "sgd", "lr": 0.05}, augment_teacher="clean",
                      augment={"image": [{"type": "translate", "pixels": 1}]})

    def run(out, *, save, resume=False):
        return distill(model(data, [4]), teacher, data, terms=terms, cfg=cfg, device="cpu", seed=5, run_dir=out,
                       save=save, resume=resume)

    (tmp_path / "whole").mkdir()
    (tmp_path / "crashed").mkdir()
    whole = run(tmp_path / "whole", save=crashing_save(None))
    with pytest.raises(Crash):
        run(tmp_path / "crashed", save=crashing_save(3))
    assert len((tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()) == 3
    state = torch.load(tmp_path / "crashed" / "state.pt", weights_only=True)
    assert state["epoch"] == 2
    resumed = run(tmp_path / "crashed", save=crashing_save(None), resume=True)
    assert_same_weights(tmp_path / "whole" / "last.pt", tmp_path / "crashed" / "last.pt")
    assert_same_weights(tmp_path / "whole" / "best.pt", tmp_path / "crashed" / "best.pt")
    assert epochs_logged(tmp_path / "crashed") == epochs_logged(tmp_path / "whole")
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert (resumed.best_epoch, resumed.best_val_accuracy) == (whole.best_epoch, whole.best_val_accuracy)
    # the trained loss state travelled too: CRD's banks and heads, VID's variances
    a, b = whole.task.state_dict(), resumed.task.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(isinstance(loss, CRD) for loss in resumed.task.losses)


def test_resume_refuses_changed_training_data(tmp_path):
    data = tiny_data()
    cfg = TrainConfig(epochs=2, batch_size=40, progress=False)
    with pytest.raises(Crash):
        train(model(data, [4]), data, cfg, device="cpu", run_dir=tmp_path, save=crashing_save(2))
    data.train.modalities["audio"][7, 0, 0, 0] += 1
    with pytest.raises(CheckpointError, match="state.pt: the training data differ"):
        train(model(data, [4]), data, cfg, device="cpu", run_dir=tmp_path, save=crashing_save(None), resume=True)


def test_training_state_is_weights_only_and_complete(tmp_path):
    data = tiny_data()
    teacher = model(data, [8])
    terms = [{"name": "crd", "student": "fusion", "teacher": "fusion", "feat_dim": 8, "num_negatives": 16}]
    cfg = TrainConfig(epochs=1, batch_size=40, progress=False, modality_dropout={"audio": 0.5})
    fit = distill(model(data, [4]), teacher, data, terms=terms, cfg=cfg, device="cpu", seed=0, run_dir=tmp_path)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["epoch"] == 1 and state["best"]["epoch"] == fit.best_epoch
    assert set(state["rng"]) >= {"torch", "numpy", "python", "sampler", "mix", "augment"}
    crd = fit.task.losses[0]
    assert torch.equal(state["task"]["losses.0.memory_s"], crd.memory_s)
    assert torch.equal(state["task"]["losses.0.z_t"], crd.z_t) and float(crd.z_t) > 0
    assert not any(k.startswith("teachers.") for k in state["task"])
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 1


# --- refusals: one line, exit 2, nothing changed --------------------------------------------------

def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_resume_refuses_what_it_cannot_continue(tmp_path, capsys):
    small = dict(TEACHER, data={**TEACHER["data"], "train_size": 100}, train={**TEACHER["train"], "epochs": 1})
    cfg = write(tmp_path, "t.yaml", small)
    assert run_cli("train", cfg, "--out", tmp_path / "none", "--resume") == 2
    assert "no run to resume" in one_line_error(capsys)
    assert not (tmp_path / "none").exists()

    assert run_cli("train", cfg, "--out", tmp_path / "done") == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in (tmp_path / "done").iterdir()}
    assert run_cli("train", cfg, "--out", tmp_path / "done", "--resume") == 2
    assert "already complete" in one_line_error(capsys)
    assert run_cli("train", cfg, "--out", tmp_path / "done", "--resume", "--overwrite") == 2
    assert "--overwrite" in one_line_error(capsys)

    # an unfinished run: only the same config resumes it
    record = json.loads((tmp_path / "done" / "run.json").read_text())
    (tmp_path / "done" / "run.json").write_text(json.dumps({**record, "status": "interrupted"}))
    assert run_cli("train", cfg, "--out", tmp_path / "done", "--resume", "--set", "train.epochs=3") == 2
    assert "train.epochs: 3 in the config but 1 in the run" in one_line_error(capsys)
    assert run_cli("train", cfg, "--out", tmp_path / "done", "--resume", "--set", "model.fusion.dim=8") == 2
    assert "model.fusion.dim" in one_line_error(capsys)
    (tmp_path / "done" / "state.pt").unlink()
    assert run_cli("train", cfg, "--out", tmp_path / "done", "--resume") == 2
    assert "state.pt is missing" in one_line_error(capsys)
    after = {p.name: p.read_bytes() for p in (tmp_path / "done").iterdir()}
    assert after.keys() == before.keys() - {"state.pt"}
    assert all(after[k] == before[k] for k in after if k != "run.json")


def test_resume_refuses_a_replaced_teacher(tmp_path, capsys):
    small = dict(TEACHER, data={**TEACHER["data"], "train_size": 100}, train={**TEACHER["train"], "epochs": 1})
    assert run_cli("train", write(tmp_path, "t.yaml", small), "--out", tmp_path / "teacher") == 0
    cfg = student(tmp_path / "teacher" / "best.pt")
    cfg["data"], cfg["train"] = small["data"], {**small["train"], "epochs": 2}
    assert run_cli("distill", write(tmp_path, "s.yaml", cfg), "--out", tmp_path / "s") == 0
    record = json.loads((tmp_path / "s" / "run.json").read_text())
    (tmp_path / "s" / "run.json").write_text(json.dumps({**record, "status": "interrupted"}))
    # a different teacher behind the same path
    assert run_cli("train", write(tmp_path, "t.yaml", dict(small, seed=1)), "--out", tmp_path / "teacher",
                   "--overwrite") == 0
    capsys.readouterr()
    assert run_cli("distill", tmp_path / "s.yaml", "--out", tmp_path / "s", "--resume") == 2
    assert "teacher weights differ" in one_line_error(capsys)


def test_resume_after_the_last_epoch_only_finishes_the_run(tmp_path):
    """Killed after the last state.pt but before the test metrics: resuming trains nothing more."""
    small = dict(TEACHER, data={**TEACHER["data"], "train_size": 100}, train={**TEACHER["train"], "epochs": 2})
    cfg = write(tmp_path, "t.yaml", small)
    assert run_cli("train", cfg, "--out", tmp_path / "run") == 0
    weights = (tmp_path / "run" / "best.pt").read_bytes()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for name in ("summary.json", "metrics.json"):
        (tmp_path / "run" / name).unlink()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    (tmp_path / "run" / "run.json").write_text(json.dumps({**record, "status": "running"}))
    assert run_cli("train", cfg, "--out", tmp_path / "run", "--resume") == 0
    assert (tmp_path / "run" / "best.pt").read_bytes() == weights
    again = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert again["model"]["accuracy"] == summary["model"]["accuracy"] and again["best_epoch"] == summary["best_epoch"]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
