"""Every distillation method on AV-Digits hard: one teacher, one student, one schedule.

    python benchmarks/methods.py --seeds 0 1 2 [--methods kd fitnet ...] [--set train.epochs=1]
    python benchmarks/methods.py --merge seed0.json seed1.json seed2.json   # runs made in parallel

The teacher and student are the packaged AV-Digits recipes; each method replaces the student
recipe's loss terms (with CE at gamma = 1). Feature terms read the layers named below. Writes
benchmarks/results/methods.{md,json}: test accuracy mean +- std, extra (adapter/head) parameters,
training accuracy and agreement with the teacher on the test set (to tell underfitting from
overfitting), and wall time per epoch, with the teacher and the scratch student as reference rows.
"""
from __future__ import annotations

import argparse
import json

import torch

from _common import fmt, markdown_table, mean_std, save

from mmdistill import api
from mmdistill.config import apply_overrides, parse_config
from mmdistill.data import build_data
from mmdistill.demo import recipe
from mmdistill.evaluate import evaluate_model
from mmdistill.models import build_model, count_parameters


def on(path: str, name: str, weight: float, **options) -> dict:
    return {"name": name, "weight": weight, "student": path, "teacher": path, **options}


ENCODERS = ("encoders.audio", "encoders.image")
MAPS = ("encoders.audio.features", "encoders.image.features")
# method -> loss terms (weights follow the papers' / RepDistiller's defaults, rescaled to these
# losses' normalisation where it differs)
METHODS = {
    "mse": [{"name": "mse", "weight": 0.05}],
    "kd": [{"name": "kd", "weight": 1.0, "temperature": 4.0}],
    "dkd": [{"name": "dkd", "weight": 1.0}],
    "dist": [{"name": "dist", "weight": 1.0}],
    "fitnet": [on(p, "fitnet", 1.0) for p in ENCODERS],
    "at": [on(p, "at", 1000.0) for p in MAPS],
    "nst": [on(p, "nst", 50.0) for p in MAPS],
    "vid": [on(p, "vid", 1.0) for p in ENCODERS],
    "sp": [on("fusion", "sp", 3000.0)],
    "rkd": [on("fusion", "rkd", 1.0)],
    "pkt": [on("fusion", "pkt", 30000.0)],
    "cc": [on("fusion", "cc", 0.02)],
    "crd": [on("fusion", "crd", 0.8)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default="methods")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--merge", nargs="+", default=None, help="JSON files of earlier runs to combine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = api.resolve_device(args.device)
    runs = []
    if args.merge:
        runs = [r for path in args.merge for r in json.loads(open(path).read())["runs"]]
        args.seeds = sorted({r["seed"] for r in runs})
    for seed in ([] if args.merge else args.seeds):
        common = [f"seed={seed}", f"device={args.device}", "train.progress=false", *args.overrides]
        tcfg = parse_config(apply_overrides(recipe("av_digits_teacher"), common))
        scfg = parse_config(apply_overrides(recipe("av_digits_student"), common))
        data = build_data(tcfg.data, seed=seed, val_fraction=tcfg.train.val_fraction)
        teacher = build_model(tcfg.model, data.specs, data.num_classes)
        fit = api.train(teacher, data, tcfg.train, device=args.device, seed=seed)
        runs.append({"seed": seed, "method": "teacher", "params": count_parameters(teacher), "extra_params": 0,
                     "accuracy": evaluate_model(teacher, data.test, device=device, latency=False)["accuracy"],
                     "train_accuracy": evaluate_model(teacher, data.train, device=device, latency=False)["accuracy"],
                     "epoch_seconds": fit.seconds / tcfg.train.epochs})
        for method in ["scratch", *args.methods]:
            student = build_model(scfg.model, data.specs, data.num_classes)
            if method == "scratch":
                fit = api.train(student, data, scfg.train, device=args.device, seed=seed)
            else:
                fit = api.distill(student, teacher, data, terms=METHODS[method], gamma=1.0, cfg=scfg.train,
                                  device=args.device, seed=seed)
            test = evaluate_model(student, data.test, device=device, latency=False, teacher=teacher)
            acc = test["accuracy"]
            runs.append({"seed": seed, "method": method, "params": count_parameters(student),
                         "extra_params": fit.extra_params, "accuracy": acc,
                         "train_accuracy": evaluate_model(student, data.train, device=device, latency=False)["accuracy"],
                         "teacher_agreement": test["teacher_agreement"],
                         "epoch_seconds": fit.seconds / scfg.train.epochs})
            print(f"seed {seed} {method:8s} {acc:.4f} ({fit.seconds / scfg.train.epochs:.1f} s/epoch)", flush=True)
    scratch = mean_std([r["accuracy"] for r in runs if r["method"] == "scratch"])[0]
    rows = []
    for method in ["teacher", "scratch", *args.methods]:
        rs = [r for r in runs if r["method"] == method]
        m = mean_std([r["accuracy"] for r in rs])[0]
        verdict = "" if method in ("teacher", "scratch") else ("beats scratch" if m > scratch else "does not beat scratch")
        agreement = [r["teacher_agreement"] for r in rs if "teacher_agreement" in r]
        rows.append([method, f"{rs[0]['params']:,}", f"{rs[0]['extra_params']:,}", fmt([r["accuracy"] for r in rs]),
                     fmt([r["train_accuracy"] for r in rs], digits=1), fmt(agreement, digits=1) if agreement else "",
                     f"{mean_std([r['epoch_seconds'] for r in rs])[0]:.1f}", verdict])
    header = ["method", "params", "extra params", "test accuracy % (mean ± std)", "train accuracy %",
              "agreement with teacher %", "s / epoch", ""]
    save(args.name, {"args": vars(args), "runs": runs}, markdown_table(header, rows))


if __name__ == "__main__":
    main()
