"""The distillation-gains benchmark on a tiny fake copy of the official MNIST files: the Hinton
recipe reports test errors beside the paper's, and the table can be rewritten from its JSON."""
import json
import subprocess
import sys

import numpy as np
from test_benchmarks import REPO, run_benchmark
from test_data_real import write_idx


def fake_mnist(root):
    """300 training and 100 test images in the official IDX layout; class c lights up row 2c + 4."""
    rng = np.random.default_rng(0)
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for part, n in (("train", 300), ("t10k", 100)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        images[np.arange(n), 2 * labels + 4, 4:24] = 255
        write_idx(folder / f"{part}-images-idx3-ubyte", images)
        write_idx(folder / f"{part}-labels-idx1-ubyte", labels)
    return root


def test_hinton_recipe_reports_full_mnist_errors_beside_the_paper(tmp_path):
    root = fake_mnist(tmp_path / "data")
    out = run_benchmark(tmp_path, root, "--recipe", "hinton", "--seeds", "0", "--out", str(tmp_path / "runs"),
                        "--set", "train.epochs=1", "--set", "model.encoders.image.hidden=[16]", "--set", f"data.root={root}", "--name", str(tmp_path / "gains"),
                        script="distillation_gains.py")
    entry = out["recipes"]["hinton"]
    run = entry["runs"][0]
    assert run["data"]["source"] == "idx" and run["data"]["test_samples"] == 100
    assert run["teacher"]["params"] == 784 * 16 + 16 + 16 * 10 + 10  # the override reached the recipe
    assert entry["title"].startswith("MNIST 60k/10k")
    assert run["scratch_overrides"] == ["train.optimizer.lr=0.1"]  # the scratch baseline's own learning rate
    runs_dir = tmp_path / "runs" / "hinton" / "seed0"
    lr = {role: json.loads((runs_dir / role / "run.json").read_text())["config"]["train"]["optimizer"]["lr"]
          for role in ("student_scratch", "student_distilled")}
    assert lr == {"student_scratch": 0.1, "student_distilled": 0.05}
    table = (tmp_path / "gains.md").read_text()
    for role, paper in (("teacher", 67), ("student_scratch", 146), ("student_distilled", 74)):
        errors = round((1 - run[role]["accuracy"]) * 100)
        assert f"| {role} |" in table and f"| {errors:.1f} ± 0.0 of 100 (paper: {paper}) |" in table
    rewritten = run_benchmark(tmp_path, root, "--recipe", "--name", str(tmp_path / "gains"), script="distillation_gains.py")
    assert rewritten == out and (tmp_path / "gains.md").read_text() == table
    assert json.loads((tmp_path / "gains.json").read_text())["recipes"].keys() == {"hinton"}


def test_seeds_run_apart_are_collected_into_one_table(tmp_path):
    root = fake_mnist(tmp_path / "data")
    tiny = ["--set", "train.epochs=1", "--set", "model.encoders.image.hidden=[8]", "--set", f"data.root={root}"]
    for seed in ("0", "1"):
        run_benchmark(tmp_path, root, "--recipe", "hinton", "--seeds", seed, "--out", str(tmp_path / f"runs{seed}"),
                      *tiny, "--name", str(tmp_path / f"part{seed}"), script="distillation_gains.py")
    joined = run_benchmark(tmp_path, root, "--recipe", "hinton", "--collect", str(tmp_path / "runs0" / "hinton" / "seed0"),
                           str(tmp_path / "runs1" / "hinton" / "seed1"), "--name", str(tmp_path / "joined"),
                           script="distillation_gains.py")
    parts = [json.loads((tmp_path / f"part{s}.json").read_text())["recipes"]["hinton"]["runs"][0] for s in "01"]
    entry = joined["recipes"]["hinton"]
    assert entry["seeds"] == [0, 1]
    assert [r["teacher"]["accuracy"] for r in entry["runs"]] == [p["teacher"]["accuracy"] for p in parts]
    assert "| 2 |" in (tmp_path / "joined.md").read_text()  # the rows count both seeds
    # --merge takes the runs from the part files, seconds included, in seed order (files given backwards)
    merged = run_benchmark(tmp_path, root, "--recipe", "hinton", "--merge", str(tmp_path / "part1.json"),
                           str(tmp_path / "part0.json"), "--name", str(tmp_path / "merged"), script="distillation_gains.py")
    entry = merged["recipes"]["hinton"]
    assert entry["seeds"] == [0, 1] and [r["seconds"] for r in entry["runs"]] == [p["seconds"] for p in parts]
    assert "| 2 |" in (tmp_path / "merged.md").read_text()
    # the same part given twice counts once; a seed two files ran with different results is refused
    twice = run_benchmark(tmp_path, root, "--recipe", "hinton", "--merge", str(tmp_path / "part0.json"),
                          str(tmp_path / "part0.json"), "--name", str(tmp_path / "twice"), script="distillation_gains.py")
    assert twice["recipes"]["hinton"]["seeds"] == [0]
    rerun = json.loads((tmp_path / "part0.json").read_text())
    rerun["recipes"]["hinton"]["runs"][0]["seconds"] += 1.0
    (tmp_path / "rerun0.json").write_text(json.dumps(rerun))
    clash = subprocess.run([sys.executable, str(REPO / "benchmarks" / "distillation_gains.py"), "--recipe", "hinton",
                            "--merge", str(tmp_path / "part0.json"), str(tmp_path / "rerun0.json"),
                            "--name", str(tmp_path / "clash")], cwd=tmp_path, capture_output=True, text=True)
    assert clash.returncode == 1 and "rerun0.json (hinton): 0 is also in" in clash.stderr
    assert not (tmp_path / "clash.json").exists()
