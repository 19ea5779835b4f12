"""Feature vectors of ``npz``/manifest data are standardised with the training split's statistics,
which the checkpoint records and evaluate re-applies (real multi-view data: ALOI's view3 spans
-1.8e4 .. 3.4e13)."""
import json

import numpy as np
import pytest
import torch

from conftest import run_cli, write

from mmdistill.config import DataConfig
from mmdistill.data import build_data
from mmdistill.errors import ConfigError


def aloi(tmp_path, data_root, scale_train: float = 1.0):
    """ALOI views 0 (64-d) and 3 (13-d) with a fixed split; ``scale_train`` multiplies view3 of the
    training rows only (so statistics recomputed from this file would differ)."""
    z = np.load(data_root / "multiview" / "aloi10.npz")
    rng = np.random.default_rng(0)
    split = np.where(rng.random(len(z["label"])) < 0.25, "test", "train")
    view3 = z["view3"].copy()
    view3[split == "train"] *= scale_train
    np.savez(tmp_path / "aloi.npz", label=z["label"], view0=z["view0"], view3=view3, split=split)
    return tmp_path / "aloi.npz"


def test_vectors_are_standardised_per_feature_on_the_training_split(tmp_path, data_root):
    aloi(tmp_path, data_root)
    data = build_data(DataConfig(name="npz", path="aloi.npz", root=str(tmp_path)), val_fraction=0.2)
    x = data.train.modalities["view3"].double()
    assert torch.allclose(x.mean(0), torch.zeros(13, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(13, dtype=torch.float64), atol=1e-3)
    stats = data.info["standardise"]["view3"]
    assert stats["per"] == "feature" and len(stats["mean"]) == len(stats["std"]) == 13
    raw = np.load(tmp_path / "aloi.npz")  # as stored
    # validation and test use the training split's statistics, not their own
    val_x = data.val.modalities["view3"].double()
    assert not torch.allclose(val_x.mean(0), torch.zeros(13, dtype=torch.float64), atol=1e-4)
    off = build_data(DataConfig(name="npz", path="aloi.npz", root=str(tmp_path), standardize=False), val_fraction=0.2)
    assert "standardise" not in off.info and float(off.train.modalities["view3"].abs().max()) > 1e6
    assert float(off.train.modalities["view3"].abs().max()) <= float(np.abs(raw["view3"]).max())
    with pytest.raises(ConfigError, match="standardize"):
        from mmdistill.config import parse_config
        parse_config({"data": {"name": "npz", "path": "aloi.npz", "standardize": "yes"},
                      "model": {"encoders": {"view0": {"type": "mlp"}}}})


def test_evaluate_applies_the_checkpoints_statistics(tmp_path, data_root):
    aloi(tmp_path, data_root)
    cfg = {"seed": 0, "device": "cpu", "data": {"name": "npz", "path": "aloi.npz", "root": str(tmp_path)},
           "model": {"encoders": {"view0": {"type": "mlp", "hidden": [32]}, "view3": {"type": "mlp", "hidden": [16]}}},
           "train": {"epochs": 3, "batch_size": 64, "progress": False, "val_fraction": 0.2}}
    assert run_cli("train", write(tmp_path, "t.yaml", cfg), "--out", tmp_path / "run") == 0
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())["accuracy"]
    payload = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert payload["meta"]["data_info"]["standardise"]["view3"]["per"] == "feature"
    # the file changes under the checkpoint: recomputed statistics would be 1000x off
    aloi(tmp_path, data_root, scale_train=1000.0)
    assert run_cli("evaluate", tmp_path / "run" / "best.pt", "--out", tmp_path / "eval", "--no-cost") == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"]
    assert again == pytest.approx(trained)
    # export records them in model.json; predict applies those
    assert run_cli("export", tmp_path / "run" / "best.pt", "--out", tmp_path / "exp") == 0
    pre = json.loads((tmp_path / "exp" / "model.json").read_text())["preprocessing"]["modalities"]["view3"]
    assert pre["standardise"]["mean"] == pytest.approx(payload["meta"]["data_info"]["standardise"]["view3"]["mean"])
    assert run_cli("predict", tmp_path / "exp", "--data", tmp_path / "t.yaml", "--out", tmp_path / "p.jsonl") == 0
    preds = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert sum(p["label"] == p["pred"] for p in preds) / len(preds) == pytest.approx(trained)
    fresh = build_data(DataConfig(name="npz", path="aloi.npz", root=str(tmp_path)), val_fraction=0.2)
    stored = payload["meta"]["data_info"]["standardise"]
    assert fresh.info["standardise"]["view3"]["mean"] != pytest.approx(stored["view3"]["mean"])


def test_recorded_statistics_of_another_shape_are_refused(tmp_path, data_root):
    from mmdistill.errors import DataError

    aloi(tmp_path, data_root)
    cfg = DataConfig(name="npz", path="aloi.npz", root=str(tmp_path))
    stored = {"view3": {"per": "feature", "mean": [0.0] * 5, "std": [1.0] * 5}}
    with pytest.raises(DataError, match="'view3'.*5.*13"):
        build_data(cfg, val_fraction=0.2, standardise=stored)
