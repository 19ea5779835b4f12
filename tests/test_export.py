"""Export, predict and profile: parity with PyTorch, predict = evaluate, a torch-free runtime, cost fields."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdistill.data.dataset import ModalitySpec
from mmdistill.export.bundle import ParityError, check_parity
from mmdistill.export.profile import count_macs
from mmdistill.models import build_model

from test_cli import run_cli, write

TINY = {
    "seed": 0, "device": "cpu",
    "data": {"name": "synthetic", "train_size": 200, "test_size": 60},
    "model": {"encoders": {"image": {"type": "conv", "channels": [4]}, "audio": {"type": "conv", "channels": [4]}},
              "fusion": {"type": "attention", "dim": 8}},
    "train": {"epochs": 1, "batch_size": 64, "progress": False},
}


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A tiny synthetic-data checkpoint and its ONNX export with an int8 model."""
    tmp = tmp_path_factory.mktemp("export-synthetic")
    config = write(tmp, "tiny.yaml", TINY)
    assert run_cli("train", config, "--out", tmp / "run") == 0
    assert run_cli("export", tmp / "run" / "best.pt", "--out", tmp / "export", "--quantize", "int8") == 0
    return tmp, config


def _parity_ok(meta, modalities):
    diffs = meta["parity"]["max_abs_diff"]
    assert set(diffs) == {"all present", *(f"without {m}" for m in modalities)}
    assert all(0 <= d <= 1e-4 for d in diffs.values()), diffs


def test_export_synthetic_onnx_int8(synthetic_run):
    tmp, _ = synthetic_run
    meta = json.loads((tmp / "export" / "model.json").read_text())
    assert set(meta["files"].values()) == {"model.onnx", "model.int8.onnx", "mmdistill_runtime.py"}
    assert all((tmp / "export" / f).is_file() for f in meta["files"].values())
    _parity_ok(meta, ["image", "audio"])
    assert meta["inputs"]["image"] == {"shape": [1, 28, 28], "dtype": "float32", "kind": "image", "batch_axis": 0}
    mods = meta["modalities"]
    assert sorted(mods) == ["audio", "image"] and meta["input_order"] == mods + [f"present_{m}" for m in mods]
    assert meta["classes"] == [str(i) for i in range(10)] and meta["opset"] >= 18
    assert meta["checkpoint"]["path"].endswith("best.pt") and meta["checkpoint"]["test_accuracy"] is not None
    assert meta["accuracy"]["onnx"] == pytest.approx(meta["accuracy"]["pytorch"])
    q = meta["quantized"]
    assert q["bytes"] > 0 and 0 < q["calibration_samples"] <= 200
    for name in ("fp32", "int8"):
        assert 0 <= q[name]["accuracy"] <= 1 and q[name]["onnx_ms_b1"] > 0 and q[name]["onnx_sps_b64"] > 0
    assert q["fp32"]["accuracy"] == pytest.approx(meta["accuracy"]["onnx"])
    import onnx

    graph = onnx.load(str(tmp / "export" / "model.onnx")).graph
    assert [i.name for i in graph.input] == meta["input_order"] and [o.name for o in graph.output] == ["logits"]
    assert not graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # dynamic batch axis
    assert graph.input[2].type.tensor_type.elem_type == onnx.TensorProto.BOOL
    int8_ops = {n.op_type for n in onnx.load(str(tmp / "export" / "model.int8.onnx")).graph.node}
    assert "QuantizeLinear" in int8_ops and "DequantizeLinear" in int8_ops


def test_predict_equals_evaluate_and_refuses_overwrite(synthetic_run, capsys):
    tmp, config = synthetic_run
    assert run_cli("predict", tmp / "export", "--data", config, "--out", tmp / "preds.jsonl") == 0
    rows = [json.loads(line) for line in (tmp / "preds.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and set(rows[0]) == {"index", "label", "pred", "class", "prob"}
    assert run_cli("evaluate", tmp / "run" / "best.pt", "--out", tmp / "eval", "--no-cost") == 0
    metrics = json.loads((tmp / "eval" / "metrics.json").read_text())
    assert np.mean([r["pred"] == r["label"] for r in rows]) == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert "macs" not in metrics
    capsys.readouterr()
    assert run_cli("export", tmp / "run" / "best.pt", "--out", tmp / "export") == 2
    assert "--overwrite" in capsys.readouterr().err


def test_parity_failure_exits_2_and_writes_nothing(synthetic_run, monkeypatch, capsys):
    import mmdistill.export.bundle as bundle

    tmp, _ = synthetic_run
    monkeypatch.setattr(bundle, "TOLERANCE", -1.0)  # any difference, even 0, now fails
    assert run_cli("export", tmp / "run" / "best.pt", "--out", tmp / "bad") == 2
    err = capsys.readouterr().err
    assert "differs from PyTorch by" in err and "on 60 real samples" in err and len(err.strip().splitlines()) <= 2
    assert not (tmp / "bad").exists() and not list(tmp.glob(".bad*"))


def test_runtime_does_not_import_torch(synthetic_run):
    """The runtime copied into the export folder predicts with numpy and onnxruntime alone."""
    tmp, _ = synthetic_run
    export = tmp / "export"
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(export)!r})
        import numpy as np
        from mmdistill_runtime import ExportedModel
        model = ExportedModel({str(export)!r}, threads=1)
        audio = model.standardise("audio", np.random.default_rng(0).normal(size=(5, 1, 32, 32)))
        pred = model.predict({{"audio": audio}})
        both = model.logits({{"audio": audio, "image": np.zeros((5, 1, 28, 28), np.float32)}},
                            present={{"image": np.zeros(5, bool)}})
        assert pred.shape == (5,) and np.allclose(model.logits({{"audio": audio}}), both, atol=1e-6)
        assert "torch" not in sys.modules, "torch was imported"
        print("ok", sorted(m for m in ("onnxruntime", "numpy") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok ['numpy', 'onnxruntime']"
    from mmdistill.export import runtime

    assert (export / "mmdistill_runtime.py").read_text() == open(runtime.__file__).read()


def test_guide_runtime_snippet_runs(synthetic_run):
    """The user guide's torch-free runtime example runs as written, on an export with an audio input."""
    import re

    tmp, _ = synthetic_run
    export = tmp / "export"
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", guide, re.S) if "mmdistill_runtime" in b)
    code = f"import sys\nsys.path.insert(0, {str(export)!r})\n" + block.replace('"runs/student/export"', repr(str(export)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp)
    assert done.returncode == 0, done.stderr
    import ast

    assert len(ast.literal_eval(done.stdout.strip())) == 2


def test_profile_and_evaluate_cost_fields(synthetic_run):
    tmp, _ = synthetic_run
    ckpt = tmp / "run" / "best.pt"
    assert run_cli("profile", ckpt, "--compare", tmp / "run" / "last.pt", "--out", tmp / "prof", "--repeats", "20") == 0
    profile = json.loads((tmp / "prof" / "profile.json").read_text())
    first = profile["models"][0]
    from mmdistill.checkpoint import load_checkpoint

    model, payload = load_checkpoint(ckpt)
    assert first["params"] == sum(p.numel() for p in model.parameters())
    assert first["macs"] == count_macs(model, payload["specs"]) > first["params"]
    assert profile["threads"] == first["threads"] == 1 and first["onnx_bytes"] > 4 * first["params"]
    for engine in ("onnx", "torch"):
        assert 0 < first[f"{engine}_ms_b1"] <= first[f"{engine}_p95_ms_b1"] and first[f"{engine}_sps_b64"] > 0
    assert profile["ratios"][0]["params"] == 1.0 and profile["ratios"][0]["macs"] == 1.0  # best.pt vs last.pt
    assert run_cli("evaluate", ckpt, "--out", tmp / "eval-cost") == 0
    metrics = json.loads((tmp / "eval-cost" / "metrics.json").read_text())
    assert metrics["macs"] == first["macs"] and metrics["params"] == first["params"]
    assert metrics["onnx_ms_b1"] > 0 and metrics["onnx_sps_b64"] > 0 and "accuracy" in metrics


def test_count_macs_matches_hand_count():
    """conv3x3 1->4 on 8x8 (9*1*4*64), global pool, a 2-d MLP 6->5, concat head 9->3; BN/ReLU/pool are not MACs."""
    specs = {"image": ModalitySpec("image", "image", (1, 8, 8)), "vec": ModalitySpec("vec", "vector", (6,))}
    model = build_model({"encoders": {"image": {"type": "conv", "channels": [4]}, "vec": {"type": "mlp", "hidden": [5]}}},
                        specs, 3)
    assert count_macs(model, specs) == 9 * 1 * 4 * 64 + 6 * 5 + (4 + 5) * 3


def test_parity_error_names_the_case():
    specs = {"a": ModalitySpec("a", "vector", (4,)), "b": ModalitySpec("b", "vector", (3,))}
    model = build_model({"encoders": {"a": {"type": "mlp", "hidden": [4]}, "b": {"type": "mlp", "hidden": [4]}}},
                        specs, 2).eval()
    x = {"a": np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32),
         "b": np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)}
    present = {m: np.ones(8, bool) for m in x}

    def run(inputs, mask, shift=0.0):
        batch = {m: torch.from_numpy(v) for m, v in inputs.items()}
        batch["present"] = {m: torch.from_numpy(v) for m, v in mask.items()}
        with torch.no_grad():
            return model(batch).numpy() + (shift if not mask["b"].any() else 0.0)

    assert max(check_parity(model, run, x, present).values()) == 0.0
    with pytest.raises(ParityError, match="in case 'without b' on 8 real samples"):
        check_parity(model, lambda i, m: run(i, m, shift=1e-3), x, present)


def test_export_real_av_digits(tmp_path, data_root):
    """A tiny model trained 1 epoch on real AV-Digits, pooling to a grid that does not divide the map
    (the legacy exporter fails there): ONNX and TorchScript exports match PyTorch, model.json records
    the standardisation statistics, and predict's accuracy equals evaluate's."""
    cfg = dict(TINY, data={"name": "av_digits", "level": "clean", "root": str(data_root)},
               model={"encoders": {"image": {"type": "conv", "channels": [8], "pool": 3},
                                   "audio": {"type": "conv", "channels": [8], "pool": 3}},
                      "fusion": {"type": "concat"}},
               train={"epochs": 1, "batch_size": 128, "progress": False, "optimizer": {"lr": 0.003}})
    config = write(tmp_path, "av.yaml", cfg)
    assert run_cli("train", config, "--out", tmp_path / "run") == 0
    ckpt = tmp_path / "run" / "best.pt"
    assert run_cli("export", ckpt, "--out", tmp_path / "onnx") == 0
    meta = json.loads((tmp_path / "onnx" / "model.json").read_text())
    _parity_ok(meta, ["image", "audio"])
    assert meta["parity"]["samples"] == 256 and meta["accuracy"]["samples"] == 1200
    pre = meta["preprocessing"]["modalities"]
    for m in ("image", "audio"):
        assert pre[m]["standardise"]["std"] > 0
    assert pre["audio"]["log_mel"]["n_mels"] == 32 and "log(mel(|STFT|^2) + 1e-6)" in pre["audio"]["description"]

    assert run_cli("predict", tmp_path / "onnx", "--data", config, "--out", tmp_path / "preds.jsonl") == 0
    preds = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert run_cli("evaluate", ckpt, "--out", tmp_path / "eval", "--no-cost") == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert len(preds) == metrics["samples"] == 1200
    assert np.mean([p["pred"] == p["label"] for p in preds]) == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert metrics["accuracy"] > 0.15  # it learned something, so equal accuracies are not both chance

    assert run_cli("export", ckpt, "--out", tmp_path / "ts", "--format", "torchscript") == 0
    ts = json.loads((tmp_path / "ts" / "model.json").read_text())
    assert ts["files"]["torchscript"] == "model.pt" and ts["opset"] is None
    _parity_ok(ts, ["image", "audio"])
