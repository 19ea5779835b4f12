"""Learning-rate schedules stepped per epoch or per optimiser step."""
import math

import pytest
import torch

from mmdistill.config import SchedulerConfig, TrainConfig
from mmdistill.distill.engine import build_scheduler

torch.set_num_threads(1)


def lrs(cfg: SchedulerConfig, epochs: int, steps_per_epoch: int, calls: int, base: float = 0.1) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = build_scheduler(opt, cfg, epochs, steps_per_epoch=steps_per_epoch)
    out = []
    for _ in range(calls):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_per_step_decays_smoothly_over_every_step():
    got = lrs(SchedulerConfig(name="cosine", interval="step"), epochs=3, steps_per_epoch=4, calls=12)
    expected = [0.05 * (1 + math.cos(math.pi * k / 12)) for k in range(12)]
    assert got == pytest.approx(expected, abs=1e-12)
    assert len(set(got)) == 12


def test_cosine_per_epoch_is_constant_within_an_epoch():
    got = lrs(SchedulerConfig(name="cosine"), epochs=3, steps_per_epoch=4, calls=3)
    assert got == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 3)) for e in range(3)], abs=1e-12)


def test_step_interval_warmup_and_step_decay_count_in_steps():
    got = lrs(SchedulerConfig(name="step", step_size=1, gamma=0.5, warmup_epochs=1, interval="step"),
              epochs=3, steps_per_epoch=2, calls=6, base=1.0)
    # warm-up over the 2 steps of epoch 1: (k+1)/(2+1); then 0.5 ** floor(fractional epoch)
    assert got == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 0.5, 0.5])


def test_trainer_steps_the_schedule_after_every_batch():
    from test_teacher_cache import model, tiny_data

    from mmdistill.api import train

    data = tiny_data()
    cfg = TrainConfig(epochs=2, batch_size=50, progress=False,
                      optimizer={"name": "sgd", "lr": 0.1}, scheduler={"name": "cosine", "interval": "step"})
    result = train(model(data, [4]), data, cfg, device="cpu")
    # 4 steps per epoch; each epoch records the learning rate of its last step (steps 3 and 7 of 8)
    assert [h["lr"] for h in result.history] == pytest.approx(
        [0.05 * (1 + math.cos(math.pi * k / 8)) for k in (3, 7)], abs=1e-12)
    per_epoch = train(model(data, [4]), data, cfg.model_copy(update={"scheduler": SchedulerConfig(name="cosine")}),
                      device="cpu")
    assert [h["lr"] for h in per_epoch.history] == pytest.approx([0.1, 0.05], abs=1e-12)
