"""Every distillation method on AV-Digits hard: one teacher, one student, one schedule.

    # 1. tune: each method's weights times each scale, one seed; picks by *validation* accuracy
    python benchmarks/methods.py --seeds 0 --scales 1 0.1 0.01 --name methods_tuning
    #    a method picked at the grid's edge gets one more scale; the pick is then over all of them
    python benchmarks/methods.py --seeds 0 --methods at nst dkd rkd --scales 0.001 --name methods_edge
    python benchmarks/methods.py --merge benchmarks/results/methods_tuning.json \
        benchmarks/results/methods_edge.json --name methods_tuning
    # 2. the table: every method at its selected scale, 3 seeds
    python benchmarks/methods.py --seeds 0 1 2 --select-from benchmarks/results/methods_tuning.json
    # runs made in parallel (e.g. one process per seed, --threads 1) are combined with
    python benchmarks/methods.py --merge a.json b.json [--select-from ...]

The teacher and student are the packaged AV-Digits recipes; each method replaces the student
recipe's loss terms (with CE at gamma = 1). Feature terms read the feature points of their kind; their
weights start from the papers' (RepDistiller's, mdistiller's) defaults, which were set for other
feature sizes and losses, so step 1 scales each method's weights and keeps the scale with the best
validation accuracy (ties: the larger weight). The test set is never used to choose. Writes
benchmarks/results/<name>.{md,json}: test accuracy mean +- std, the weight scale, validation
accuracy, extra (adapter/head) parameters, training accuracy and agreement with the teacher on the
test set (to tell underfitting from overfitting), and wall time per epoch, with the teacher and
the scratch student as reference rows.
"""
from __future__ import annotations

import argparse

import torch

from _common import av_digits_setup, fmt, load_runs, markdown_table, mean_std, measure, merge_rows, paired_gain, save

from mmdistill import api
from mmdistill.models import build_model


def on(path: str, name: str, weight: float, **options) -> dict:
    return {"name": name, "weight": weight, "student": path, "teacher": path, **options}


def placed(name: str, weight: float, **options) -> list[dict]:
    """A term placed by the loss's kind through the models' feature points (models/points.py):
    maps (at, nst, sp) on each modality's last convolutional map, embeddings (fitnet, vid) on each
    modality's encoder output, the others on the fused embedding."""
    return [{"name": name, "weight": weight, **options}]


# method -> loss terms (weights follow the papers' / RepDistiller's defaults, rescaled to these
# losses' normalisation where it differs)
METHODS = {
    "mse": [{"name": "mse", "weight": 0.05}],
    "kd": [{"name": "kd", "weight": 1.0, "temperature": 4.0}],
    "dkd": [{"name": "dkd", "weight": 1.0}],
    "dist": [{"name": "dist", "weight": 1.0}],
    "fitnet": placed("fitnet", 1.0),
    "at": placed("at", 1000.0),
    "nst": placed("nst", 50.0),
    "vid": placed("vid", 1.0),
    # SP compares activation maps, as in the paper and RepDistiller (the last block's map);
    # sp_fusion, on the fused embedding, is the placement the first table used, kept for comparison
    "sp": placed("sp", 3000.0),
    "rkd": placed("rkd", 1.0),
    "pkt": placed("pkt", 30000.0),
    "cc": placed("cc", 0.02),
    "crd": placed("crd", 0.8),
    "sp_fusion": [on("fusion", "sp", 3000.0)],
}


def select_scales(runs: list[dict]) -> dict[str, float]:
    """Per method, the weight scale with the best mean validation accuracy (ties: the larger)."""
    chosen = {}
    for method in {r["method"] for r in runs if "scale" in r}:
        scores = {}
        for r in runs:
            if r["method"] == method:
                scores.setdefault(r["scale"], []).append(r["val_accuracy"])
        chosen[method] = max(scores, key=lambda k: (mean_std(scores[k])[0], k))
    return chosen


def run_seed(seed: int, methods: list[str], scales: dict[str, list[float]], args) -> list[dict]:
    device, tcfg, scfg, data = av_digits_setup(seed, args)
    teacher = build_model(tcfg.model, data.specs, data.num_classes, seed=seed)
    fit = api.train(teacher, data, tcfg.train, device=args.device, seed=seed)
    runs = [{"seed": seed, "method": "teacher", **measure(teacher, fit, tcfg.train.epochs, data, device)}]
    for method, scale in [("scratch", None), *[(m, k) for m in methods for k in scales[m]]]:
        student = build_model(scfg.model, data.specs, data.num_classes, seed=seed)
        if method == "scratch":
            fit = api.train(student, data, scfg.train, device=args.device, seed=seed)
        else:
            terms = [{**term, "weight": term["weight"] * scale} for term in METHODS[method]]
            fit = api.distill(student, teacher, data, terms=terms, gamma=1.0, cfg=scfg.train,
                              device=args.device, seed=seed)
        run = {"seed": seed, "method": method,
               # the weight of every placed term (one per modality for per-modality kinds)
               **({"scale": scale, "weights": [t.weight for t in fit.task.terms]} if scale is not None else {}),
               **measure(student, fit, scfg.train.epochs, data, device, teacher=teacher)}
        runs.append(run)
        print(f"seed {seed} {method:8s} x{scale if scale is not None else '':<5} test {run['accuracy']:.4f} "
              f"val {run['val_accuracy']:.4f} ({run['epoch_seconds']:.1f} s/epoch)", flush=True)
    return runs


def table(runs: list[dict], methods: list[str], chosen: dict[str, float]) -> str:
    by_seed = {r["seed"]: r["accuracy"] for r in runs if r["method"] == "scratch"}
    scratch = mean_std(list(by_seed.values()))[0]
    rows = []
    for method in ["teacher", "scratch", *methods]:
        for scale in sorted({r.get("scale") for r in runs if r["method"] == method}, key=lambda k: -(k or 0)):
            rs = [r for r in runs if r["method"] == method and r.get("scale") == scale]
            m = mean_std([r["accuracy"] for r in rs])[0]
            verdict = "" if scale is None else ("beats scratch" if m > scratch else "does not beat scratch")
            if scale is not None and chosen.get(method) == scale and any(
                    r["method"] == method and r.get("scale") != scale for r in runs):
                verdict = f"selected; {verdict}"
            agreement = [r["teacher_agreement"] for r in rs if "teacher_agreement" in r]
            weights = ", ".join(f"{w:g}" for w in rs[0]["weights"]) if scale is not None else ""
            # paired by seed: every method starts from the scratch student's initial weights
            gains = [r["accuracy"] - by_seed[r["seed"]] for r in rs if r["seed"] in by_seed]
            paired = paired_gain(gains) if scale is not None and gains else ""
            rows.append([method, f"{rs[0]['params']:,}", f"{rs[0]['extra_params']:,}",
                         "" if scale is None else f"{scale:g} ({weights})", fmt([r["accuracy"] for r in rs]), paired,
                         fmt([r["val_accuracy"] for r in rs], digits=1),
                         fmt([r["train_accuracy"] for r in rs], digits=1), fmt(agreement, digits=1) if agreement else "",
                         f"{mean_std([r['epoch_seconds'] for r in rs])[0]:.1f}", str(len(rs)), verdict])
    header = ["method", "params", "extra params", "weight scale (weights)", "test accuracy % (mean ± std)",
              "minus scratch, same seed (seeds above)",
              "val accuracy %", "train accuracy %", "agreement with teacher %", "s / epoch", "seeds", ""]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multipliers of each method's weights")
    parser.add_argument("--select-from", default=None,
                        help="a tuning run's JSON: run (or, with --merge, keep) each method at its selected scale")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default="methods")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--merge", nargs="+", default=None, help="JSON files of earlier runs to combine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = select_scales(load_runs(args.select_from)) if args.select_from else {}
    scales = {m: [chosen[m]] if m in chosen else args.scales for m in args.methods}
    runs = []
    if args.merge:
        # a seed split across processes trains its (seeded, identical) teacher and scratch student
        # in each, timed differently: keep the last part's row per (seed, method, scale)
        unique = merge_rows([(path, load_runs(path)) for path in args.merge],
                            key=lambda r: (r["seed"], r["method"], r.get("scale")), resolve=lambda _, last: last)
        runs = [r for r in unique if r["method"] not in chosen or r.get("scale") == chosen[r["method"]]]
        args.seeds = sorted({r["seed"] for r in runs})
    for seed in ([] if args.merge else args.seeds):
        runs += run_seed(seed, args.methods, scales, args)
    if not chosen and any(len({r.get("scale") for r in runs if r["method"] == m}) > 1 for m in args.methods):
        chosen = select_scales(runs)
    methods = [m for m in args.methods if any(r["method"] == m for r in runs)]
    save(args.name, {"args": vars(args), "selected_scales": chosen, "runs": runs}, table(runs, methods, chosen))


if __name__ == "__main__":
    main()
