"""Training budgets: early stopping, best epoch and the not-converged flag, step counts, and
separate labelled / transfer batches (``train.labelled_batch_size``)."""
import json

import pytest
import torch

torch.set_num_threads(1)

from conftest import run_cli, synthetic_splits, write  # noqa: E402
from mmdistill.api import make_terms  # noqa: E402
from mmdistill.config import TrainConfig
from mmdistill.errors import ConfigError  # noqa: E402
from mmdistill.data import DataSplits  # noqa: E402
from mmdistill.distill import engine  # noqa: E402
from mmdistill.distill.engine import Trainer, in_last_tenth  # noqa: E402
from mmdistill.distill.tasks import DistillationTask, SupervisedTask  # noqa: E402
from mmdistill.distill.transfer import TransferBatchSampler, transfer_loader  # noqa: E402
from mmdistill.models import build_model  # noqa: E402

MODEL = {"encoders": {"image": {"type": "conv", "channels": [4]}, "audio": {"type": "mlp", "hidden": [8]}},
         "fusion": {"type": "concat"}}


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return synthetic_splits()


def model(data):
    return build_model(MODEL, data.specs, data.num_classes, seed=0)


def scripted(monkeypatch, values):
    """Validation accuracy of successive epochs taken from ``values`` (the engine's own is replaced)."""
    it = iter(values)

    def fake(logits, labels):
        value = next(it)
        if isinstance(value, BaseException):
            raise value
        return value

    monkeypatch.setattr(engine, "accuracy", fake)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 10, "batch_size": 16, "progress": False, **kw})


def states_equal(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_stops_after_patience_and_restores_the_best_weights(data, monkeypatch):
    # best at epoch 2, then 3 epochs without improvement: stops after epoch 5, holding epoch 2's weights
    scripted(monkeypatch, [0.5, 0.7, 0.6, 0.65, 0.69, 0.9, 0.9, 0.9, 0.9, 0.9])
    m = model(data)
    fit = Trainer(cfg(early_stopping={"patience": 3}), seed=0).fit(SupervisedTask(m), data.train, data.val)
    assert (fit.epochs, fit.best_epoch, fit.stopped_early, fit.converged) == (5, 2, True, True)
    assert fit.best_val_accuracy == 0.7
    steps_per_epoch = -(-len(data.train) // 16)
    assert fit.steps == 5 * steps_per_epoch
    # the weights after epoch 2 of the same run (constant learning rate: the schedule does not depend on epochs)
    scripted(monkeypatch, [0.5, 0.7])
    ref = model(data)
    Trainer(cfg(epochs=2), seed=0).fit(SupervisedTask(ref), data.train, data.val)
    assert states_equal(m.state_dict(), ref.state_dict())


def test_min_delta_needs_a_large_enough_improvement(data, monkeypatch):
    scripted(monkeypatch, [0.5, 0.505, 0.51, 0.6, 0.6])
    fit = Trainer(cfg(early_stopping={"patience": 2, "min_delta": 0.02}), seed=0).fit(
        SupervisedTask(model(data)), data.train, data.val)
    assert (fit.epochs, fit.best_epoch, fit.stopped_early) == (3, 3, True)  # best by any margin, stopped by min_delta


def test_without_early_stopping_every_epoch_runs(data, monkeypatch):
    scripted(monkeypatch, [0.9] + [0.1] * 9)
    fit = Trainer(cfg(), seed=0).fit(SupervisedTask(model(data)), data.train, data.val)
    assert (fit.epochs, fit.best_epoch, fit.stopped_early) == (10, 1, False)


def test_best_epoch_in_the_last_tenth_is_flagged_not_converged(data, monkeypatch):
    assert in_last_tenth(10, 10) and not in_last_tenth(9, 10) and in_last_tenth(19, 20) and not in_last_tenth(18, 20)
    scripted(monkeypatch, [0.1 * i for i in range(1, 11)])
    fit = Trainer(cfg(), seed=0, label="student").fit(SupervisedTask(model(data)), data.train, data.val)
    assert fit.best_epoch == 10 and not fit.converged
    assert fit.budget()["converged"] is False
    assert fit.warning("student").startswith("student: warning: best epoch 10 of 10 is in the last tenth")
    scripted(monkeypatch, [0.1 * i for i in range(1, 10)] + [0.0])
    fit = Trainer(cfg(), seed=0).fit(SupervisedTask(model(data)), data.train, data.val)
    assert fit.best_epoch == 9 and fit.converged and fit.warning("train") is None


VALUES = [0.5, 0.6, 0.55, 0.7, 0.65, 0.66, 0.69, 0.9, 0.9, 0.9]


def test_resume_mid_run_gives_the_same_result(data, monkeypatch, tmp_path):
    rule = cfg(early_stopping={"patience": 3}, scheduler={"name": "cosine"})
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    scripted(monkeypatch, VALUES)
    whole = model(data)
    ref = Trainer(rule, seed=0, run_dir=tmp_path / "a").fit(SupervisedTask(whole), data.train, data.val)
    assert (ref.epochs, ref.best_epoch, ref.stopped_early) == (7, 4, True)
    # killed during epoch 6 (after epoch 5's state was saved), then resumed
    scripted(monkeypatch, VALUES[:5] + [KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        Trainer(rule, seed=0, run_dir=tmp_path / "b").fit(SupervisedTask(model(data)), data.train, data.val)
    scripted(monkeypatch, VALUES[5:])
    resumed = model(data)
    fit = Trainer(rule, seed=0, run_dir=tmp_path / "b", resume=True).fit(SupervisedTask(resumed), data.train,
                                                                         data.val)
    assert (fit.epochs, fit.best_epoch, fit.stopped_early, fit.steps) == (7, 4, True, ref.steps)
    assert states_equal(whole.state_dict(), resumed.state_dict())
    # killed after the stopping epoch's state was written: resuming stops at once, with the best weights
    again = model(data)
    fit = Trainer(rule, seed=0, run_dir=tmp_path / "a", resume=True).fit(SupervisedTask(again), data.train, data.val)
    assert (fit.epochs, fit.best_epoch, fit.stopped_early, fit.steps) == (7, 4, True, ref.steps)
    assert states_equal(whole.state_dict(), again.state_dict())


def test_early_stopping_is_validated():
    with pytest.raises(Exception, match="patience"):
        TrainConfig(early_stopping={"patience": 0})
    with pytest.raises(Exception, match="patienc"):
        TrainConfig(early_stopping={"patienc": 3})


def test_cli_summary_records_the_budget(tmp_path, capsys):
    config = {"seed": 0, "device": "cpu", "data": {"name": "synthetic", "train_size": 80, "test_size": 20},
              "model": MODEL, "train": {"epochs": 3, "batch_size": 16, "progress": False, "val_fraction": 0.2,
                                        "early_stopping": {"patience": 1}}}
    assert run_cli("train", write(tmp_path, "t.yaml", config), "--out", tmp_path / "t") == 0
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    history = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert summary["epochs_run"] == len(history) and summary["max_epochs"] == 3
    assert summary["steps"] == len(history) * -(-64 // 16)
    best = max(range(len(history)), key=lambda i: (history[i]["val_accuracy"], -i)) + 1
    assert summary["best_epoch"] == best
    assert summary["converged"] == (summary["stopped_early"] or best < 3)
    assert ("train: warning: best epoch" in capsys.readouterr().err) == (not summary["converged"])
    # a run that cannot stop early and is still improving at its last epoch warns on stderr
    config["train"] = {**config["train"], "epochs": 1}
    config["train"].pop("early_stopping")
    assert run_cli("train", write(tmp_path, "one.yaml", config), "--out", tmp_path / "one") == 0
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["converged"] is False
    assert "train: warning: best epoch 1 of 1 is in the last tenth" in capsys.readouterr().err


# --- separate labelled and transfer batches --------------------------------------------------------
def test_transfer_batches_hold_labelled_then_hidden_samples(data):
    labels = data.train.labels.clone()
    labels[10:] = -1  # 10 labelled samples
    train = data.train.with_labels(labels)
    loader = transfer_loader(train, 16, 8, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 4
    seen = torch.cat([b["index"][8:] for b in batches])
    assert sorted(seen.tolist()) == list(range(len(train)))  # the transfer batches: one pass over everything
    assert [b["index"].shape[0] for b in batches] == [24, 24, 24, 8 + len(train) - 48]
    for b in batches:
        assert (b["index"][:8] < 10).all() and torch.equal(b["label"][:8], labels[b["index"][:8]])
        assert (b["label"][8:] == -1).all() and not b["labelled"][8:].any()
    first = torch.cat([b["index"][:8] for b in batches[:2]])  # 16 draws cycle the 10 labelled ones
    assert sorted(first[:10].tolist()) == list(range(10))
    again = [b["index"] for b in transfer_loader(train, 16, 8, seed=0)]
    assert all(torch.equal(a, b["index"]) for a, b in zip(again, batches))
    with pytest.raises(Exception, match="no labelled sample"):
        TransferBatchSampler(torch.zeros(5, dtype=torch.bool), 4, 2)


def test_distillation_with_transfer_batches_runs_and_resumes(data, tmp_path, monkeypatch):
    labels = data.train.labels.clone()
    labels[10:] = -1
    train = data.train.with_labels(labels)
    teacher = build_model(MODEL, data.specs, data.num_classes, seed=1)
    rule = cfg(epochs=3, labelled_batch_size=8)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    def run(out, resume=False):
        student = build_model(MODEL, data.specs, data.num_classes, seed=0)
        task = DistillationTask(student, teacher, make_terms(["kd"]))
        return student, Trainer(rule, seed=0, run_dir=out, resume=resume).fit(task, train, data.val)

    scripted(monkeypatch, [0.1, 0.2, 0.3])
    whole, fit = run(tmp_path / "a")
    assert fit.steps == 3 * 4 == 3 * -(-len(train) // 16) and fit.history[0]["train_ce"] > 0 and fit.history[0]["train_kd"] > 0
    scripted(monkeypatch, [0.1, 0.2, KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    scripted(monkeypatch, [0.3])
    resumed, fit = run(tmp_path / "b", resume=True)
    assert fit.steps == 12 and states_equal(whole.state_dict(), resumed.state_dict())


def test_transfer_batches_are_refused_under_ddp(data, monkeypatch):
    monkeypatch.setattr(engine.distributed, "active", lambda: True)
    with pytest.raises(ConfigError, match="labelled_batch_size"):
        Trainer(cfg(labelled_batch_size=8), seed=0).fit(SupervisedTask(model(data)), data.train, data.val)
