"""The training/distillation engine, checkpoints, and evaluation metrics (tiny models, few steps)."""
import json
import math

import pytest
import torch
from torch import nn

torch.set_num_threads(1)

from conftest import synthetic_splits  # noqa: E402
from mmdistill.api import distill, train  # noqa: E402
from mmdistill.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from mmdistill.config import TrainConfig  # noqa: E402
from mmdistill.data import DataSplits  # noqa: E402
from mmdistill.distill.adapters import Adapter  # noqa: E402
from mmdistill.distill.engine import Trainer  # noqa: E402
from mmdistill.distill.tasks import DistillationTask, SupervisedTask  # noqa: E402
from mmdistill.api import make_terms  # noqa: E402
from mmdistill.errors import CheckpointError  # noqa: E402
from mmdistill.evaluate import (accuracy, agreement, classification_report, expected_calibration_error,  # noqa: E402
                                macro_f1, predict)
from mmdistill.models import build_model, count_parameters  # noqa: E402

TEACHER = {"encoders": {"image": {"type": "conv", "channels": [8]}, "audio": {"type": "conv", "channels": [8]}},
           "fusion": {"type": "concat"}}
STUDENT = {"encoders": {"image": {"type": "conv", "channels": [4]}, "audio": {"type": "mlp", "hidden": [16]}},
           "fusion": {"type": "late"}}
CFG = TrainConfig(epochs=2, batch_size=16, eval_batch_size=64, progress=False)


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return synthetic_splits()


def model_for(cfg, data, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg, data.specs, data.num_classes)


def saver(model_cfg, data):
    def save(path, model, meta):
        save_checkpoint(path, model, model_config=model_cfg, specs=data.specs, num_classes=data.num_classes, meta=meta)
    return save


def without_time(history):
    return [{k: v for k, v in record.items() if k != "epoch_seconds"} for record in history]


# --- supervised training ----------------------------------------------------------------------------
def test_training_is_deterministic_for_a_seed(data):
    runs = []
    for seed in (0, 0, 1):
        model = model_for(TEACHER, data, seed)
        result = Trainer(CFG, seed=seed).fit(SupervisedTask(model), data.train, data.val)
        runs.append((without_time(result.history), model.state_dict()))
    (h0, s0), (h1, s1), (h2, _) = runs
    assert h0 == h1
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    assert [r["train_loss"] for r in h0] != [r["train_loss"] for r in h2]


def test_metrics_and_checkpoints_are_written(tmp_path, data):
    model = model_for(TEACHER, data)
    result = train(model, data, CFG, device="cpu", run_dir=tmp_path, save=saver(TEACHER, data))
    assert len(result.history) == 2 and 1 <= result.best_epoch <= 2
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert records == result.history
    for epoch, record in enumerate(records, 1):
        assert record["epoch"] == epoch
        assert {"lr", "train_loss", "train_ce", "train_accuracy", "val_accuracy", "epoch_seconds"} <= set(record)
        assert math.isfinite(record["train_loss"]) and 0 <= record["val_accuracy"] <= 1
    assert result.best_val_accuracy == max(r["val_accuracy"] for r in records)
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*"))

    # weights-only checkpoints that rebuild the model
    raw = torch.load(tmp_path / "best.pt", weights_only=True)
    assert raw["model_config"] == TEACHER and raw["num_classes"] == 10
    best, payload = load_checkpoint(tmp_path / "best.pt")
    assert not best.training and payload["meta"]["epoch"] == result.best_epoch
    assert set(payload["specs"]) == {"image", "audio"} and "state_dict" not in payload
    state = model.state_dict()  # the engine leaves the best weights in the model
    assert all(torch.equal(best.state_dict()[k], state[k]) for k in state)
    last, payload = load_checkpoint(tmp_path / "last.pt")
    assert payload["meta"]["epoch"] == 2 and payload["meta"]["metrics"] == records[-1]
    model.eval()
    batch = data.test[list(range(8))]
    torch.testing.assert_close(best(batch), model(batch))
    assert count_parameters(last) == count_parameters(model)


def test_unreadable_checkpoint_is_a_checkpoint_error(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


# --- distillation -------------------------------------------------------------------------------------
def trained_teacher(data):
    teacher = model_for(TEACHER, data)
    Trainer(TrainConfig(epochs=1, batch_size=16, progress=False)).fit(SupervisedTask(teacher), data.train)
    return teacher


def test_teacher_frozen_in_eval_mode_and_fitnet_adapter(data):
    teacher = trained_teacher(data)
    teacher.zero_grad(set_to_none=True)  # forget the gradients of its own training
    teacher.train()  # the task must put it in eval mode whatever the caller left it in
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modes = []
    teacher.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    student = model_for(STUDENT, data, seed=1)
    student_params = count_parameters(student)
    terms = make_terms([{"name": "kd", "temperature": 2.0},
                        {"name": "fitnet", "weight": 0.5, "student": "encoders.image", "teacher": "encoders.image"}])
    task = DistillationTask(student, teacher, terms)
    result = Trainer(CFG, seed=0).fit(task, data.train, data.val)

    assert modes and not any(modes)
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN stats too
    # the student's [B, 4] image features are mapped onto the teacher's [B, 8]
    assert list(task.adapters) == ["1"] and isinstance(task.adapters["1"], Adapter)
    assert task.adapters["1"].project.weight.shape == (8, 4)
    assert sum(p.numel() for p in task.extra_parameters()) == 4 * 8
    assert count_parameters(student) == student_params  # the adapter is not part of the student
    assert all(p.grad is not None for p in task.adapters.parameters())
    assert {"train_ce", "train_kd", "train_fitnet"} <= set(result.history[0])


def test_api_distill_counts_extra_parameters(tmp_path, data):
    teacher = trained_teacher(data)
    student = model_for(STUDENT, data, seed=1)
    terms = ["kd", {"name": "fitnet", "student": "encoders.image", "teacher": "encoders.image"},
             {"name": "fitnet", "student": "encoders.audio", "teacher": "encoders.audio"}]
    result = distill(student, teacher, data, terms=terms, cfg=CFG, device="cpu", run_dir=tmp_path,
                     save=saver(STUDENT, data))
    # image: Linear(4 -> 8); audio: Linear(16 -> 8), no biases
    assert result.extra_params == 4 * 8 + 16 * 8
    assert "train_fitnet[image]" in result.history[0] and "train_fitnet[audio]" in result.history[0]
    loaded, _ = load_checkpoint(tmp_path / "best.pt")
    assert count_parameters(loaded) == count_parameters(student)


def test_same_shape_features_need_no_adapter(data):
    teacher = model_for(TEACHER, data)
    student = model_for(TEACHER, data, seed=1)
    task = DistillationTask(student, teacher, make_terms([{"name": "fitnet", "student": "encoders.audio",
                                                           "teacher": "encoders.audio"}]))
    task.setup(data.train[list(range(8))], len(data.train))
    assert len(task.adapters) == 0 and task.extra_parameters() == []


# --- metrics ----------------------------------------------------------------------------------------------
LOGITS = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
LABELS = torch.tensor([0, 1, 1, 2])  # predictions 0, 1, 2, 0


def test_accuracy_and_macro_f1_by_hand():
    assert accuracy(LOGITS, LABELS) == 0.5
    # class 0: tp 1, fp 1, fn 0 -> 2/3; class 1: tp 1, fn 1 -> 2/3; class 2: fp 1, fn 1 -> 0
    assert macro_f1(LOGITS, LABELS) == pytest.approx(4 / 9)
    assert macro_f1(LOGITS, torch.tensor([0, 1, 2, 0])) == 1.0
    assert math.isnan(accuracy(LOGITS[:0], LABELS[:0]))
    assert agreement(LOGITS, LOGITS + 5) == 1.0
    assert agreement(LOGITS, LOGITS.flip(1)) == 0.25  # classes 0 and 2 swapped: only sample 1 (class 1) agrees


def test_ece_by_hand():
    e, e2, e3 = math.e, math.e ** 2, math.e ** 3
    c0, c1, c2 = e2 / (e2 + 2), e / (e + 2), e3 / (e3 + 2)  # confidences: samples 1 and 3 share c1
    assert 11 / 15 < c0 <= 12 / 15 and 8 / 15 < c1 <= 9 / 15 and 13 / 15 < c2 <= 14 / 15  # three bins of 15
    expected = 1 / 4 * abs(1 - c0) + 2 / 4 * abs(0.5 - c1) + 1 / 4 * abs(0 - c2)
    assert expected_calibration_error(LOGITS, LABELS) == pytest.approx(expected, rel=1e-6)
    # one bin: |accuracy - mean confidence|
    assert expected_calibration_error(LOGITS, LABELS, bins=1) == pytest.approx(abs(0.5 - (c0 + 2 * c1 + c2) / 4), rel=1e-6)
    report = classification_report(LOGITS, LABELS)
    assert report == {"accuracy": 0.5, "macro_f1": pytest.approx(4 / 9), "ece": pytest.approx(expected, rel=1e-6),
                      "samples": 4}


class Recorder(nn.Module):
    """Records the batches it sees; predicts class 0."""

    def __init__(self):
        super().__init__()
        self.batches = []
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        self.batches.append(batch)
        return torch.zeros(len(batch["label"]), 10) + self.weight


def test_predict_drop_zeros_the_modality(data):
    recorder = Recorder().train()
    logits, labels = predict(recorder, data.test, batch_size=8, drop=["audio"])
    assert logits.shape == (20, 10) and torch.equal(labels, data.test.labels)
    assert recorder.training  # mode restored
    assert len(recorder.batches) == 3
    seen_image = torch.cat([b["image"] for b in recorder.batches])
    seen_audio = torch.cat([b["audio"] for b in recorder.batches])
    assert torch.equal(seen_image, data.test.modalities["image"])
    assert not seen_audio.any() and data.test.modalities["audio"].any()  # the dataset is untouched
    assert not any(b["present"]["audio"].any() for b in recorder.batches)
    assert all(b["present"]["image"].all() for b in recorder.batches)
    # for a real model, dropping a modality is the same as leaving it out of the batch
    model = model_for(TEACHER, data).eval()
    dropped, _ = predict(model, data.test, drop=["audio"])
    batch = data.test[list(range(len(data.test)))]
    del batch["audio"], batch["present"]["audio"]
    with torch.no_grad():
        torch.testing.assert_close(dropped, model(batch))
        assert not torch.allclose(dropped, predict(model, data.test)[0])


def test_term_weight_warms_up_linearly():
    from mmdistill.distill.tasks import Term
    from mmdistill.losses import build_loss

    term = Term("kd", build_loss("kd"), weight=2.0, warmup=0.5)
    assert term.weight_at(0.0) == 0.0 and term.weight_at(0.25) == 1.0 and term.weight_at(0.5) == 2.0 == term.weight_at(0.9)
