"""Graded corruptions (evaluate --corrupt) and time-shift augmentation."""
import pytest
import torch

from mmdistill.data.augment import time_shift
from mmdistill.data.corruptions import SEVERITIES, Corruption, corrupter, shift_time
from mmdistill.errors import ConfigError

torch.set_num_threads(1)


def batch(n=64):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 1, 20, 20, generator=g), "audio": torch.randn(n, 1, 8, 40, generator=g),
            "label": torch.zeros(n, dtype=torch.long),
            "present": {"image": torch.arange(n) % 4 != 0, "audio": torch.ones(n, dtype=torch.bool)}}


def apply(spec, b, seed=0):
    return corrupter([spec], seed)(b)


def test_gaussian_noise_has_the_severity_sigma_and_spares_absent_samples():
    b = batch()
    for severity, sigma in enumerate(SEVERITIES["gaussian_noise"], 1):
        out = apply(f"image:gaussian_noise:{severity}", b)
        present = b["present"]["image"]
        noise = (out["image"] - b["image"])[present]
        assert noise.std().item() == pytest.approx(sigma, rel=0.05)
        assert torch.equal(out["image"][~present], b["image"][~present])
        assert torch.equal(out["audio"], b["audio"])


def test_noise_snr_gives_the_asked_signal_to_noise_ratio():
    b = batch()
    b["audio"] = b["audio"] * 3 + 1
    for severity, snr in enumerate(SEVERITIES["noise_snr"], 1):
        out = apply(f"audio:noise_snr:{severity}", b)
        noise = out["audio"] - b["audio"]
        measured = 10 * torch.log10(b["audio"].pow(2).mean() / noise.pow(2).mean())
        assert measured.item() == pytest.approx(snr, abs=0.3)


def test_occlusion_covers_a_square_of_the_severity_fraction_with_the_sample_mean():
    b = batch()
    out = apply("image:occlusion:3", b)  # 30% of each side: a 6 x 6 patch of 20 x 20
    for i in torch.nonzero(b["present"]["image"]).flatten().tolist()[:10]:
        changed = out["image"][i, 0] != b["image"][i, 0]
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        assert len(rows) == 6 and len(cols) == 6 and int(rows[-1] - rows[0]) == 5
        patch = out["image"][i, 0][rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert torch.allclose(patch, b["image"][i].mean().expand(6, 6))
    with pytest.raises(ConfigError, match="two spatial axes"):
        apply("x:occlusion:1", {"x": torch.randn(4, 10), "label": torch.zeros(4, dtype=torch.long)})


def test_time_shift_moves_along_the_last_axis_and_repeats_the_edge():
    x = torch.arange(10.0).view(1, 1, 10).repeat(2, 1, 1) + 5
    out = shift_time(x, torch.tensor([3, -2]))
    assert out[0, 0].tolist() == [5, 5, 5, 5, 6, 7, 8, 9, 10, 11]
    assert out[1, 0].tolist() == [7, 8, 9, 10, 11, 12, 13, 14, 14, 14]
    b = batch()
    out = apply("audio:time_shift:4", b)  # 30% of 40 frames = 12, either direction
    for i in range(8):
        shifted = [s for s in (12, -12) if torch.equal(out["audio"][i:i + 1], shift_time(b["audio"][i:i + 1], torch.tensor([s])))]
        assert shifted


def test_corruptions_are_repeatable_and_seeded():
    b = batch()
    assert torch.equal(apply("image:gaussian_noise:2", b, 1)["image"], apply("image:gaussian_noise:2", b, 1)["image"])
    assert not torch.equal(apply("image:gaussian_noise:2", b, 1)["image"], apply("image:gaussian_noise:2", b, 2)["image"])


@pytest.mark.parametrize("spec, message", [("audio:noise", "MODALITY:KIND:SEVERITY"), ("audio:blur:1", "unknown kind"),
                                           ("audio:noise_snr:6", "1 to 5"), ("audio:noise_snr:x", "1 to 5")])
def test_bad_corruption_specs(spec, message):
    with pytest.raises(ConfigError, match=message):
        Corruption.parse(spec)


def test_time_shift_augmentation_stays_within_its_range():
    b = {"audio": torch.arange(20.0).view(1, 1, 20).repeat(256, 1, 1), "label": torch.zeros(256, dtype=torch.long)}
    out = time_shift(b, {"audio": 0.25}, torch.Generator().manual_seed(0))
    # shifted later by s: the first value (0) is repeated s + 1 times; earlier by s: the row starts at s
    starts = [int((row == 0).sum()) - 1 if row[0] == 0 else -int(row[0]) for row in out["audio"][:, 0]]
    assert min(starts) == -5 and max(starts) == 5 and 0 in starts


def test_teachers_see_aligned_samples_under_time_shift():
    """Cached and uncached distillation agree under time shifts: the teachers never see them."""
    from test_teacher_cache import distill_with_and_without_cache

    (loss_a, _), (loss_b, _) = distill_with_and_without_cache(["kd"], epochs=1, time_shift={"audio": 0.3})
    assert loss_a == loss_b
