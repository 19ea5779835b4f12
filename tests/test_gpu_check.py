"""benchmarks/gpu_check.sh and gpu_check.py without a GPU: the dry run checks every step on the CPU
(installing nothing), the install step picks only missing or older wheels, and every test that
skips without CUDA is one the check runs (marked ``cuda``)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402


@pytest.mark.slow
def test_dry_run_checks_every_step_on_the_cpu(tmp_path, fifth_data_root):
    """The whole sequence on the CPU at the smallest size: every check passes, gpu.json records
    each, the table is printed, and nothing is installed (no pip, no private site folder)."""
    site = tmp_path / "site"
    # PYTHON: the script's interpreter is this one (make test runs .venv/bin/python with no venv on PATH)
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO / "src"), "GPU_CHECK_SITE": str(site),
           "MMDISTILL_DATA": str(fifth_data_root),  # a fifth of the real data: the steps, not its size
           "PIP_NO_INDEX": "1", "OUT": str(tmp_path / "device-out")}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out",
                           str(tmp_path / "gpu.json"), "--work", str(tmp_path / "work")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["dry_run"] is True and result["all_passed"] is True
    assert list(result["checks"]) == [name for name, _, _ in gpu_check.CHECKS]
    assert all(c["status"] == "pass" for c in result["checks"].values()), result["checks"]
    checks = result["checks"]
    assert checks["cuda_tests"]["figures"]["skipped"] == checks["cuda_tests"]["figures"]["tests"] >= 17
    assert checks["resume"]["figures"]["deterministic"]["identical"] is True
    assert checks["resume"]["figures"]["deterministic"]["killed_after_epoch"] == 1
    assert checks["cross_device"]["figures"]["written_on_gpu"]["exported"] is True
    assert checks["torchrun"]["figures"]["status"] == "complete"
    assert set(checks["throughput"]["figures"]) == {"hinton", "av_digits"}
    assert "DRY RUN" in done.stdout and re.search(r"^throughput\s+\| pass", done.stdout, re.M)
    assert not site.exists() and "pip" not in done.stdout
    assert not (tmp_path / "device-out").exists()  # a dry run never writes where a GPU run's results go


def test_the_script_parses_and_refuses_unknown_options(tmp_path):
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")]).returncode == 0
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--bogus"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr


def test_install_takes_only_missing_or_older_wheels(tmp_path, monkeypatch):
    wheels = tmp_path / ".gpu_carry" / "wheels"
    wheels.mkdir(parents=True)
    for name in ("pydantic-2.14.4-py3-none-any.whl", "typing_extensions-4.16.0-py3-none-any.whl",
                 "soxr-1.1.0-cp312-abi3-manylinux_2_17_x86_64.whl"):
        (wheels / name).write_bytes(b"")
    installed = {"pydantic": "2.14.4", "typing-extensions": "4.12.2"}  # soxr missing, typing-extensions older

    def version(name):
        if name not in installed:
            raise gpu_check.importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        out = "2.11.0+cu130 True\n" if "-c" in cmd else ""
        return subprocess.CompletedProcess(cmd, 0, out, "")

    monkeypatch.setattr(gpu_check, "CARRY", tmp_path / ".gpu_carry")
    monkeypatch.setattr(gpu_check, "SITE", tmp_path / "site")
    monkeypatch.setattr(gpu_check.importlib.metadata, "version", version)
    monkeypatch.setattr(gpu_check.subprocess, "run", fake_run)
    gpu_check.install(None)
    pip = [c for c in calls if "pip" in c]
    assert len(pip) == 1 and "--no-index" in pip[0]  # a CUDA torch is there: no registry needed
    chosen = sorted(Path(a).name.split("-")[0] for a in pip[0] if a.endswith(".whl"))
    assert chosen == ["soxr", "typing_extensions"]


def test_install_falls_back_to_the_pinned_torch_without_a_cuda_build(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "2.13.0+cpu False\n" if "-c" in cmd else "", "")

    monkeypatch.setattr(gpu_check, "CARRY", tmp_path / "none")
    monkeypatch.setattr(gpu_check.subprocess, "run", fake_run)
    gpu_check.install(None)
    assert calls[-1][-1] == f"torch=={gpu_check.torch_pin()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", gpu_check.torch_pin())


def test_every_test_that_needs_cuda_is_marked_for_the_check():
    """A test file that skips without CUDA must mark those tests ``cuda``: the check runs ``-m cuda``."""
    needs = [p.name for p in (REPO / "tests").glob("test_*.py")
             if re.search(r"skipif\(\s*not torch\.cuda\.is_available\(\)", p.read_text())]
    assert needs, "no test skips without CUDA: the check would have nothing to run"
    assert sorted(needs) == sorted(p.name for p in gpu_check.cuda_test_files())


def test_every_throughput_row_the_check_asks_for_exists():
    import throughput

    assert set(gpu_check.THROUGHPUT_ROWS) <= set(throughput.ROWS)
    assert set(gpu_check.THROUGHPUT_ROWS) == set(throughput.ROWS) - {"torchdistill"}


def test_weight_distance(tmp_path):
    a = {"state_dict": {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}}
    b = {"state_dict": {"w": torch.tensor([1.0, 2.5]), "n": torch.tensor(3)}}
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    d = gpu_check.weight_distance(tmp_path / "a.pt", tmp_path / "b.pt")
    assert d["max_abs"] == 0.5 and d["identical"] is False and d["relative_l2"] == pytest.approx(0.5 / 5 ** 0.5)
    assert gpu_check.weight_distance(tmp_path / "a.pt", tmp_path / "a.pt")["identical"] is True


def test_the_table_shows_failures_with_their_error():
    result = {"dry_run": False, "seconds": 12, "checks": {
        "environment": {"status": "pass", "seconds": 0.1, "figures": {"gpu": "NVIDIA H100", "driver": "580", "torch": "2.11"}},
        "torchrun": {"status": "fail", "seconds": 3, "error": "exited 1: nccl error"}}}
    text = gpu_check.table(result)
    assert "NVIDIA H100, driver 580" in text and "fail" in text and "nccl error" in text and "DRY RUN" not in text


def test_merge_puts_a_second_try_in_place_of_the_first(tmp_path):
    first = {"dry_run": False, "started": "a", "environment": {"gpu": "H100"}, "checks": {
        "environment": {"status": "pass", "figures": {"gpu": "H100"}},
        "resume": {"status": "fail", "error": "x"}, "torchrun": {"status": "pass", "figures": {}}}}
    second = {"dry_run": False, "started": "b", "checks": {"resume": {"status": "pass", "figures": {}}}}
    (tmp_path / "1.json").write_text(json.dumps(first))
    (tmp_path / "2.json").write_text(json.dumps(second))
    assert gpu_check.main(["merge", str(tmp_path / "1.json"), str(tmp_path / "2.json"), "--out",
                           str(tmp_path / "m.json")]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["all_passed"] and list(merged["checks"]) == ["environment", "resume", "torchrun"]
    assert merged["tries"] == ["a", "b"] and merged["environment"] == {"gpu": "H100"}
    (tmp_path / "d.json").write_text(json.dumps({**second, "dry_run": True}))
    with pytest.raises(SystemExit, match="dry run"):
        gpu_check.main(["merge", str(tmp_path / "1.json"), str(tmp_path / "d.json"), "--out", str(tmp_path / "x.json")])
