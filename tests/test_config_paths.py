"""Relative paths in a config file: beside the config first, then under the data root; a missing
file's error names every absolute path tried."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmdistill.config import load_config
from mmdistill.data import build_data
from mmdistill.errors import DataError

MODEL = {"encoders": {"x": {"type": "mlp"}}}


def write_npz(path: Path, n: int = 40, offset: float = 0.0) -> None:
    rng = np.random.default_rng(0)
    label = np.arange(n) % 2
    np.savez(path, x=(rng.normal(size=(n, 4)) + label[:, None] + offset).astype(np.float32), label=label)


def write_config(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({"data": data, "model": MODEL}))
    return path


def test_relative_path_beside_the_config(tmp_path, monkeypatch):
    root, configs = tmp_path / "root", tmp_path / "configs"
    root.mkdir()
    monkeypatch.setenv("MMDISTILL_DATA", str(root))
    monkeypatch.chdir(tmp_path)  # neither the config's folder nor the data root
    config = write_config(configs, {"name": "npz", "path": "my.npz", "unlabelled": {"name": "npz", "path": "u.npz"}})
    write_npz(configs / "my.npz")
    write_npz(configs / "u.npz", n=10)
    cfg = load_config(config)
    # recorded absolute, so the run directory's config finds the file from anywhere
    assert cfg.data.options["path"] == str((configs / "my.npz").resolve())
    assert cfg.data.unlabelled.options["path"] == str((configs / "u.npz").resolve())
    data = build_data(cfg.data)
    assert data.info["path"] == str((configs / "my.npz").resolve())
    assert data.info["transfer_set"]["samples"] == 10


def test_beside_the_config_wins_over_the_data_root(tmp_path, monkeypatch):
    root, configs = tmp_path / "root", tmp_path / "configs"
    root.mkdir()
    monkeypatch.setenv("MMDISTILL_DATA", str(root))
    config = write_config(configs, {"name": "npz", "path": "my.npz"})
    write_npz(configs / "my.npz", n=40)
    write_npz(root / "my.npz", n=60)
    assert len(build_data(load_config(config).data).train) + len(build_data(load_config(config).data).test) == 40


def test_data_root_fallback(tmp_path, monkeypatch):
    """A path not beside the config is still found under the data root (as before), and a config
    given as a dict (no file) reads relative paths under the data root only."""
    root, configs = tmp_path / "root", tmp_path / "configs"
    (root / "multiview").mkdir(parents=True)
    monkeypatch.setenv("MMDISTILL_DATA", str(root))
    write_npz(root / "multiview" / "set.npz")
    cfg = load_config(write_config(configs, {"name": "npz", "path": "multiview/set.npz"}))
    assert cfg.data.options["path"] == "multiview/set.npz"  # left as written: where it was found is the root's
    assert build_data(cfg.data).info["path"] == str((root / "multiview" / "set.npz").resolve())


def test_missing_file_names_every_place_tried(tmp_path, monkeypatch):
    root, configs = tmp_path / "root", tmp_path / "configs"
    root.mkdir()
    monkeypatch.setenv("MMDISTILL_DATA", str(root))
    cfg = load_config(write_config(configs, {"name": "npz", "path": "gone.npz"}))
    with pytest.raises(DataError) as err:
        build_data(cfg.data)
    message = str(err.value)
    assert message.startswith("gone.npz: no such file (data.path;")
    assert f"{(configs / 'gone.npz').resolve()} (beside the config)" in message
    assert f"{(root / 'gone.npz').resolve()} (under the data root)" in message
    cfg = load_config(write_config(configs, {"name": "npy_dir", "path": "nodir"}))
    with pytest.raises(DataError, match=r"nodir: no such folder \(data\.path; looked at .*beside the config"):
        build_data(cfg.data)
