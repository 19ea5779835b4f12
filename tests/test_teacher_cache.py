"""The in-run teacher-output cache gives exactly the results of running the teacher every step."""
import torch

from mmdistill.api import distill, train
from mmdistill.config import TrainConfig
from mmdistill.data import DataSplits
from mmdistill.data.registry import DATASETS, parse_options
from mmdistill.models import build_model

torch.set_num_threads(1)


def tiny_data():
    train_set, test_set, _ = DATASETS.get("synthetic").builder(None, parse_options("synthetic", {"train_size": 200, "test_size": 50}), 0)
    return DataSplits(train=train_set, test=test_set)


def model(data, channels):
    return build_model({"encoders": {m: {"type": "conv", "channels": channels} for m in ("image", "audio")}},
                       data.specs, data.num_classes)


def distill_with_and_without_cache(terms, epochs: int = 2, **train_options):
    """[(per-epoch losses, student state)] for the same distillation with the cache on, then off."""
    data = tiny_data()
    torch.manual_seed(0)
    teacher = model(data, [8])
    train(teacher, data, TrainConfig(epochs=1, batch_size=50, progress=False), device="cpu")
    runs = []
    for cache in (True, False):
        torch.manual_seed(1)
        student = model(data, [4])
        cfg = TrainConfig(epochs=epochs, batch_size=50, progress=False, cache_teacher=cache, **train_options)
        result = distill(student, teacher, data, terms=terms, cfg=cfg, device="cpu", seed=3)
        runs.append(([h["train_loss"] for h in result.history], student.state_dict()))
    return runs


def test_cached_teacher_outputs_match_uncached_distillation():
    (loss_a, state_a), (loss_b, state_b) = distill_with_and_without_cache(
        [{"name": "kd", "temperature": 2.0}, {"name": "sp", "student": "encoders.image", "teacher": "encoders.image"}])
    assert loss_a == loss_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
