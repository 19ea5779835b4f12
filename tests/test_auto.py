"""``distill --auto`` and ``diagnose`` end to end on a tiny config, the choice rule, and the
multi-view benchmark's smoke run."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_cli, write

from mmdistill.auto import MARGIN, candidate_set, choose, margin_for
from mmdistill.data.dataset import ModalitySpec
from mmdistill.models import build_model

TEACHER = {
    "seed": 0, "device": "cpu",
    "data": {"name": "synthetic", "train_size": 300, "test_size": 100},
    "model": {"encoders": {"image": {"type": "conv", "channels": [8]}, "audio": {"type": "conv", "channels": [8]}},
              "fusion": {"type": "concat"}},
    "train": {"epochs": 3, "batch_size": 32, "progress": False, "val_fraction": 0.2,
              "optimizer": {"name": "adam", "lr": 0.01}},
}


def student(checkpoint, epochs: int = 2) -> dict:
    cfg = json.loads(json.dumps(TEACHER))
    cfg["model"] = {"encoders": {"audio": {"type": "conv", "channels": [4]}}}
    cfg["train"]["epochs"] = epochs
    cfg["distill"] = {"teacher": {"checkpoint": str(checkpoint)}}
    return cfg


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teacher")
    assert run_cli("train", write(tmp, "t.yaml", TEACHER), "--out", tmp / "t") == 0
    return tmp / "t" / "best.pt"


def test_choice_goes_to_none_within_the_margin():
    rows = lambda none, kd, dist: [{"name": "none", "val_accuracy": none}, {"name": "kd_t4", "val_accuracy": kd},  # noqa: E731
                                   {"name": "dist", "val_accuracy": dist}]
    assert choose(rows(0.80, 0.804, 0.79)) == "none"      # +0.4 points: a near-tie, so no distillation
    assert choose(rows(0.80, 0.81, 0.83)) == "dist"       # clearly better
    assert choose(rows(0.85, 0.81, 0.83)) == "none"       # distillation hurts
    assert choose(rows(0.80, 0.83, 0.83)) == "kd_t4"      # equal candidates: the earlier one
    assert margin_for(MARGIN, 1000) == MARGIN and margin_for(MARGIN, 100) == pytest.approx(0.02)


def test_candidates_follow_the_feature_points():
    specs = {"image": ModalitySpec("image", "image", (1, 8, 8)), "vector": ModalitySpec("vector", "vector", (6,))}
    conv = build_model({"encoders": {"image": {"type": "conv", "channels": [4]}}}, specs, 3)
    mlp = build_model({"encoders": {"vector": {"type": "mlp", "hidden": [4]}}}, specs, 3)
    both = build_model({"encoders": {"image": {"type": "conv", "channels": [4]}, "vector": {"type": "mlp"}}}, specs, 3)
    names = lambda s, t: [c.name for c in candidate_set(s, t)]  # noqa: E731
    assert names(conv, both) == ["none", "kd_t1", "kd_t2", "kd_t4", "dist", "at"]        # shared maps
    assert names(mlp, both) == ["none", "kd_t1", "kd_t2", "kd_t4", "dist", "fitnet"]     # shared embeddings only
    assert names(mlp, conv) == ["none", "kd_t1", "kd_t2", "kd_t4", "dist", "rkd"]        # only the fused embedding
    assert [c.name for c in candidate_set(mlp, both, scales=(0.5, 2))][1:5] == ["kd_t1_x0.5", "kd_t2_x0.5", "kd_t4_x0.5", "dist_x0.5"]


def test_distill_auto_end_to_end(tmp_path, teacher, capsys):
    cfg = write(tmp_path, "s.yaml", student(teacher))
    assert run_cli("distill", cfg, "--out", tmp_path / "auto", "--auto") == 0
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    auto = summary["auto"]
    assert [c["name"] for c in auto["candidates"]] == ["none", "kd_t1", "kd_t2", "kd_t4", "dist", "at"]
    assert auto["choice"] == choose(auto["candidates"], auto["margin"])
    assert auto["margin"] == pytest.approx(margin_for(MARGIN, summary["dataset"]["val_samples"]))
    at = auto["candidates"][-1]
    # placed as a distill run's summary places its terms (runs.placed_terms), the teacher read included
    assert at["placed"] == [{"name": "at", "weight": 10.0, "student": "encoders.audio.features",
                             "teacher": "encoders.audio.features", "source": "teacher0"}]
    record = json.loads((tmp_path / "auto" / "run.json").read_text())
    assert (record["kind"], record["role"], record["version"]) == ("auto", "student", 2)
    assert {"best.pt", "last.pt", "metrics.jsonl", "summary.json", "candidates/at/best.pt"} <= set(record["artefacts"])
    assert auto["candidates"][2]["terms"] == [{"name": "kd", "weight": 1.0, "temperature": 2.0}]
    assert auto["search_epochs"] == 2 and auto["final"].startswith("kept")
    chosen = tmp_path / "auto" / "candidates" / auto["choice"] / "best.pt"
    assert (tmp_path / "auto" / "best.pt").read_bytes() == chosen.read_bytes()
    record = next(c for c in auto["candidates"] if c["name"] == auto["choice"])
    assert summary["student"]["accuracy"] == pytest.approx(record["test_accuracy"])
    assert "--auto candidates" in capsys.readouterr().out
    # a shorter search retrains the choice with the full budget
    assert run_cli("distill", cfg, "--out", tmp_path / "short", "--auto", "--auto-epochs", "1") == 0
    short = json.loads((tmp_path / "short" / "summary.json").read_text())["auto"]
    assert short["search_epochs"] == 1 and short["final"].startswith("retrained")
    assert len((tmp_path / "short" / "metrics.jsonl").read_text().splitlines()) == 2
    assert run_cli("distill", cfg, "--out", tmp_path / "x", "--auto", "--loss", "kd") == 2
    assert "--auto" in capsys.readouterr().err


def test_none_wins_when_no_candidate_clears_the_margin(tmp_path, teacher):
    from mmdistill.auto import run_auto
    from mmdistill.config import parse_config

    summary = run_auto(parse_config(student(teacher, epochs=1)), tmp_path / "run", margin=1.0)
    assert summary["auto"]["choice"] == "none" and summary["auto"]["terms"] == []
    assert summary["auto"]["margin"] == 1.0


def test_auto_says_when_the_teacher_is_no_better_than_the_student_without_it(tmp_path, capsys):
    """On separable blobs: a teacher that barely trained (learning rate 1e-7) is below a student
    trained alone, and --auto says so in its table and summary; a trained teacher above a student
    that barely trains is not flagged."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.arange(400) % 4
    x = rng.normal(size=(400, 8)).astype(np.float32) + 3 * np.eye(4, 8, dtype=np.float32)[y]
    np.savez(tmp_path / "blobs.npz", x=x, label=y)

    def recipe(lr, epochs, checkpoint=None):
        cfg = {"seed": 0, "device": "cpu", "data": {"name": "npz", "root": str(tmp_path), "path": "blobs.npz"},
               "model": {"encoders": {"x": {"type": "mlp", "hidden": [16]}}},
               "train": {"epochs": epochs, "batch_size": 32, "progress": False, "val_fraction": 0.25,
                         "optimizer": {"name": "adam", "lr": lr}}}
        return cfg if checkpoint is None else {**cfg, "distill": {"teacher": {"checkpoint": str(checkpoint)}}}

    for name, lr in (("weak", 1e-7), ("good", 0.05)):
        assert run_cli("train", write(tmp_path, f"{name}.yaml", recipe(lr, 3)), "--out", tmp_path / name) == 0
    capsys.readouterr()
    flagged = {}
    for teacher, student_lr in (("weak", 0.05), ("good", 1e-7)):
        cfg = write(tmp_path, "s.yaml", recipe(student_lr, 2, tmp_path / teacher / "best.pt"))
        assert run_cli("distill", cfg, "--out", tmp_path / f"auto_{teacher}", "--auto") == 0
        auto = json.loads((tmp_path / f"auto_{teacher}" / "summary.json").read_text())["auto"]
        none = next(c["val_accuracy"] for c in auto["candidates"] if c["name"] == "none")
        flagged[teacher] = (auto["teacher_val_accuracy"] <= none, auto["teacher_no_better"],
                            "no better on validation" in capsys.readouterr().out)
    assert flagged == {"weak": (True, True, True), "good": (False, False, False)}


def test_diagnose_end_to_end(tmp_path, teacher, capsys):
    cfg = write(tmp_path, "s.yaml", student(teacher, epochs=4))
    assert run_cli("diagnose", cfg, "--out", tmp_path / "d") == 0
    result = json.loads((tmp_path / "d" / "diagnose.json").read_text())
    for key in ("teacher_val_accuracy", "teacher_val_accuracy_student_view", "probe_accuracy",
                "probe_teacher_accuracy", "probe_teacher_fidelity", "probe_teacher_agreement",
                "trial_scratch_val_accuracy", "trial_kd_val_accuracy"):
        assert 0 <= result[key] <= 1, key
    assert result["student_modalities"] == ["audio"] and result["trial_epochs"] == 1
    assert result["score"] == pytest.approx((result["trial_gain"] + result["probe_gain"]) / 2)
    assert result["verdict"] in ("likely to help", "unlikely to help", "unclear")
    # the teacher sees audio and image; with the image absent it can only be as good or worse here
    out = capsys.readouterr().out
    assert "score" in out and "student's modalities only" in out


def test_multiview_benchmark_smoke(tmp_path, data_root):
    env = {**os.environ, "MMDISTILL_DATA": str(data_root)}
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "multiview_auto.py"), "--datasets", "prokaryotic",
                    "--seeds", "0", "--epochs", "1", "--hidden", "16", "--name", str(tmp_path / "mv")],
                   check=True, env=env, cwd=tmp_path, capture_output=True, text=True)
    result = json.loads((tmp_path / "mv.json").read_text())
    assert {r["role"] for r in result["rows"]} == {"best", "weakest"}
    for row in result["rows"]:
        assert {"teacher", "none", "kd_t1", "kd_t2", "kd_t4", "dist", "fitnet", "auto", "auto_choice"} <= set(row)
        assert row["auto"] == row[row["auto_choice"]]
    assert len(result["diagnose"]) == 2 and "score" in result["diagnose"][0]
    assert result["summary"]["students"] == 2 and (tmp_path / "mv.md").read_text().startswith("| dataset")


def test_none_trains_without_the_teachers_view_cache(tmp_path, teacher, monkeypatch):
    """With consistent teaching from a view cache (the packaged AV-Digits recipe's scheme), the KD
    candidates read the cache and ``none`` trains like the demo's twin: same augmentation, no cache."""
    from mmdistill import api
    from mmdistill.auto import run_auto
    from mmdistill.config import parse_config

    seen = {}
    for name in ("train", "distill"):
        real = getattr(api, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen.setdefault(_name, []).append(kwargs["cfg"] if "cfg" in kwargs else args[2])
            return _real(*args, **kwargs)

        monkeypatch.setattr(api, name, spy)
    cfg = student(teacher, epochs=1)
    cfg["train"].update(augment={"audio": [{"type": "time_mask", "width": 2}]}, augment_teacher="same",
                        view_cache={"views": 2})
    run_auto(parse_config(cfg), tmp_path / "run")
    assert [c.view_cache for c in seen["train"]] == [None]
    assert all(c.view_cache.views == 2 and c.augment for c in seen["distill"]) and len(seen["distill"]) >= 4
    assert seen["train"][0].augment == seen["distill"][0].augment
