"""Mixup across modalities, and its cross-entropy."""
import torch
import torch.nn.functional as F

from mmdistill.data.augment import mixup
from mmdistill.distill.tasks import label_loss

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
