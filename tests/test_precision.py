"""train.precision (autocast, GradScaler for fp16), train.compile, and the hot loop's device-side
metrics and divergence check (tiny models, few steps)."""
import sys

import pytest
import torch
from torch import nn

torch.set_num_threads(1)

from mmdistill.api import distill, train  # noqa: E402
from mmdistill.config import TrainConfig, parse_config  # noqa: E402
from mmdistill.data import DATASETS, DataSplits, parse_options, split_validation  # noqa: E402
from mmdistill.distill.engine import EpochMeter, Trainer  # noqa: E402
from mmdistill.distill.tasks import SupervisedTask  # noqa: E402
from mmdistill.errors import ConfigError  # noqa: E402
from mmdistill.models import build_model  # noqa: E402

MODEL = {"encoders": {"image": {"type": "conv", "channels": [8]}, "audio": {"type": "mlp", "hidden": [32]}},
         "fusion": {"type": "concat"}}
STUDENT = {"encoders": {"image": {"type": "mlp", "hidden": [16]}, "audio": {"type": "mlp", "hidden": [16]}},
           "fusion": {"type": "concat"}}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def data() -> DataSplits:
    builder = DATASETS.get("synthetic")
    train_set, test_set, info = builder(None, parse_options("synthetic", {"train_size": 96, "test_size": 16}), 0)
    fit, val = split_validation(train_set, 0.2, seed=0)
    return DataSplits(train=fit, val=val, test=test_set, info=info)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 4, "batch_size": 16, "eval_batch_size": 64, "progress": False,
                          "optimizer": {"name": "adam", "lr": 0.01}, **kw})


def fit_model(data, device="cpu", **kw):
    torch.manual_seed(0)
    model = build_model(MODEL, data.specs, data.num_classes)
    return model, train(model, data, cfg(**kw), device=device)


def assert_trains(model, result):
    losses = [r["train_loss"] for r in result.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point())


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_trains_on_cpu_and_keeps_float32_weights(data, precision):
    model, result = fit_model(data, precision=precision)
    assert_trains(model, result)


def test_reduced_precision_changes_the_computation(data):
    """bf16 is really used: the losses differ from fp32's (autocast is not silently off)."""
    _, fp32 = fit_model(data, epochs=1)
    _, bf16 = fit_model(data, epochs=1, precision="bf16")
    assert fp32.history[0]["train_loss"] != bf16.history[0]["train_loss"]


def test_distillation_in_bf16_trains(data):
    torch.manual_seed(0)
    teacher = build_model(MODEL, data.specs, data.num_classes)
    train(teacher, data, cfg(epochs=2), device="cpu")
    student = build_model(STUDENT, data.specs, data.num_classes)
    result = distill(student, teacher, data, terms=[{"name": "kd", "temperature": 4.0}], gamma=0.5,
                     cfg=cfg(precision="bf16", cache_teacher=False), device="cpu")
    assert_trains(student, result)


def test_fp16_state_holds_the_loss_scale_and_resumes_to_the_same_weights(tmp_path, data):
    full, _ = fit_model(data, epochs=2, precision="fp16")
    torch.manual_seed(0)
    part = build_model(MODEL, data.specs, data.num_classes)
    Trainer(cfg(epochs=1, precision="fp16"), run_dir=tmp_path).fit(SupervisedTask(part), data.train, data.val)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    torch.manual_seed(0)
    resumed = build_model(MODEL, data.specs, data.num_classes)
    Trainer(cfg(epochs=2, precision="fp16"), run_dir=tmp_path, resume=True).fit(
        SupervisedTask(resumed), data.train, data.val)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_unknown_precision_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="train.precision"):
        parse_config({"data": {"name": "synthetic"}, "model": MODEL, "train": {"precision": "fp8"}})


def test_epoch_metrics_are_the_sample_weighted_means_of_the_steps():
    meter = EpochMeter(torch.device("cpu"))
    steps = [(torch.tensor(2.0), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])),
             (torch.tensor(5.0), torch.tensor([[1.0, 0.0]]), torch.tensor([0]))]
    for ce, logits, labels in steps:
        meter.add({"ce": ce}, ce * 2, logits, labels)
    out = meter.read()
    assert out == pytest.approx({"train_ce": 3.0, "train_loss": 6.0, "train_accuracy": 2 / 3})


class Exploding(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model(batch) * float("nan")


def test_a_diverging_loss_stops_the_run_with_its_epoch(data):
    torch.manual_seed(0)
    model = Exploding(build_model(MODEL, data.specs, data.num_classes))
    with pytest.raises(FloatingPointError, match="loss became nan in epoch 1"):
        train(model, data, cfg(epochs=2), device="cpu")


def test_compile_trains_and_leaves_the_model_eager(data):
    model, result = fit_model(data, epochs=2, compile=True)
    assert "forward" not in model.__dict__  # the compiled forward is removed when the fit ends
    losses = [r["train_loss"] for r in result.history]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_compile_failing_on_this_machine_is_a_clear_error(data, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("InductorError: no working C++ compiler found")
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(ConfigError, match="train.compile: torch.compile does not work here .*no working C"):
        fit_model(data, epochs=1, compile=True)


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_each_precision_trains_on_cuda(data, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this CUDA device has no bf16")
    model, result = fit_model(data, device="cuda", precision=precision)
    assert_trains(model, result)


def test_training_steps_do_not_wait_for_the_host(data, monkeypatch):
    """Host reads of tensors (float, int, bool, item, tolist) by the engine and the task during a
    fit: a few per epoch, not one per step, once the throttled progress read is out of the way.
    (The optimiser's and the sampler's reads of their own CPU tensors are not counted.)"""
    import importlib

    engine = importlib.import_module("mmdistill.distill.engine")

    monkeypatch.setattr(engine, "SYNC_INTERVAL", 1e9)
    reads = []
    for name in ("__float__", "__int__", "__bool__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.endswith(("distill/engine.py", "distill/tasks.py")):
                reads.append(f"{_name} {caller.rsplit('/', 1)[1]}:{sys._getframe(1).f_lineno}")
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    torch.manual_seed(0)
    model = build_model(STUDENT, data.specs, data.num_classes)
    Trainer(cfg(epochs=2, batch_size=4), seed=0).fit(SupervisedTask(model), data.train, None)
    steps = 2 * -(-len(data.train) // 4)
    assert steps >= 38 and len(reads) <= 2 * 3, reads
