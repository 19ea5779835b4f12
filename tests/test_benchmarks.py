"""The methods benchmark's protocol, end to end on real AV-Digits at a tiny size: weights are tuned
on validation accuracy, the table runs each method at its selected scale, parallel parts merge."""
import json
import os
import subprocess
import sys

from conftest import REPO

TINY = ["--threads", "1", "--set", "train.epochs=1", "--set", "data.pairs_per_recording=1"]


def methods(tmp_path, data_root, *args: str) -> dict:
    env = {**os.environ, "MMDISTILL_DATA": str(data_root)}
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "methods.py"), *args], check=True, env=env,
                   cwd=tmp_path, capture_output=True, text=True)
    return json.loads((tmp_path / f"{args[args.index('--name') + 1]}.json").read_text())


def test_methods_benchmark_selects_scales_on_validation_and_reports_them(tmp_path, data_root):
    tuning = methods(tmp_path, data_root, "--seeds", "0", "--methods", "kd", "at", "--scales", "1", "0.01",
                     "--name", str(tmp_path / "tuning"), *TINY)
    for method in ("kd", "at"):
        rows = [r for r in tuning["runs"] if r["method"] == method]
        assert sorted(r["scale"] for r in rows) == [0.01, 1.0]
        best = max(rows, key=lambda r: (r["val_accuracy"], r["scale"]))
        assert tuning["selected_scales"][method] == best["scale"]
    at = [r for r in tuning["runs"] if r["method"] == "at" and r["scale"] == 0.01][0]
    assert at["weights"] == [10.0, 10.0]  # the scale multiplies every term's paper weight

    final = methods(tmp_path, data_root, "--seeds", "1", "--methods", "kd", "at", "--name", str(tmp_path / "seed1"),
                    "--select-from", str(tmp_path / "tuning.json"), *TINY)
    assert {r["method"]: r.get("scale") for r in final["runs"]} == {
        "teacher": None, "scratch": None, **tuning["selected_scales"]}

    merged = methods(tmp_path, data_root, "--merge", str(tmp_path / "tuning.json"), str(tmp_path / "seed1.json"),
                     "--select-from", str(tmp_path / "tuning.json"), "--methods", "kd", "at",
                     "--name", str(tmp_path / "merged"))
    kept = [(r["seed"], r["method"], r.get("scale")) for r in merged["runs"]]
    assert len(kept) == len(set(kept)) == 8  # teacher, scratch, kd, at on seeds 0 and 1
    assert all(scale == tuning["selected_scales"][m] for _, m, scale in kept if scale is not None)
    table = (tmp_path / "merged.md").read_text()
    assert "| teacher |" in table and "| scratch |" in table and "beat scratch" in table
