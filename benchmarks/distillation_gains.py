"""Teacher vs student from scratch vs distilled student, several seeds, for the foundation recipes.

    python benchmarks/distillation_gains.py --recipe demo spec hinton --seeds 0 1 2

* ``demo``: the full ``mmdistill demo`` (AV-Digits hard, official split; packaged recipes).
* ``demo_quick``: ``mmdistill demo --quick`` (its teacher trained afresh: the time is a cold start's).
* ``demo_small``: the same comparison with the method-table recipes (configs/av_digits_small_*.yaml).
* ``spec``: the specification's own example (MNIST MLP 784-128-64-10 -> 784-64-10, logit MSE alone).
* ``hinton``: Hinton et al.'s MNIST recipe (784-1200-1200-10 with dropout -> 784-800-800-10, T = 20).

Runs go to ``runs/bench/<recipe>/seed<N>``; the table to
``benchmarks/results/distillation_gains.{md,json}`` (recipes not rerun keep their last rows;
``--recipe`` with no name only rewrites the table from the JSON). Seeds run in parallel processes
(each with its own ``--out`` and ``--name``) are joined by ``--recipe KEY --collect DIR...``, which
reads each finished ``DIR/summary.json`` instead of running, or by ``--recipe KEY --merge A.json
B.json``, which takes ``KEY``'s runs from those result files (keeping each run's measured seconds)
in seed order.

On the official MNIST files (``<data root>/mnist/*-ubyte[.gz]``, which the MNIST recipes' ``source:
auto`` prefers) the table also gives each model's test errors, out of 10,000, beside Hinton et
al.'s 67 (teacher), 146 (student from scratch) and 74 (distilled student).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml
from _common import RESULTS, fmt, machine, markdown_table, mean_std, merge_rows, save, small_recipe

from mmdistill.config import apply_overrides
from mmdistill.demo import QUICK_STUDENT, QUICK_TEACHER, SCRATCH_TWIN, recipe, run_comparison

ROOT = Path(__file__).resolve().parents[1]
#: test errors on full MNIST in Hinton, Vinyals & Dean (2015), Sec. 3 (arXiv:1503.02531)
PAPER_ERRORS = {"hinton": {"teacher": 67, "student_scratch": 146, "student_distilled": 74}}
#: the student from scratch trains with the student recipe minus ``distill``, plus these overrides:
#: its own learning rate, chosen on validation like the distilled student's (hinton_tuning.json)
SCRATCH_OVERRIDES = {"hinton": ["train.optimizer.lr=0.1"],
                     # the demo's twin, as `mmdistill demo` trains it (demo_recipe.json)
                     "demo": SCRATCH_TWIN, "demo_quick": SCRATCH_TWIN}
RECIPES = {
    "demo": ("AV-Digits hard (mmdistill demo)", lambda: recipe("av_digits_teacher"), lambda: recipe("av_digits_student")),
    "demo_quick": ("AV-Digits hard (mmdistill demo --quick)",
                   lambda: apply_overrides(recipe("av_digits_teacher"), list(QUICK_TEACHER)),
                   lambda: apply_overrides(recipe("av_digits_student"), list(QUICK_STUDENT))),
    "demo_small": ("AV-Digits hard, method-table recipes (small teacher and student)",
                   lambda: small_recipe("teacher"), lambda: small_recipe("student")),
    "spec": ("MNIST 10k, spec example, MSE alone", lambda: _yaml("mnist_mlp_teacher"), lambda: _yaml("mnist_mlp_student")),
    "hinton": ("MNIST 10k, Hinton KD T=20", lambda: _yaml("mnist_hinton_teacher"), lambda: _yaml("mnist_hinton_student")),
}


def _yaml(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", nargs="*", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override applied to every recipe (e.g. train.epochs=1 for a smoke test)")
    parser.add_argument("--collect", nargs="+", metavar="RUN_DIR",
                        help="with one --recipe: its runs are these finished comparison directories (summary.json)")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="RESULTS_JSON",
                        help="with --recipe: take each recipe's runs from these result files (other processes' seeds)")
    parser.add_argument("--name", default="distillation_gains", help="result file name (or path, without suffix)")
    args = parser.parse_args()
    previous = RESULTS / f"{args.name}.json"
    results = json.loads(previous.read_text()) if previous.exists() else {"recipes": {}}
    if args.collect and len(args.recipe) != 1:
        parser.error("--collect needs exactly one --recipe")
    if args.merge:
        for key in args.recipe:
            parts = [json.loads(p.read_text())["recipes"][key] for p in args.merge]
            runs = sorted(merge_rows([(f"{p} ({key})", part["runs"]) for p, part in zip(args.merge, parts)],
                                     key=lambda run: run["seed"]), key=lambda run: run["seed"])
            results["recipes"][key] = {**parts[0], "seeds": [run["seed"] for run in runs], "runs": runs}
        save(args.name, results, table(results))
        return
    for key in args.recipe:
        title, teacher_fn, student_fn = RECIPES[key]
        runs = [json.loads((Path(d) / "summary.json").read_text()) for d in args.collect or []]
        for seed in [] if args.collect else args.seeds:
            common = [f"seed={seed}", f"device={args.device}", "train.progress=false", *args.overrides]
            start = time.perf_counter()
            # the demo reuses a finished teacher of the same recipe, data and seed, as `mmdistill demo` does
            summary = run_comparison(apply_overrides(teacher_fn(), common), apply_overrides(student_fn(), common),
                                     Path(args.out) / key / f"seed{seed}", overwrite=True, log=lambda *a: None,
                                     scratch_overrides=SCRATCH_OVERRIDES.get(key, []), reuse_teacher=key == "demo")
            summary["seconds"] = round(time.perf_counter() - start, 1)
            summary["machine"] = machine()
            runs.append(summary)
            print(f"{key} seed {seed}: teacher {summary['teacher']['accuracy']:.4f} "
                  f"scratch {summary['student_scratch']['accuracy']:.4f} "
                  f"distilled {summary['student_distilled']['accuracy']:.4f} ({summary['seconds']} s)", flush=True)
        if runs[0]["data"].get("source") == "idx":
            title = title.replace("MNIST 10k", "MNIST 60k/10k")
        results["recipes"][key] = {"title": title, "seeds": [r["seed"] for r in runs], "overrides": args.overrides,
                                   "runs": runs}
    save(args.name, results, table(results))


def full_mnist_errors(run: dict, role: str) -> int | None:
    """Test errors of ``role`` in ``run`` when it ran on the official MNIST files, else None."""
    data = run.get("data", {})
    if data.get("dataset") != "mnist" or data.get("source") != "idx":
        return None
    return round((1 - run[role]["accuracy"]) * data["test_samples"])


def table(results: dict) -> str:
    """The markdown table of every recipe in ``results`` (mean ± std over its seeds)."""
    rows = []
    for key, entry in results["recipes"].items():
        runs = entry["runs"]
        for role in ("teacher", "student_scratch", "student_distilled"):
            acc = [r[role]["accuracy"] for r in runs]
            gap = fmt([r["gap_closed"] for r in runs], scale=100, digits=1) if role == "student_distilled" else ""
            errors = [full_mnist_errors(r, role) for r in runs]
            paper = PAPER_ERRORS.get(key, {}).get(role)
            cell = ""
            if None not in errors:
                m, s = mean_std(errors)
                cell = f"{m:.1f} ± {s:.1f} of {runs[0]['data']['test_samples']:,}" + (f" (paper: {paper})" if paper else "")
            rows.append([entry["title"], role, f"{runs[0][role]['params']:,}", fmt(acc), gap, cell, len(runs)])
        wins = sum(r["student_distilled"]["accuracy"] > r["student_scratch"]["accuracy"] for r in runs)
        rows.append([entry["title"], "distilled beats scratch", "", f"{wins}/{len(runs)} seeds",
                     f"mean gain {mean_std([r['student_distilled']['accuracy'] - r['student_scratch']['accuracy'] for r in runs])[0] * 100:+.2f} pts", "", ""])
    header = ["recipe", "model", "params", "test accuracy % (mean ± std)", "gap closed %",
              "test errors (full MNIST only)", "seeds"]
    return markdown_table(header, rows)


if __name__ == "__main__":
    main()
