"""End-to-end CLI runs on tiny configs, and the contract for user errors (exit 2, one line, no run dir)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli, write

torch.set_num_threads(1)

TINY_TEACHER = {
    "seed": 0, "device": "cpu",
    "data": {"name": "synthetic", "train_size": 300, "test_size": 100},
    "model": {"encoders": {"image": {"type": "conv", "channels": [8]}, "audio": {"type": "conv", "channels": [8]}},
              "fusion": {"type": "attention", "dim": 16}},
    "train": {"epochs": 2, "batch_size": 64, "progress": False, "val_fraction": 0.2},
}


def tiny_student(checkpoint) -> dict:
    cfg = json.loads(json.dumps(TINY_TEACHER))
    cfg["model"] = {"encoders": {"image": {"type": "conv", "channels": [4]}, "audio": {"type": "conv", "channels": [4]}}}
    cfg["distill"] = {"teacher": {"checkpoint": str(checkpoint)}, "gamma": 0.5,
                      "terms": [{"name": "kd", "weight": 1.0, "temperature": 4.0},
                                {"name": "fitnet", "weight": 0.1, "student": "encoders.audio", "teacher": "encoders.audio"}]}
    return cfg



def test_train_distill_evaluate_end_to_end(tmp_path, capsys):
    teacher_cfg = write(tmp_path, "teacher.yaml", TINY_TEACHER)
    assert run_cli("train", teacher_cfg, "--out", tmp_path / "teacher") == 0
    run = json.loads((tmp_path / "teacher" / "run.json").read_text())
    assert run["status"] == "complete"
    lines = (tmp_path / "teacher" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "val_accuracy" in json.loads(lines[-1])
    summary = json.loads((tmp_path / "teacher" / "summary.json").read_text())
    assert 0 <= summary["model"]["accuracy"] <= 1 and summary["model"]["params"] > 0

    student_cfg = write(tmp_path, "student.yaml", tiny_student(tmp_path / "teacher" / "best.pt"))
    assert run_cli("distill", student_cfg, "--out", tmp_path / "student", "--set", "train.epochs=1") == 0
    summary = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert summary["student"]["params"] < summary["teacher"]["params"]
    assert summary["student"]["extra_params"] > 0          # the fitnet adapter 4 -> 8 channels
    assert 0 <= summary["student"]["teacher_agreement"] <= 1
    assert len((tmp_path / "student" / "metrics.jsonl").read_text().splitlines()) == 1

    assert run_cli("evaluate", tmp_path / "student" / "best.pt", "--out", tmp_path / "eval", "--drop", "audio") == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["dropped"] == ["audio"] and 0 <= metrics["accuracy"] <= 1
    full = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert run_cli("evaluate", tmp_path / "student" / "best.pt", "--out", tmp_path / "eval2") == 0
    again = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    assert again["accuracy"] == pytest.approx(full["accuracy"])  # checkpoint + rebuilt data reproduce the run


def test_distill_on_real_av_digits(tmp_path, data_root):
    """The real AV-Digits path through the CLI: 1 epoch of a tiny teacher and student, audio-only student."""
    teacher = dict(TINY_TEACHER, data={"name": "av_digits", "level": "clean", "root": str(data_root)},
                   train={"epochs": 1, "batch_size": 64, "progress": False, "optimizer": {"lr": 0.003}})
    assert run_cli("train", write(tmp_path, "t.yaml", teacher), "--out", tmp_path / "t") == 0
    student = tiny_student(tmp_path / "t" / "best.pt")
    student["data"] = teacher["data"]
    student["model"] = {"encoders": {"audio": {"type": "conv", "channels": [4, 8]}}}
    student["train"] = dict(teacher["train"], epochs=2)
    assert run_cli("distill", write(tmp_path, "s.yaml", student), "--out", tmp_path / "s") == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["dataset"]["dataset"] == "av_digits" and summary["dataset"]["test_samples"] == 1200
    assert summary["student"]["accuracy"] > 0.15  # 10 classes, 1200 samples: chance is 0.10 +- 0.009


@pytest.mark.parametrize("override, key", [
    ("train.epoch=3", "train.epoch: unknown key"),
    ("train.epochs=three", "train.epochs"),
    ("model.encoders.image.chanels=[4]", "model.encoders.image.chanels: unknown key"),
    ("model.fusion.type=sum", "model.fusion"),
    ("data.leveel=hard", "data.leveel"),
    ("data.name=cifar", "unknown dataset 'cifar'"),
])
def test_config_errors_name_the_key(tmp_path, capsys, override, key):
    cfg = write(tmp_path, "c.yaml", TINY_TEACHER)
    assert run_cli("train", cfg, "--out", tmp_path / "run", "--set", override) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_loss_option_errors(tmp_path, capsys):
    cfg = tiny_student(tmp_path / "missing.pt")
    cfg["distill"]["terms"] = [{"name": "kd", "temperatur": 4}]
    assert run_cli("distill", write(tmp_path, "s.yaml", cfg), "--out", tmp_path / "run") == 2
    assert "distill.terms[0].temperatur: unknown key (loss 'kd' takes: temperature)" in capsys.readouterr().err
    cfg["distill"]["terms"] = [{"name": "kd", "temperature": "hot"}]
    assert run_cli("distill", write(tmp_path, "s.yaml", cfg), "--out", tmp_path / "run") == 2
    assert "distill.terms[0].temperature" in capsys.readouterr().err


def test_missing_teacher_checkpoint(tmp_path, capsys):
    cfg = write(tmp_path, "s.yaml", tiny_student(tmp_path / "nope.pt"))
    assert run_cli("distill", cfg, "--out", tmp_path / "run") == 2
    assert "nope.pt: no such checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_yaml_syntax_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {name: mnist\nmodel: [")
    assert run_cli("train", path, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "invalid YAML" in err


def test_corrupt_data_names_the_file(tmp_path, capsys, data_root):
    root = tmp_path / "root"
    (root / "mnist10k").mkdir(parents=True)
    for digit in range(10):
        raw = (data_root / "mnist10k" / f"{digit}.json.gz").read_bytes()
        (root / "mnist10k" / f"{digit}.json.gz").write_bytes(raw[: len(raw) // 2] if digit == 7 else raw)
    cfg = write(tmp_path, "m.yaml", {"data": {"name": "mnist", "root": str(root)},
                                     "model": {"encoders": {"image": {"type": "mlp", "hidden": [8]}}},
                                     "train": {"epochs": 1, "progress": False}})
    assert run_cli("train", cfg, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "7.json.gz" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_refuses_to_overwrite_a_finished_run(tmp_path, capsys):
    cfg = write(tmp_path, "t.yaml", dict(TINY_TEACHER, train={"epochs": 1, "progress": False}))
    assert run_cli("train", cfg, "--out", tmp_path / "run") == 0
    assert run_cli("train", cfg, "--out", tmp_path / "run") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli("train", cfg, "--out", tmp_path / "run", "--overwrite") == 0


def test_unknown_drop_modality(tmp_path, capsys):
    cfg = write(tmp_path, "t.yaml", dict(TINY_TEACHER, train={"epochs": 1, "progress": False}))
    assert run_cli("train", cfg, "--out", tmp_path / "t") == 0
    assert run_cli("evaluate", tmp_path / "t" / "best.pt", "--out", tmp_path / "e", "--drop", "video") == 2
    assert "no modality 'video'" in capsys.readouterr().err


def test_losses_lists_the_registry(capsys):
    assert run_cli("losses") == 0
    out = capsys.readouterr().out
    for name in ("mse", "kd", "dkd", "crd", "rkd"):
        assert name in out
    # the feature-point kind each feature loss reads by default
    assert "features: map" in out and "features: embedding" in out and "features: fused" in out


def test_installed_console_script_reports_user_errors_in_one_line(tmp_path):
    exe = Path(sys.executable).with_name("mmdistill")
    assert exe.exists(), "the console script is not installed next to this Python"
    result = subprocess.run([str(exe), "train", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "none.yaml: no such config file" in result.stderr and "Traceback" not in result.stderr


def test_loss_option_replaces_the_config_terms(tmp_path):
    teacher_cfg = write(tmp_path, "t.yaml", dict(TINY_TEACHER, train={"epochs": 1, "progress": False}))
    assert run_cli("train", teacher_cfg, "--out", tmp_path / "t") == 0
    student = write(tmp_path, "s.yaml", tiny_student(tmp_path / "t" / "best.pt"))
    assert run_cli("distill", student, "--out", tmp_path / "s", "--set", "train.epochs=1",
                   "--loss", "dkd:0.5", "--loss", "rkd", "--loss", "at:10") == 0
    config = json.loads((tmp_path / "s" / "run.json").read_text())["config"]
    assert [(t["name"], t["weight"], t["student"]) for t in config["distill"]["terms"]] == [
        ("dkd", 0.5, None), ("rkd", 1.0, None), ("at", 10.0, None)]
    # placed when the task is built, through the models' feature points
    terms = json.loads((tmp_path / "s" / "summary.json").read_text())["terms"]
    assert [(t["name"], t["weight"]) for t in terms] == [("dkd", 0.5), ("rkd", 1.0), ("at", 10.0), ("at", 10.0)]
    assert terms[0]["student"] == "logits" and terms[1]["student"] == "fusion" and terms[1]["teacher"] == "fusion"
    # attention transfer reads each modality's last convolutional map, in the student and the teacher
    assert sorted((t["student"], t["teacher"]) for t in terms[2:]) == [
        ("encoders.audio.features", "encoders.audio.features"), ("encoders.image.features", "encoders.image.features")]
    assert run_cli("distill", student, "--out", tmp_path / "s2", "--loss", "kd:heavy") == 2


def test_loss_option_places_feature_losses_on_the_students_modalities():
    from mmdistill.api import make_terms
    from mmdistill.runs import loss_terms
    from mmdistill.data.dataset import ModalitySpec
    from mmdistill.models import build_model

    specs = {"image": ModalitySpec("image", "image", (1, 8, 8)), "vector": ModalitySpec("vector", "vector", (6,))}
    teacher = build_model({"encoders": {"image": {"type": "conv", "channels": [4]},
                                        "vector": {"type": "mlp", "hidden": [8]}}}, specs, 3)
    student = build_model({"encoders": {"image": {"type": "conv", "channels": [2]},
                                        "vector": {"type": "mlp", "hidden": [4]}}, "modalities": ["vector"]}, specs, 3)
    specs_in = loss_terms(["fitnet", "sp:2", "pkt", "kd:0.5"])
    assert specs_in == [{"name": "fitnet", "weight": 1.0}, {"name": "sp", "weight": 2.0}, {"name": "pkt", "weight": 1.0},
                        {"name": "kd", "weight": 0.5}]
    terms = make_terms(specs_in, student=teacher, teachers=[teacher])
    assert [(t.name, t.student_path) for t in terms] == [
        ("fitnet", "encoders.image"), ("fitnet", "encoders.vector"),
        # an MLP encoder has no map: SP reads its embedding
        ("sp", "encoders.image.features"), ("sp", "encoders.vector"), ("pkt", "fusion"), ("kd", "logits")]
    assert all(t.student_path == t.teacher_path for t in terms) and terms[2].weight == 2.0
    # a student that sees fewer modalities gets terms on the ones it sees only
    terms = make_terms(specs_in[:2], student=student, teachers=[teacher])
    assert [(t.name, t.student_path, t.teacher_path) for t in terms] == [
        ("fitnet", "encoders.vector", "encoders.vector"), ("sp", "encoders.vector", "encoders.vector")]


def test_feature_loss_on_a_model_without_points_needs_explicit_paths(tmp_path):
    """A plain nn.Module (e.g. a factory model) declares no feature points: placing a feature loss
    without paths is an error saying to give them; with explicit paths it distils."""
    from torch import nn

    from mmdistill import api
    from mmdistill.config import TrainConfig
    from mmdistill.data import build_data
    from mmdistill.config import DataConfig
    from mmdistill.errors import ConfigError
    from mmdistill.models import build_model

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 8), nn.ReLU())
            self.out = nn.Linear(8, 10)

        def forward(self, batch):
            return self.out(self.body(batch["image"]))

    data = build_data(DataConfig(name="synthetic", train_size=60, test_size=20), val_fraction=0.2)
    teacher = build_model({"encoders": {"image": {"type": "mlp", "hidden": [8]}}}, data.specs, data.num_classes)
    cfg = TrainConfig(epochs=1, batch_size=32, progress=False)
    with pytest.raises(ConfigError, match="declares no feature points.*student: and teacher:"):
        api.distill(Plain(), teacher, data, terms=[{"name": "fitnet"}], cfg=cfg, device="cpu")
    with pytest.raises(ConfigError, match=r"terms\[0\].teacher: give both"):
        api.distill(Plain(), teacher, data, terms=[{"name": "fitnet", "student": "body"}], cfg=cfg, device="cpu")
    fit = api.distill(Plain(), teacher, data, terms=[{"name": "fitnet", "student": "body", "teacher": "fusion"}],
                      cfg=cfg, device="cpu")
    assert [(t.student_path, t.teacher_path) for t in fit.task.terms] == [("body", "fusion")]


def test_term_weight_warmup_is_validated(tmp_path, capsys):
    cfg = tiny_student(tmp_path / "t.pt")
    cfg["distill"]["terms"] = [{"name": "kd", "warmup": 2}]
    assert run_cli("distill", write(tmp_path, "s.yaml", cfg), "--out", tmp_path / "run") == 2
    assert "distill.terms[0].warmup" in capsys.readouterr().err


def test_evaluate_all_subsets(tmp_path):
    cfg = write(tmp_path, "t.yaml", dict(TINY_TEACHER, train={"epochs": 1, "progress": False}))
    assert run_cli("train", cfg, "--out", tmp_path / "t") == 0
    assert run_cli("evaluate", tmp_path / "t" / "best.pt", "--out", tmp_path / "e", "--all-subsets") == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    subsets = {frozenset(k.split("+")): v for k, v in metrics["subsets"].items()}
    assert set(subsets) == {frozenset({"image"}), frozenset({"audio"}), frozenset({"image", "audio"})}
    assert subsets[frozenset({"image", "audio"})] == pytest.approx(metrics["accuracy"])
    assert run_cli("evaluate", tmp_path / "t" / "best.pt", "--out", tmp_path / "e2", "--drop", "audio") == 0
    dropped = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert metrics["subsets"]["image"] == pytest.approx(dropped["accuracy"])


def test_overrides_return_a_copy_and_leave_the_recipe_as_it_was():
    from mmdistill.config import apply_overrides

    raw = {"train": {"epochs": 3, "optimizer": {"name": "adam"}}}
    out = apply_overrides(raw, ["train.epochs=5", "train.optimizer.lr=0.1"])
    assert out == {"train": {"epochs": 5, "optimizer": {"name": "adam", "lr": 0.1}}}
    assert raw == {"train": {"epochs": 3, "optimizer": {"name": "adam"}}}
