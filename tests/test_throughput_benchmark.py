"""benchmarks/throughput.py at a tiny size: a worker process per measurement, results and ratios written."""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_throughput_benchmark_writes_medians_ratios_and_roofline(tmp_path):
    rows = ["plain_student", "mmdistill_train"]
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--quick", "--samples", "256",
                    "--threads", "1", "--pairs", "hinton", "--rows", *rows, "torchdistill",
                    "--name", str(tmp_path / "tp")], check=True, cwd=tmp_path, capture_output=True, text=True,
                   env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    out = json.loads((tmp_path / "tp.json").read_text())
    hinton = out["pairs"]["hinton"]
    assert list(hinton["samples_per_s"]) == rows and all(v > 0 for v in hinton["samples_per_s"].values())
    assert hinton["student_params"] == {row: 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10 for row in rows}
    assert hinton["roofline_samples_per_s"] > 0 and set(hinton["percent_of_roofline"]) == set(rows)
    assert hinton["ratios"]["mmdistill_train / plain_student"] == (
        hinton["samples_per_s"]["mmdistill_train"] / hinton["samples_per_s"]["plain_student"])
    assert "no --torchdistill-python" in hinton["skipped"]["torchdistill"]
    table = (tmp_path / "tp.md").read_text()
    assert "| mmdistill `train`, student only |" in table and "not measured" in table
