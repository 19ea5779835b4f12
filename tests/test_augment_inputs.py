"""Per-modality input augmentation (``train.augment``): exact effects, validation, what teachers see."""
import pytest
import torch

from mmdistill.config import TrainConfig, parse_config
from mmdistill.data.augment import augment_batch, band_mask, freq_mask, random_translate, time_mask, translate
from mmdistill.errors import ConfigError

torch.set_num_threads(1)


def plan(**entries):
    return TrainConfig(augment=entries).augment


def test_translate_moves_a_known_pixel_and_fills_zeros():
    x = torch.zeros(2, 1, 5, 6)
    x[:, 0, 2, 3] = 1.0
    out = translate(x, torch.tensor([[1, 0], [-2, 1]]))  # (dx, dy): right 1; left 2, down 1
    assert out[0, 0, 2, 4] == 1 and out[0].sum() == 1
    assert out[1, 0, 3, 1] == 1 and out[1].sum() == 1
    ones = translate(torch.ones(1, 2, 4, 4), torch.tensor([[2, -1]]))
    expected = torch.zeros(4, 4)
    expected[:3, 2:] = 1  # two columns enter on the left, one row leaves at the top: zeros there
    assert torch.equal(ones[0, 0], expected) and torch.equal(ones[0, 1], expected)
    assert torch.equal(translate(x, torch.zeros(2, 2, dtype=torch.long)), x)


def test_random_translate_is_a_whole_pixel_shift_within_range():
    x = torch.rand(64, 1, 8, 8) + 1  # no zeros, so the shift can be read back
    out = random_translate(x, 2, torch.Generator().manual_seed(0))
    seen = set()
    for b in range(64):
        matches = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)
                   if torch.equal(out[b:b + 1], translate(x[b:b + 1], torch.tensor([[dx, dy]])))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 15  # of the 25 shifts
    again = random_translate(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_time_mask_zeros_exactly_width_consecutive_steps():
    x = torch.rand(32, 1, 6, 20) + 1
    out = time_mask(x, 5, 1, torch.Generator().manual_seed(0), min_width=5)
    zero_cols = (out == 0).all(dim=2).squeeze(1)  # [B, T]
    assert torch.equal(zero_cols.sum(1), torch.full((32,), 5))
    for b in range(32):
        cols = zero_cols[b].nonzero().squeeze(1)
        assert int(cols[-1] - cols[0]) == 4  # one contiguous band
    assert torch.equal(out[out != 0], x[out != 0])  # the rest is untouched
    starts = {int(zero_cols[b].nonzero()[0]) for b in range(32)}
    assert min(starts) >= 0 and max(starts) <= 15 and len(starts) > 5


def test_freq_mask_zeros_rows_and_band_widths_stay_in_range():
    x = torch.rand(16, 1, 12, 7) + 1
    out = freq_mask(x, 3, 1, torch.Generator().manual_seed(1), min_width=3)
    zero_rows = (out == 0).all(dim=3).squeeze(1)  # [B, F]
    assert torch.equal(zero_rows.sum(1), torch.full((16,), 3))
    assert torch.equal((out == 0).sum((1, 2, 3)), torch.full((16,), 3 * 7))
    mask = band_mask(2000, 30, 4, 2, 0, torch.Generator().manual_seed(2))
    assert int(mask.sum(1).max()) <= 8 and int(mask.sum(1).min()) == 0  # two bands of 0..4 steps
    one = band_mask(2000, 30, 4, 1, 0, torch.Generator().manual_seed(2)).sum(1)
    assert set(one.tolist()) == {0, 1, 2, 3, 4}


def test_augment_batch_applies_per_modality_in_order_and_keeps_absent_samples_zero():
    image = torch.rand(4, 1, 6, 6) + 1
    image[2] = 0  # absent
    audio = torch.rand(4, 1, 5, 10) + 1
    batch = {"image": image, "audio": audio, "label": torch.zeros(4, dtype=torch.long),
             "present": {"image": torch.tensor([True, True, False, True]), "audio": torch.ones(4, dtype=torch.bool)}}
    p = plan(image=[{"type": "translate", "pixels": 1}],
             audio=[{"type": "time_mask", "width": 2, "min_width": 2}, {"type": "freq_mask", "width": 1, "min_width": 1}])
    out = augment_batch(batch, p, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(out["image"], random_translate(image, 1, g))
    assert torch.equal(out["audio"], freq_mask(time_mask(audio, 2, 1, g, 2), 1, 1, g, 1))
    assert torch.equal(out["image"][2], torch.zeros(1, 6, 6))
    assert (out["audio"] == 0).sum() == 4 * (2 * 5 + 10 - 2)  # 2 columns and 1 row, overlapping in 2 cells
    assert out["present"] is batch["present"] and torch.equal(batch["image"], image)  # input untouched
    shifted = augment_batch(batch, plan(audio=[{"type": "time_shift", "fraction": 0.2}]), torch.Generator().manual_seed(0))
    from mmdistill.data.corruptions import random_shifts, shift_time

    shifts = random_shifts(4, 10, 0.2, torch.Generator().manual_seed(0), exact=False)
    assert torch.equal(shifted["audio"], shift_time(audio, shifts)) and shifts.abs().max() <= 2


BASE = {"data": {"name": "synthetic"}, "model": {"encoders": {"image": {"type": "mlp"}}}}


@pytest.mark.parametrize("augment,message", [
    ({"image": [{"type": "blur"}]}, r"train\.augment\.image\[0\]: Input tag 'blur'"),
    ({"image": [{"type": "translate", "pixel": 2}]}, r"train\.augment\.image\[0\]\.pixel: unknown key"),
    ({"image": [{"type": "translate", "pixels": 0}]}, r"train\.augment\.image\[0\]\.pixels: .*greater than 0"),
    ({"audio": [{"type": "time_mask"}]}, r"train\.augment\.audio\[0\]\.width: Field required"),
    ({"audio": [{"type": "time_mask", "width": 2}, {"type": "freq_mask", "width": 3, "min_width": 4}]},
     r"train\.augment\.audio\[1\]\.min_width: 4 is more than width 3"),
    ({"audio": {"type": "time_mask", "width": 2}}, r"train\.augment\.audio: Input should be a valid list"),
])
def test_augment_config_errors_name_the_key(augment, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, "train": {"augment": augment}})
    with pytest.raises(ConfigError, match=r"train\.augment_teacher: Input should be 'same', 'clean' or 'consistent'"):
        parse_config({**BASE, "train": {"augment_teacher": "teacher"}})


def test_unknown_modality_or_wrong_kind_is_an_error_at_fit_time():
    from test_teacher_cache import model, tiny_data

    from mmdistill.api import train

    data = tiny_data()
    for augment, message in (({"video": [{"type": "translate"}]}, r"train\.augment\.video: the data has no modality"),
                             ({"image": [{"type": "translate"}, {"type": "time_mask", "width": 2}]},
                              r"train\.augment\.image\[1\]: time_mask applies to audio modalities, 'image' is image"),
                             ({"audio": [{"type": "translate"}]},
                              r"train\.augment\.audio\[0\]: translate applies to image modalities, 'audio' is audio")):
        with pytest.raises(ConfigError, match=message):
            train(model(data, [4]), data, TrainConfig(epochs=1, progress=False, augment=augment), device="cpu")


AUGMENT = {"image": [{"type": "translate", "pixels": 3}], "audio": [{"type": "time_mask", "width": 8, "min_width": 8}]}


def _distill_recording_inputs(augment_teacher: str, cache: bool):
    """Distil one epoch under AUGMENT; returns (student inputs, teacher inputs, training-set images,
    number of cache builds, losses)."""
    from test_teacher_cache import model, tiny_data

    from mmdistill.api import distill, train
    from mmdistill.distill.tasks import DistillationTask

    data = tiny_data()
    torch.manual_seed(0)
    teacher = model(data, [8])
    train(teacher, data, TrainConfig(epochs=1, batch_size=50, progress=False), device="cpu")
    torch.manual_seed(1)
    student = model(data, [4])
    seen = {"student": [], "teacher": []}
    hooks = [net.encoders["image"].register_forward_pre_hook(lambda m, args, who=who: seen[who].append(args[0].clone()))
             for who, net in (("student", student), ("teacher", teacher))]
    builds = []
    original = DistillationTask.cache_teacher_outputs

    def counting(self, *args, **kwargs):
        builds.append(1)
        return original(self, *args, **kwargs)

    DistillationTask.cache_teacher_outputs = counting
    try:
        cfg = TrainConfig(epochs=1, batch_size=50, progress=False, cache_teacher=cache, augment=AUGMENT,
                          augment_teacher=augment_teacher)
        result = distill(student, teacher, data, terms=["kd"], cfg=cfg, device="cpu", seed=3)
    finally:
        DistillationTask.cache_teacher_outputs = original
        for h in hooks:
            h.remove()
    return seen, data.train.modalities["image"], len(builds), [h["train_loss"] for h in result.history]


def _is_dataset_sample(x, images):
    return any(torch.equal(x, images[i]) for i in range(len(images)))


def test_teacher_sees_the_students_augmented_input_with_same_and_no_cache_is_built():
    seen, images, builds, _ = _distill_recording_inputs("same", cache=True)
    assert builds == 0  # the cache is only valid for clean teacher inputs
    # setup runs both once on a clean batch; then one teacher and one student pass per step
    student_steps, teacher_steps = seen["student"][1:], seen["teacher"][1:]
    assert len(teacher_steps) == len(student_steps) == 4  # 200 samples / 50, cache disabled
    for s, t in zip(student_steps, teacher_steps):
        assert torch.equal(s, t)
    assert not all(_is_dataset_sample(x, images) for x in student_steps[0][:10])  # translated


def test_teacher_sees_the_clean_input_with_clean_and_the_cache_stays_exact():
    seen, images, builds, losses_uncached = _distill_recording_inputs("clean", cache=False)
    assert builds == 0
    assert len(seen["teacher"]) == 5  # setup, then 4 steps
    for t in seen["teacher"][1:]:  # the 4 training steps: every teacher input is a training sample as stored
        assert all(_is_dataset_sample(x, images) for x in t)
    student_steps = seen["student"][1:]
    assert not all(_is_dataset_sample(x, images) for x in student_steps[0][:10])
    cached_seen, _, builds, losses_cached = _distill_recording_inputs("clean", cache=True)
    assert builds == 1 and losses_cached == losses_uncached
