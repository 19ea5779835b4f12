"""The loop's callbacks: a user's callback sees every event in order, can stop a fit, saves and
restores its state through state.pt; the guide's CSV example runs; a state.pt written before
callbacks existed still resumes; teacher outputs given from outside serve the fit."""
import csv
import json
import re

import pytest
import torch

torch.set_num_threads(1)

from conftest import REPO, synthetic_splits  # noqa: E402
from mmdistill import api  # noqa: E402
from mmdistill.config import TrainConfig  # noqa: E402
from mmdistill.data import DataSplits  # noqa: E402
from mmdistill.distill import engine  # noqa: E402
from mmdistill.distill.callbacks import Callback  # noqa: E402
from mmdistill.distill.engine import Trainer  # noqa: E402
from mmdistill.distill.hooks import OUTPUT  # noqa: E402
from mmdistill.distill.tasks import DistillationTask, SupervisedTask, Task  # noqa: E402
from mmdistill.errors import ConfigError  # noqa: E402
from mmdistill.models import build_model  # noqa: E402

MODEL = {"encoders": {"image": {"type": "conv", "channels": [4]}, "audio": {"type": "mlp", "hidden": [8]}},
         "fusion": {"type": "concat"}}


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return synthetic_splits()


def model(data, seed=0):
    return build_model(MODEL, data.specs, data.num_classes, seed=seed)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 16, "progress": False, **kw})


class Recorder(Callback):
    """Records the events it sees; its state (epochs seen) travels through state.pt."""

    def __init__(self, crash_at: int | None = None):
        self.events, self.epochs_seen, self.crash_at = [], 0, crash_at

    def on_fit_start(self, trainer, fit):
        self.events.append(("fit_start", fit.epoch, fit.resumed))

    def on_epoch_start(self, trainer, fit):
        self.events.append(("epoch_start", fit.epoch))

    def on_progress(self, trainer, fit, loss, steps):
        self.events.append(("progress", fit.epoch, steps))

    def on_epoch_end(self, trainer, fit, record):
        self.epochs_seen += 1
        self.events.append(("epoch_end", record["epoch"], fit.improved))
        if record["epoch"] == self.crash_at:
            raise KeyboardInterrupt

    def on_fit_end(self, trainer, fit):
        self.events.append(("fit_end", fit.epoch, type(fit.error).__name__ if fit.error else None))

    def state_dict(self):
        return {"epochs_seen": self.epochs_seen}

    def load_state_dict(self, state):
        self.epochs_seen = state["epochs_seen"]


def test_a_callback_sees_each_event_in_order_and_every_step_once(data):
    rec = Recorder()
    fit = api.train(model(data), data, cfg(), device="cpu", callbacks=[rec])
    kinds = [e[0] for e in rec.events]
    assert kinds[0] == "fit_start" and kinds[-1] == "fit_end"
    assert [e[1] for e in rec.events if e[0] == "epoch_end"] == [1, 2, 3]
    per_epoch = -(-len(data.train) // 16)
    for epoch in range(3):  # every step reported once through on_progress, the last read at the epoch's end
        assert sum(e[2] for e in rec.events if e[0] == "progress" and e[1] == epoch) == per_epoch
    improved = [e[2] for e in rec.events if e[0] == "epoch_end"]
    assert improved[0] and [h["epoch"] for h in fit.history] == [1, 2, 3]
    assert fit.best_epoch == max(i + 1 for i, imp in enumerate(improved) if imp)
    assert rec.events[-1] == ("fit_end", 3, None)


def test_a_callback_can_stop_the_fit(data):
    class StopAfterTwo(Callback):
        def on_epoch_end(self, trainer, fit, record):
            fit.stop = record["epoch"] == 2

    fit = Trainer(cfg(epochs=5), seed=0, callbacks=[StopAfterTwo()]).fit(SupervisedTask(model(data)), data.train,
                                                                        data.val)
    assert (fit.epochs, fit.stopped_early) == (2, True)


def test_callback_state_is_saved_in_state_pt_and_restored_on_resume(data, tmp_path):
    (tmp_path / "whole").mkdir()
    (tmp_path / "b").mkdir()
    whole = model(data)
    Trainer(cfg(epochs=4), seed=0, run_dir=tmp_path / "whole").fit(SupervisedTask(whole), data.train, data.val)
    with pytest.raises(KeyboardInterrupt):  # interrupted in epoch 3's callbacks, before its state.pt
        Trainer(cfg(epochs=4), seed=0, run_dir=tmp_path / "b", callbacks=[Recorder(crash_at=3)]).fit(
            SupervisedTask(model(data)), data.train, data.val)
    state = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["callbacks"]["Recorder"] == {"epochs_seen": 2}
    rec, resumed = Recorder(), model(data)
    Trainer(cfg(epochs=4), seed=0, run_dir=tmp_path / "b", resume=True, callbacks=[rec]).fit(
        SupervisedTask(resumed), data.train, data.val)
    assert rec.events[0] == ("fit_start", 2, True) and rec.epochs_seen == 4
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_a_state_pt_from_before_callbacks_resumes_with_its_early_stopping_reference(data, tmp_path, monkeypatch):
    """The old format kept early stopping's reference in ``budget`` (patience_score, patience_epoch)."""
    values = iter([0.5, 0.7, 0.6, 0.65, 0.69, 0.9, 0.9, 0.9])
    monkeypatch.setattr(engine, "accuracy", lambda logits, labels: next(values))
    rule = cfg(epochs=8, early_stopping={"patience": 3})
    (tmp_path / "a").mkdir()
    with pytest.raises(KeyboardInterrupt):
        Trainer(rule, seed=0, run_dir=tmp_path / "a", callbacks=[Recorder(crash_at=4)]).fit(
            SupervisedTask(model(data)), data.train, data.val)
    path = tmp_path / "a" / "state.pt"
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 3 and state["callbacks"]["EarlyStopping"] == {"score": 0.7, "epoch": 2}
    del state["callbacks"]  # as written before callbacks existed
    state["budget"].update(patience_score=0.7, patience_epoch=2)
    torch.save(state, path)
    values = iter([0.65, 0.69, 0.9, 0.9])  # epochs 4 on
    fit = Trainer(rule, seed=0, run_dir=tmp_path / "a", resume=True).fit(SupervisedTask(model(data)), data.train,
                                                                         data.val)
    # best at epoch 2, then 3 epochs without improvement: stops after epoch 5 as an uninterrupted run would
    assert (fit.epochs, fit.best_epoch, fit.stopped_early) == (5, 2, True)


def test_callbacks_must_be_a_list_of_callbacks_with_distinct_names(data):
    with pytest.raises(TypeError, match="callbacks: expected a list"):
        Trainer(cfg(), callbacks=Recorder())
    with pytest.raises(TypeError, match="callbacks: expected mmdistill"):
        Trainer(cfg(), callbacks=[print])
    with pytest.raises(ValueError, match="two callbacks are named 'Recorder'"):
        Trainer(cfg(), callbacks=[Recorder(), Recorder()])


def guide_example() -> str:
    text = (REPO / "docs" / "guide.md").read_text()
    section = text.split("## Extending the loop: callbacks", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_guides_csv_callback_example_runs(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"model": model(data), "data": data, "cfg": cfg()}
    exec(compile(guide_example(), "guide.md", "exec"), namespace)
    rows = list(csv.reader((tmp_path / "epochs.csv").open()))
    history = namespace["result"].history
    assert rows[0] == ["epoch", "train_loss", "val_accuracy"]
    assert [[int(r[0]), float(r[1]), float(r[2])] for r in rows[1:]] == \
        [[h["epoch"], h["train_loss"], h["val_accuracy"]] for h in history]


def test_tasks_share_the_task_base_and_the_engine_probes_nothing():
    assert issubclass(SupervisedTask, Task) and issubclass(DistillationTask, Task)
    source = (REPO / "src" / "mmdistill" / "distill" / "engine.py").read_text()
    assert not re.search(r"hasattr\(task|getattr\(task|task\._", source)


def test_precomputed_teacher_outputs_serve_the_fit_like_the_teachers_own(data):
    teacher = model(data, seed=3)
    terms = [{"name": "kd", "temperature": 4.0}]

    def run(**kw):
        student = model(data)
        task = DistillationTask(student, teacher, api.make_terms(terms), **kw)
        fit = Trainer(cfg(epochs=2), seed=0).fit(task, data.train, data.val)
        return student, fit

    ref_student, ref = run()
    outputs = DistillationTask(model(data), teacher, api.make_terms(terms)).compute_teacher_outputs(
        data.train, batch_size=32, device="cpu")
    student, fit = run(precomputed_outputs=outputs)
    assert [h["train_loss"] for h in fit.history] == [h["train_loss"] for h in ref.history]
    assert all(torch.equal(a, b) for a, b in zip(ref_student.state_dict().values(), student.state_dict().values()))
    # they are what is served: other outputs train another student
    other, _ = run(precomputed_outputs=[{OUTPUT: torch.zeros_like(outputs[0][OUTPUT])}])
    assert not all(torch.equal(a, b) for a, b in zip(ref_student.state_dict().values(), other.state_dict().values()))
    with pytest.raises(ConfigError, match="precomputed_outputs: 5 rows for a training set of"):
        run(precomputed_outputs=[{OUTPUT: outputs[0][OUTPUT][:5]}])


def test_a_trainer_fitted_twice_starts_its_built_in_callbacks_afresh(data, monkeypatch):
    values = iter([0.9, 0.8, 0.5, 0.6, 0.7])  # first fit stops after epoch 2; the second improves every epoch
    monkeypatch.setattr(engine, "accuracy", lambda logits, labels: next(values))
    trainer = Trainer(cfg(epochs=3, early_stopping={"patience": 1}), seed=0)
    first = trainer.fit(SupervisedTask(model(data)), data.train, data.val)
    second = trainer.fit(SupervisedTask(model(data)), data.train, data.val)
    assert (first.epochs, first.stopped_early) == (2, True)
    assert (second.epochs, second.stopped_early) == (3, False)
