"""Teacher vs student from scratch vs distilled student, several seeds, for the foundation recipes.

    python benchmarks/distillation_gains.py --recipe demo spec hinton --seeds 0 1 2

* ``demo``: the full ``mmdistill demo`` (AV-Digits hard, official split; packaged recipes).
* ``spec``: the specification's own example (MNIST MLP 784-128-64-10 -> 784-64-10, logit MSE alone).
* ``hinton``: Hinton et al.'s MNIST recipe (784-1200-1200-10 with dropout -> 784-800-800-10, T = 20).

Runs go to ``runs/bench/<recipe>/seed<N>``; the table to
``benchmarks/results/distillation_gains.{md,json}`` (recipes not rerun keep their last rows).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml
from _common import RESULTS, fmt, markdown_table, mean_std, save

from mmdistill.config import apply_overrides
from mmdistill.demo import recipe, run_comparison

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "demo": ("AV-Digits hard (mmdistill demo)", lambda: recipe("av_digits_teacher"), lambda: recipe("av_digits_student")),
    "spec": ("MNIST 10k, spec example, MSE alone", lambda: _yaml("mnist_mlp_teacher"), lambda: _yaml("mnist_mlp_student")),
    "hinton": ("MNIST 10k, Hinton KD T=20", lambda: _yaml("mnist_hinton_teacher"), lambda: _yaml("mnist_hinton_student")),
}


def _yaml(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override applied to every recipe (e.g. train.epochs=1 for a smoke test)")
    args = parser.parse_args()
    previous = RESULTS / "distillation_gains.json"
    results = json.loads(previous.read_text()) if previous.exists() else {"recipes": {}}
    for key in args.recipe:
        title, teacher_fn, student_fn = RECIPES[key]
        runs = []
        for seed in args.seeds:
            common = [f"seed={seed}", f"device={args.device}", "train.progress=false", *args.overrides]
            start = time.perf_counter()
            summary = run_comparison(apply_overrides(teacher_fn(), common), apply_overrides(student_fn(), common),
                                     Path(args.out) / key / f"seed{seed}", overwrite=True, log=lambda *a: None)
            summary["seconds"] = round(time.perf_counter() - start, 1)
            runs.append(summary)
            print(f"{key} seed {seed}: teacher {summary['teacher']['accuracy']:.4f} "
                  f"scratch {summary['student_scratch']['accuracy']:.4f} "
                  f"distilled {summary['student_distilled']['accuracy']:.4f} ({summary['seconds']} s)", flush=True)
        results["recipes"][key] = {"title": title, "seeds": args.seeds, "overrides": args.overrides, "runs": runs}
    rows = []
    for key, entry in results["recipes"].items():
        runs = entry["runs"]
        for role in ("teacher", "student_scratch", "student_distilled"):
            acc = [r[role]["accuracy"] for r in runs]
            gap = fmt([r["gap_closed"] for r in runs], scale=100, digits=1) if role == "student_distilled" else ""
            rows.append([entry["title"], role, f"{runs[0][role]['params']:,}", fmt(acc), gap, len(runs)])
        wins = sum(r["student_distilled"]["accuracy"] > r["student_scratch"]["accuracy"] for r in runs)
        rows.append([entry["title"], "distilled beats scratch", "", f"{wins}/{len(runs)} seeds",
                     f"mean gain {mean_std([r['student_distilled']['accuracy'] - r['student_scratch']['accuracy'] for r in runs])[0] * 100:+.2f} pts", ""])
    header = ["recipe", "model", "params", "test accuracy % (mean ± std)", "gap closed %", "seeds"]
    save("distillation_gains", results, markdown_table(header, rows))


if __name__ == "__main__":
    main()
