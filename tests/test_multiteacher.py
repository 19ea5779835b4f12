"""Cross-modal students, several teachers and corrupted evaluation through the CLI, on real AV-Digits."""
import json
from pathlib import Path

import pytest
import torch

from mmdistill.config import parse_config
from mmdistill.errors import ConfigError
from test_cli import run_cli, write

torch.set_num_threads(1)

TWO_ENCODERS = {"image": {"type": "conv", "channels": [8, 16]}, "audio": {"type": "conv", "channels": [8, 16]}}


def config(data_root, **model) -> dict:
    return {"seed": 0, "device": "cpu",
            "data": {"name": "av_digits", "level": "clean", "pairs_per_recording": 1, "root": str(data_root)},
            "model": {"encoders": TWO_ENCODERS, **model},
            "train": {"epochs": 2, "batch_size": 64, "progress": False, "optimizer": {"lr": 0.01}}}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, data_root):
    """An image-only and an audio-only teacher, both from the two-encoder config via model.modalities."""
    tmp = tmp_path_factory.mktemp("teachers")
    for m in ("image", "audio"):
        assert run_cli("train", write(tmp, f"{m}.yaml", config(data_root, modalities=[m])), "--out", tmp / m) == 0
    return tmp


def test_several_teachers_fuse_per_sample_and_log_their_weights(teachers, tmp_path, data_root):
    cfg = config(data_root)
    cfg["distill"] = {"teachers": [{"name": "image", "checkpoint": str(teachers / "image" / "best.pt")},
                                   {"name": "audio", "checkpoint": str(teachers / "audio" / "best.pt")}],
                      "ensemble": {"strategy": "confidence"},
                      "terms": [{"name": "kd", "temperature": 2.0},
                                {"name": "fitnet", "weight": 0.1, "student": "encoders.audio",
                                 "teacher": "encoders.audio", "source": "audio"}]}
    assert run_cli("distill", write(tmp_path, "s.yaml", cfg), "--out", tmp_path / "s") == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert set(summary["teachers"]) == {"image", "audio"}
    assert summary["teachers"]["image"]["params"] < summary["student"]["params"]  # one encoder, not two
    mean = summary["ensemble"]["mean_weight"]
    assert sum(mean.values()) == pytest.approx(1.0) and summary["ensemble"]["strategy"] == "confidence"
    rows = (tmp_path / "s" / "teacher_weights.csv").read_text().splitlines()
    assert rows[0] == "index,label,image,audio"
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(len(rows) - 1))
    assert 2000 < len(rows) - 1 < 2700  # every training sample (2,700 recordings x 1 image, less validation)
    weights = torch.tensor([[float(v) for v in r.split(",")[2:]] for r in rows[1:]])
    assert torch.allclose(weights.sum(1), torch.ones(len(weights)), atol=1e-5)
    assert weights.std(0).min() > 0  # per sample, not constant
    epoch = json.loads((tmp_path / "s" / "metrics.jsonl").read_text().splitlines()[-1])
    assert epoch["teacher_weight_image"] + epoch["teacher_weight_audio"] == pytest.approx(1.0)


def test_cross_modal_student_and_corrupted_evaluation(teachers, tmp_path, data_root):
    """An audio-only student distilled from a teacher it cannot fully see, then evaluated under noise."""
    cfg = config(data_root, modalities=["audio"])
    cfg["model"]["encoders"] = {"audio": {"type": "conv", "channels": [8, 12]}}  # 12-d vs the teacher's 16-d
    cfg["distill"] = {"teacher": {"checkpoint": str(teachers / "image" / "best.pt")},
                      "terms": [{"name": "kd"}, {"name": "rkd", "student": "encoders.audio", "teacher": "encoders.image"},
                                {"name": "fitnet", "student": "encoders.audio", "teacher": "encoders.image"}]}
    assert run_cli("distill", write(tmp_path, "s.yaml", cfg), "--out", tmp_path / "s") == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["student"]["extra_params"] == 12 * 16  # the FitNets adapter across the modality gap
    best = tmp_path / "s" / "best.pt"
    clean = json.loads((tmp_path / "s" / "metrics.json").read_text())["accuracy"]
    accs = []
    for i in range(2):
        assert run_cli("evaluate", best, "--out", tmp_path / f"e{i}", "--corrupt", "audio:noise_snr:5") == 0
        metrics = json.loads((tmp_path / f"e{i}" / "metrics.json").read_text())
        assert metrics["corrupt"] == ["audio:noise_snr:5"]
        accs.append(metrics["accuracy"])
    assert accs[0] == accs[1] and accs[0] < clean  # -5 dB noise on the only modality: repeatable, and it hurts


def test_evaluate_corrupt_rejects_a_modality_the_model_lacks(teachers, tmp_path, capsys):
    assert run_cli("evaluate", teachers / "audio" / "best.pt", "--out", tmp_path / "e", "--corrupt", "image:occlusion:2") == 2
    assert "--corrupt: the model has no modality 'image'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


BASE = {"data": {"name": "synthetic"}, "model": {"encoders": TWO_ENCODERS}}


@pytest.mark.parametrize("distill, message", [
    ({"teacher": {"checkpoint": "a.pt"}, "teachers": [{"checkpoint": "b.pt"}]}, "distill: give exactly one of teacher"),
    ({}, "distill: give exactly one of teacher"),
    ({"teachers": [{"checkpoint": "a.pt", "name": "x"}, {"checkpoint": "b.pt", "name": "x"}]}, "distill.teachers: the name 'x'"),
    ({"teacher": {"checkpoint": "a.pt"}, "terms": [{"name": "kd", "source": "audio"}]},
     "distill.terms[0].source: no teacher named 'audio'"),
    ({"teachers": [{"checkpoint": "a.pt"}, {"checkpoint": "b.pt"}], "ensemble": {"strategy": "fixed"}},
     "distill.ensemble.weights: strategy fixed needs a weight for teacher 'teacher0'"),
    ({"teacher": {"checkpoint": "a.pt"}, "ensemble": {"strategy": "average", "weights": {"teacher0": 1}}},
     "distill.ensemble.weights: only used by strategy fixed"),
    ({"teacher": {"checkpoint": "a.pt"}, "ensemble": {"strategy": "vote"}}, "distill.ensemble.strategy"),
])
def test_teacher_config_errors_name_the_key(distill, message):
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "distill": distill})
    assert message in str(err.value)


def test_model_modalities_must_have_encoders():
    with pytest.raises(ConfigError, match="model.modalities: 'text' has no encoder"):
        parse_config({**BASE, "model": {"encoders": TWO_ENCODERS, "modalities": ["text"]}})


def test_feature_term_must_name_its_teacher_among_several():
    from mmdistill.api import make_terms
    from mmdistill.distill.tasks import DistillationTask
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fusion = nn.Linear(2, 2)

        def forward(self, batch):
            return self.fusion(batch["x"])

    terms = make_terms([{"name": "fitnet", "student": "fusion", "teacher": "fusion"}], ["a", "b"])
    with pytest.raises(ConfigError, match="distill.terms\\[0\\].source: with several teachers a feature term"):
        DistillationTask(Tiny(), [Tiny(), Tiny()], terms)


def test_every_shipped_recipe_validates():
    from mmdistill.config import load_config

    recipes = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(recipes) >= 9
    for path in recipes:
        load_config(path)
