"""Choose the Hinton MNIST recipe's epochs and learning rate on validation (never on test).

    python benchmarks/hinton_tuning.py --role teacher --lr 0.05 0.1 0.2 --epochs 30 60
    python benchmarks/hinton_tuning.py --role student --lr 0.05 0.1 0.2 --epochs 30 60

Seed 0, the recipes' own validation split (``train.val_fraction`` of the training images). Each
(role, lr, epochs) cell trains from ``configs/mnist_hinton_{teacher,student}.yaml`` with those two
values replaced and records the best validation accuracy over epochs (the epoch ``best.pt`` keeps).
``student`` trains the student from scratch and distilled from the teacher of the teacher recipe
as it stands in its yaml (trained here once, seed 0, or read from ``--teacher``, e.g. the seed-0
teacher of ``distillation_gains.py --recipe hinton``). No test accuracy is computed. Cells
accumulate in ``benchmarks/results/hinton_tuning.{json,md}``.
"""
from __future__ import annotations

import argparse
import json

import yaml
from _common import RESULTS, markdown_table, save

from mmdistill import api
from mmdistill.config import apply_overrides, parse_config
from mmdistill.data import build_data
from mmdistill.models import build_model

from distillation_gains import ROOT


def _cfg(name: str, overrides: list[str]):
    raw = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    return parse_config(apply_overrides(raw, ["seed=0", "train.progress=false", *overrides]), name)


def _fit(cfg, data, teacher=None) -> dict:
    model = build_model(cfg.model, data.specs, data.num_classes, seed=cfg.seed)
    if teacher is None:
        fit = api.train(model, data, cfg.train, device=cfg.device, seed=cfg.seed)
    else:
        fit = api.distill(model, teacher, data, terms=cfg.distill.terms, gamma=cfg.distill.gamma, cfg=cfg.train,
                          device=cfg.device, seed=cfg.seed)
    return {"val_accuracy": fit.best_val_accuracy, "best_epoch": fit.best_epoch, "model": model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["teacher", "student"], required=True)
    parser.add_argument("--lr", type=float, nargs="+", required=True)
    parser.add_argument("--epochs", type=int, nargs="+", required=True)
    parser.add_argument("--teacher", help="student: a checkpoint of the teacher recipe (seed 0) instead of training one")
    parser.add_argument("--roles", nargs="+", default=["student_scratch", "student_distilled"],
                        help="student: which of the two to train")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra override for every cell")
    args = parser.parse_args()
    path = RESULTS / "hinton_tuning.json"
    teacher_cfg = _cfg("mnist_hinton_teacher", args.overrides)
    data = build_data(teacher_cfg.data, seed=0, val_fraction=teacher_cfg.train.val_fraction)
    teacher = None
    if args.role == "student" and args.teacher:
        from mmdistill.checkpoint import load_checkpoint

        teacher = load_checkpoint(args.teacher)[0]
    elif args.role == "student":
        teacher = _fit(teacher_cfg, data)["model"]
        print(f"teacher (as in its yaml): val {teacher_cfg.train.optimizer.lr} lr, {teacher_cfg.train.epochs} epochs", flush=True)
    for lr in args.lr:
        for epochs in args.epochs:
            over = [f"train.optimizer.lr={lr}", f"train.epochs={epochs}", *args.overrides]
            runs = [("teacher", _cfg("mnist_hinton_teacher", over), None)] if args.role == "teacher" else [
                ("student_scratch", _cfg("mnist_hinton_student", over), None),
                ("student_distilled", _cfg("mnist_hinton_student", over), teacher)]
            runs = [r for r in runs if args.role == "teacher" or r[0] in args.roles]
            for role, cfg, t in runs:
                out = _fit(cfg, data, t)
                cell = {"role": role, "lr": lr, "epochs": epochs, "overrides": args.overrides,
                        "val_accuracy": out["val_accuracy"], "best_epoch": out["best_epoch"]}
                # re-read before writing: several tuning processes may share the file
                results = json.loads(path.read_text()) if path.exists() else {"cells": []}
                results["cells"] = [c for c in results["cells"] if (c["role"], c["lr"], c["epochs"], c["overrides"])
                                    != (role, lr, epochs, args.overrides)] + [cell]
                print(json.dumps(cell), flush=True)
                rows = [[c["role"], c["lr"], c["epochs"], " ".join(c["overrides"]), f"{100 * c['val_accuracy']:.2f}",
                         c["best_epoch"]] for c in sorted(results["cells"], key=lambda c: (c["role"], c["lr"], c["epochs"]))]
                save("hinton_tuning", results, markdown_table(
                    ["model", "lr", "epochs", "overrides", "val accuracy % (seed 0)", "best epoch"], rows))


if __name__ == "__main__":
    main()
