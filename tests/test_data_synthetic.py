"""The synthetic audio-visual dataset: deterministic, balanced, and each modality alone is weaker."""
import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from mmdistill.data import DATASETS, build_data, parse_options  # noqa: E402
from mmdistill.data.synthetic import make_synthetic  # noqa: E402
from mmdistill.errors import ConfigError  # noqa: E402


def build(seed=0, **options):
    return DATASETS.get("synthetic")(None, parse_options("synthetic", options), seed)


def test_shapes_kinds_and_info():
    train, test, info = build(train_size=60, test_size=20)
    assert len(train) == 60 and len(test) == 20
    assert train.modalities["image"].shape == (60, 1, 28, 28)
    assert train.modalities["audio"].shape == (60, 1, 32, 32)
    assert {m: s.kind for m, s in train.specs.items()} == {"image": "image", "audio": "audio"}
    assert train.num_classes == test.num_classes == 10
    assert info["synthetic"] is True and info["dataset"] == "synthetic"
    assert all(p.all() for p in train.present.values())
    assert torch.isfinite(train.modalities["image"]).all()


def test_deterministic_for_a_seed():
    a_train, a_test, _ = build(seed=3, train_size=40, test_size=10)
    b_train, b_test, _ = build(seed=3, train_size=40, test_size=10)
    c_train, _, _ = build(seed=4, train_size=40, test_size=10)
    for m in ("image", "audio"):
        assert torch.equal(a_train.modalities[m], b_train.modalities[m])
        assert torch.equal(a_test.modalities[m], b_test.modalities[m])
        assert not torch.equal(a_train.modalities[m], c_train.modalities[m])
    assert torch.equal(a_train.labels, b_train.labels)
    # train and test are different draws
    assert not torch.equal(a_train.modalities["image"][:10], a_test.modalities["image"])


@pytest.mark.parametrize("num_classes,size", [(10, 100), (10, 35), (7, 50), (3, 10)])
def test_classes_balanced(num_classes, size):
    train, _, _ = build(num_classes=num_classes, train_size=size, test_size=5)
    counts = torch.bincount(train.labels, minlength=num_classes)
    assert counts.sum() == size and counts.max() - counts.min() <= 1


def test_each_modality_alone_is_clearly_weaker_than_both():
    """Nearest class mean: each modality identifies only a pair of classes (<= ~50%), both the class."""
    train = make_synthetic(600, 10, 0.6, np.random.default_rng([0, 0]))
    test = make_synthetic(300, 10, 0.6, np.random.default_rng([0, 1]))

    def scores(m):
        x, y = train[m].reshape(600, -1), test[m].reshape(300, -1)
        means = np.stack([x[train["label"] == c].mean(0) for c in range(10)])
        return -((y[:, None, :] - means[None]) ** 2).sum(-1)

    image, audio = scores("image"), scores("audio")
    acc = {k: float((s.argmax(1) == test["label"]).mean()) for k, s in
           (("image", image), ("audio", audio), ("both", image + audio))}
    assert acc["image"] < 0.65 and acc["audio"] < 0.65, acc
    assert acc["both"] > 0.9, acc


def test_through_build_data_and_options_are_strict():
    class Cfg:
        name, root, options = "synthetic", None, {"train_size": 50, "test_size": 10, "num_classes": 5}

    splits = build_data(Cfg(), seed=1, val_fraction=0.2)
    assert splits.info["synthetic"] is True and splits.num_classes == 5
    assert len(splits.train) + len(splits.val) == 50
    with pytest.raises(ConfigError, match="bogus"):
        parse_options("synthetic", {"bogus": 1})
    with pytest.raises(ConfigError, match="num_classes"):
        parse_options("synthetic", {"num_classes": 2})
