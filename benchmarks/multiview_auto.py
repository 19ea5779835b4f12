"""``distill --auto`` and ``diagnose`` on 13 real multi-view datasets: all-views teacher, one-view students.

    python benchmarks/multiview_auto.py                   # every dataset that fits --budget-minutes
    python benchmarks/multiview_auto.py --datasets orl wikipedia --seeds 0 --epochs 4 --name smoke

Data: ``$MMDISTILL_DATA/multiview/<name>.npz`` (one float32 array per view, ``label``; no split).
Per dataset and seed: a stratified seeded split (``npz`` ``test_fraction`` 0.2 of each class for
test, then ``val_fraction`` 0.2 of the rest for validation), every view standardised per feature
with the training split's statistics (``data.standardize: auto``). The teacher sees all views (one
MLP encoder per view, concatenation fusion, linear head). The two students per dataset are
one-view MLPs on its best and its weakest view, ranked by a one-view model trained from scratch
on seed 0 and scored on *validation* accuracy. For each student and seed, every ``--auto``
candidate (none = scratch, KD T=2, KD T=4, DIST, and the feature method the feature points give:
FitNet on the view's embedding) is trained with the same seed and budget, and ``--auto``'s pick
is the candidate :func:`mmdistill.auto.choose` takes on validation accuracy (the search used the
full budget, so ``--auto`` keeps the search's model: its test accuracy is the chosen candidate's).
``diagnose`` runs once per (dataset, view), seed 0, before looking at any candidate's result;
the table reports the Spearman rank correlation between its score and the realised gain
(``--auto`` minus scratch, mean over seeds), and with the best candidate's gain.

Budget: the run stops starting new datasets after ``--budget-minutes`` and lists the rest as
skipped; results are rewritten after every (dataset, seed), so a cut-off run keeps what it did.
Writes benchmarks/results/<name>.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, markdown_table

from mmdistill import api
from mmdistill.auto import MARGIN, MIN_SAMPLES, search
from mmdistill.config import parse_config
from mmdistill.data import build_data
from mmdistill.diagnose import diagnose
from mmdistill.evaluate import accuracy, predict
from mmdistill.models import build_model

# smallest first (samples x dimensions), so a cut-off run covers as many datasets as it can
DATASETS = ("proteinfold", "aloi10", "wikipedia", "prokaryotic", "orl", "3sources", "movies", "ngs", "bbcsport",
            "webkb", "bdgp", "reuters1200", "bbc4view")
CANDIDATES = ("none", "kd_t2", "kd_t4", "dist", "fitnet")


def config(dataset: str, views: list[str], seed: int, args, student_view: str | None = None):
    """The run config: the all-views teacher's model, or the one-view student's (with a distill
    section naming an in-memory teacher: the search gets the teacher object itself)."""
    raw = {"seed": seed, "device": args.device,
           "data": {"name": "npz", "path": f"multiview/{dataset}.npz", "root": args.root, "test_fraction": 0.2},
           "model": {"encoders": {v: {"type": "mlp", "hidden": [args.hidden]} for v in views},
                     "fusion": {"type": "concat"}},
           "train": {"epochs": args.epochs, "batch_size": 64, "progress": False, "val_fraction": 0.2,
                     "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-4}}}
    if student_view is not None:
        raw["model"]["modalities"] = [student_view]
        raw["distill"] = {"teacher": {"checkpoint": "(in memory)"}}
    return parse_config(raw, f"{dataset} seed {seed}")


def views_of(root: str, dataset: str) -> list[str]:
    with np.load(Path(root) / "multiview" / f"{dataset}.npz") as z:
        return sorted((k for k in z.files if k.startswith("view")), key=lambda k: int(k[4:]))


def rank_views(dataset: str, views: list[str], args) -> dict[str, float]:
    """Validation accuracy of a one-view model from scratch on each view (seed 0)."""
    scores = {}
    for v in views:
        cfg = config(dataset, views, 0, args, student_view=v)
        data = build_data(cfg.data, seed=0, val_fraction=cfg.train.val_fraction)
        model = build_model(cfg.model, data.specs, data.num_classes, seed=0)
        scores[v] = api.train(model, data, cfg.train, device=args.device, seed=0).best_val_accuracy
    return scores


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None below 3 pairs."""
    if len(x) < 3:
        return None

    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = v.argsort()
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties share their mean rank
            r[v == value] = r[v == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def summarise(result: dict) -> dict:
    """Per (dataset, view): means over seeds; the goal counts; Spearman(score, gain)."""
    rows = result["rows"]
    groups = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["view"]), []).append(r)
    per = []
    for (dataset, view), rs in groups.items():
        mean = lambda key: float(np.mean([r[key] for r in rs]))  # noqa: E731
        entry = {"dataset": dataset, "view": view, "role": rs[0]["role"], "seeds": len(rs),
                 "teacher": mean("teacher"), **{c: mean(c) for c in CANDIDATES if all(c in r for r in rs)},
                 "auto": mean("auto"), "picks": [r["auto_choice"] for r in rs]}
        entry["auto_gain"] = 100 * (entry["auto"] - entry["none"])
        best = max((c for c in CANDIDATES if c in entry and c != "none"), key=lambda c: entry[c])
        entry["best_candidate"] = best
        entry["best_gain"] = 100 * (entry[best] - entry["none"])
        diag = next((d for d in result["diagnose"] if d["dataset"] == dataset and d["view"] == view), None)
        entry["diagnose_score"] = diag["score"] if diag else None
        per.append(entry)
    scored = [e for e in per if e["diagnose_score"] is not None]
    return {
        "per_view": per,
        "students": len(per),
        "auto_more_than_half_point_below_scratch": sum(e["auto_gain"] < -0.5 for e in per),
        "some_candidate_gains": sum(e["best_gain"] >= 0.5 for e in per),
        "auto_gains_where_a_candidate_does": sum(e["best_gain"] >= 0.5 and e["auto_gain"] >= 0.5 for e in per),
        "spearman_score_vs_auto_gain": spearman([e["diagnose_score"] for e in scored], [e["auto_gain"] for e in scored]),
        "spearman_score_vs_best_gain": spearman([e["diagnose_score"] for e in scored], [e["best_gain"] for e in scored]),
    }


def markdown(result: dict) -> str:
    s = result["summary"]
    header = ["dataset", "view (role)", "teacher", "scratch", "KD T=2", "KD T=4", "DIST", "FitNet", "--auto",
              "--auto picks (per seed)", "auto - scratch", "diagnose score"]
    pct = lambda v: f"{100 * v:.1f}" if v is not None else "-"  # noqa: E731
    rows = [[e["dataset"], f"{e['view']} ({e['role']})", pct(e["teacher"]), pct(e["none"]),
             *(pct(e.get(c)) for c in CANDIDATES[1:]), pct(e["auto"]), ", ".join(e["picks"]),
             f"{e['auto_gain']:+.2f}", f"{e['diagnose_score']:+.2f}" if e["diagnose_score"] is not None else "-"]
            for e in s["per_view"]]
    sp = lambda v: f"{v:+.2f}" if v is not None else "n/a"  # noqa: E731
    lines = [markdown_table(header, rows), "",
             f"Test accuracy %, mean over {len(result['args']['seeds'])} seed(s), {result['args']['epochs']} epochs. "
             f"Students: {s['students']}. `--auto` more than 0.5 points below scratch: "
             f"{s['auto_more_than_half_point_below_scratch']}; some candidate gains >= 0.5 points: "
             f"{s['some_candidate_gains']}, and `--auto` gains >= 0.5 there: {s['auto_gains_where_a_candidate_does']}. "
             f"Spearman(diagnose score, `--auto` gain) = {sp(s['spearman_score_vs_auto_gain'])}; "
             f"with the best candidate's gain {sp(s['spearman_score_vs_best_gain'])}."]
    if result["skipped"]:
        lines.append(f"\nSkipped (time budget of {result['args']['budget_minutes']} min spent): "
                     + ", ".join(result["skipped"]) + ".")
    return "\n".join(lines)


def write(result: dict, name: str) -> None:
    if result["rows"]:
        result["summary"] = summarise(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    if result["rows"]:
        (RESULTS / f"{name}.md").write_text(markdown(result) + "\n")


def run_dataset(dataset: str, result: dict, args) -> None:
    views = views_of(args.root, dataset)
    ranked = rank_views(dataset, views, args)
    order = sorted(ranked, key=lambda v: -ranked[v])
    chosen = {"best": order[0], "weakest": order[-1]}
    result["views"][dataset] = {"val_accuracy": ranked, **chosen}
    print(f"{dataset}: views by one-view val accuracy {', '.join(f'{v} {ranked[v]:.3f}' for v in order)}", flush=True)
    for seed in args.seeds:
        tcfg = config(dataset, views, seed, args)
        data = build_data(tcfg.data, seed=seed, val_fraction=tcfg.train.val_fraction)
        teacher = build_model(tcfg.model, data.specs, data.num_classes, seed=seed)
        api.train(teacher, data, tcfg.train, device=args.device, seed=seed)
        t_acc = accuracy(*predict(teacher, data.test))
        for role, view in chosen.items():
            cfg = config(dataset, views, seed, args, student_view=view)
            if seed == args.seeds[0]:  # diagnose before any candidate of this student is trained
                d = diagnose(cfg, data, teacher, device=args.device)
                result["diagnose"].append({"dataset": dataset, "view": view, "role": role, "seed": seed, **d})
            found = search(cfg, data, {"teacher": teacher}, device=args.device)
            test = {r["name"]: r["test_accuracy"] for r in found["candidates"]}
            row = {"dataset": dataset, "view": view, "role": role, "seed": seed, "teacher": t_acc, **test,
                   "val": {r["name"]: r["val_accuracy"] for r in found["candidates"]},
                   "auto_choice": found["choice"], "auto_margin": found["margin"], "auto": test[found["choice"]]}
            result["rows"].append(row)
            print(f"{dataset} {view} ({role}) seed {seed}: teacher {t_acc:.3f} "
                  + " ".join(f"{k} {v:.3f}" for k, v in test.items()) + f" -> auto {found['choice']}", flush=True)
        write(result, args.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=64, help="width of each view's MLP encoder")
    parser.add_argument("--budget-minutes", type=float, default=40.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", default=os.environ.get("MMDISTILL_DATA", "../shared/data"))
    parser.add_argument("--name", default="multiview_auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"args": {**vars(args), "margin": MARGIN, "min_samples": MIN_SAMPLES}, "rows": [], "diagnose": [], "views": {}, "skipped": []}
    result["args"]["root"] = "$MMDISTILL_DATA"  # no machine-specific path in the results
    start = time.perf_counter()
    for dataset in args.datasets:
        if time.perf_counter() - start > 60 * args.budget_minutes:
            result["skipped"].append(dataset)
            continue
        run_dataset(dataset, result, args)
        print(f"{dataset} done at {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    result["minutes"] = round((time.perf_counter() - start) / 60, 1)
    write(result, args.name)
    print(markdown(result))


if __name__ == "__main__":
    main()
