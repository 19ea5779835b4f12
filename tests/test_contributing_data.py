"""CONTRIBUTING.md's "Add a data source" and "Add a modality kind" examples run as written (each in a
fresh process)."""
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GUIDE = (REPO / "CONTRIBUTING.md").read_text()


def blocks(language: str, section: str) -> list[str]:
    """The ``language`` code blocks of CONTRIBUTING.md's ``## section``."""
    text = GUIDE.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def run(code: str, cwd: Path, src: Path = REPO / "src") -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "HOME": str(cwd),
                                        "MMDISTILL_DATA": str(cwd / "no-data-root")})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_add_a_data_source(tmp_path):
    (tmp_path / "tsv_source.py").write_text(blocks("python", "Add a data source")[0])
    (tmp_path / "run.yaml").write_text(blocks("yaml", "Add a data source")[0])
    rng = np.random.default_rng(0)
    lines = []
    for i in range(40):
        label, split = i % 2, ["train", "train", "val", "test"][i % 4]
        lines.append("\t".join([str(label), split, *(f"{v:.4f}" for v in rng.normal(label, 1, 3))]))
    (tmp_path / "samples.tsv").write_text("\n".join(lines) + "\n")
    out = run("""
        import json
        from mmdistill.config import load_config
        from mmdistill.data import build_data
        from mmdistill.export.bundle import describe_preprocessing

        cfg = load_config("run.yaml")
        data = build_data(cfg.data, val_fraction=0.3)
        described = describe_preprocessing(cfg.data, data.info, data.specs)["modalities"]["x"]
        print(json.dumps({"sizes": [len(data.train), len(data.val), len(data.test)], "path": data.info["path"],
                          "description": described["description"], "fingerprint": data.train.fingerprint()}))
    """, tmp_path)
    result = json.loads(out)
    assert result["sizes"] == [20, 10, 10]  # the file's val samples, not a drawn 30%
    assert result["path"] == str((tmp_path / "samples.tsv").resolve())  # beside the config, not the data root
    assert result["description"].startswith("the 3 numbers after a line's label and split -> [3]")
    assert len(result["fingerprint"]) == 64


def test_add_a_modality_kind(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "mmdistill", src / "mmdistill", ignore=shutil.ignore_patterns("__pycache__"))
    kinds = src / "mmdistill" / "data" / "kinds.py"
    text = kinds.read_text()
    end = text.index("\n)}\n")  # the end of the KINDS table
    kinds.write_text(text[:end] + "\n" + blocks("python", "Add a modality kind")[0].rstrip() + text[end:])
    n = 30
    np.savez(tmp_path / "clouds.npz", cloud=np.random.default_rng(0).normal(size=(n, 5, 3)).astype(np.float32),
             label=np.arange(n) % 2)
    run("""
        import pytest
        import torch
        from mmdistill import build_model
        from mmdistill.checkpoint import load_checkpoint, save_checkpoint
        from mmdistill.config import DataConfig, TrainConfig
        from mmdistill.data import build_data
        from mmdistill.distill.engine import check_train_options
        from mmdistill.errors import ConfigError

        data = build_data(DataConfig(name="npz", path="clouds.npz", kinds={"cloud": "point_cloud"}, root="."))
        assert data.specs["cloud"].kind == "point_cloud" and data.specs["cloud"].shape == (5, 3)
        assert "standardise" not in data.info  # auto standardises vectors only
        assert "cloud" in build_data(DataConfig(name="npz", path="clouds.npz", kinds={"cloud": "point_cloud"},
                                                root=".", standardize=True)).info["standardise"]
        model = build_model({"encoders": {"cloud": {"type": "mlp"}}}, data.specs, data.num_classes, seed=0)
        assert model(data.train[list(range(4))]).shape == (4, 2)
        save_checkpoint("m.pt", model, model_config={"encoders": {"cloud": {"type": "mlp"}}}, specs=data.specs,
                        num_classes=data.num_classes)
        loaded, payload = load_checkpoint("m.pt")
        assert payload["specs"]["cloud"].kind == "point_cloud" and loaded.modalities == ["cloud"]
        with pytest.raises(ConfigError, match="point_cloud data with no time axis"):
            check_train_options(TrainConfig(time_shift={"cloud": 0.1}), data.specs)
        with pytest.raises(ConfigError, match="point_cloud data with no spatial or time axis"):
            check_train_options(TrainConfig(cutmix=1.0), data.specs)
    """, tmp_path, src)
