"""Mixup across modalities, and its cross-entropy."""
import torch
import torch.nn.functional as F

from mmdistill.data.augment import mixup
from mmdistill.losses.labels import label_loss

torch.set_num_threads(1)


def batch():
    return {"image": torch.arange(8.0).view(4, 2), "audio": torch.arange(4.0).view(4, 1),
            "label": torch.tensor([0, 1, 2, 3]), "index": torch.arange(4),
            "present": {"image": torch.tensor([True, True, False, True]), "audio": torch.ones(4, dtype=torch.bool)}}


def test_mixup_mixes_every_modality_with_one_coefficient():
    torch.manual_seed(0)
    b = batch()
    out = mixup(b, 0.4, torch.Generator().manual_seed(1))
    lam = float(out["mix_lambda"])
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out["image"], lam * b["image"] + (1 - lam) * b["image"][perm])
    assert torch.allclose(out["audio"], lam * b["audio"] + (1 - lam) * b["audio"][perm])
    assert torch.equal(out["label_mix"], b["label"][perm])
    assert torch.equal(out["present"]["image"], b["present"]["image"] | b["present"]["image"][perm])


def test_mixed_cross_entropy_is_the_convex_combination():
    logits = torch.randn(4, 5)
    b = {"label": torch.tensor([0, 1, 2, 3]), "label_mix": torch.tensor([4, 3, 2, 1]), "mix_lambda": torch.tensor(0.3)}
    expected = 0.3 * F.cross_entropy(logits, b["label"]) + 0.7 * F.cross_entropy(logits, b["label_mix"])
    assert torch.allclose(label_loss(logits, b), expected)
    assert torch.allclose(label_loss(logits, {"label": b["label"]}), F.cross_entropy(logits, b["label"]))


def test_modality_dropout_never_empties_a_sample():
    from mmdistill.data.augment import modality_dropout

    b = {"image": torch.ones(64, 2), "audio": torch.ones(64, 3), "label": torch.zeros(64, dtype=torch.long)}
    out = modality_dropout(b, {"image": 1.0, "audio": 1.0}, torch.Generator().manual_seed(0))
    kept = out["present"]["image"].int() + out["present"]["audio"].int()
    assert torch.equal(kept, torch.ones(64, dtype=torch.int))          # exactly one survives
    assert torch.equal(out["image"].sum(1) > 0, out["present"]["image"])  # dropped ones are zeroed
    same = modality_dropout(b, {"image": 0.0}, torch.Generator().manual_seed(0))
    assert same["present"]["image"].all() and torch.equal(same["image"], b["image"])
    half = modality_dropout(b, {"audio": 0.5}, torch.Generator().manual_seed(0))
    assert 16 < int(half["present"]["audio"].sum()) < 48 and half["present"]["image"].all()


def test_teachers_see_whole_samples_under_modality_dropout():
    """Cached and uncached distillation agree under modality dropout: teachers never see the drops."""
    from test_teacher_cache import distill_with_and_without_cache

    (loss_a, _), (loss_b, _) = distill_with_and_without_cache(["kd"], epochs=1,
                                                               modality_dropout={"image": 0.5, "audio": 0.5})
    assert loss_a == loss_b


def test_modality_dropout_rejects_unknown_modalities():
    import pytest
    from test_teacher_cache import model, tiny_data

    from mmdistill.api import train
    from mmdistill.config import TrainConfig
    from mmdistill.errors import ConfigError

    data = tiny_data()
    with pytest.raises(ConfigError, match="train.modality_dropout.video"):
        train(model(data, [4]), data, TrainConfig(epochs=1, progress=False, modality_dropout={"video": 0.5}), device="cpu")
