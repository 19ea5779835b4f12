"""Which small student, and which distillation recipe, work on AV-Digits hard?

Trains the AV-Digits teacher recipe once per seed, then several student designs from scratch and
distilled with several logit recipes, and reports test accuracy. Writes
benchmarks/results/student_sweep.{json,md}.

    python benchmarks/student_sweep.py --seeds 0 --device auto
"""
from __future__ import annotations

import argparse
import copy
import time

from _common import fmt, markdown_table, save, small_recipe

from mmdistill import api
from mmdistill.config import parse_config
from mmdistill.data import build_data
from mmdistill.evaluate import evaluate_model
from mmdistill.models import build_model, count_parameters

STUDENTS = {
    "conv[16,16] (demo student)": {"encoders": {"image": {"type": "conv", "channels": [16, 16]},
                                                "audio": {"type": "conv", "channels": [16, 16]}}},
    "conv[8,16] pool2": {"encoders": {"image": {"type": "conv", "channels": [8, 16], "pool": 2},
                                      "audio": {"type": "conv", "channels": [8, 16], "pool": 2}}},
}
KD4 = [{"name": "kd", "temperature": 4.0}]
HINTS = [{"name": "fitnet", "weight": 1.0}]  # one term per modality's embedding (feature points)
# name -> (gamma, distillation terms or None for training from scratch, mixup alpha)
RECIPES = {
    "scratch": (1.0, None, 0.0),
    "kd T=4": (1.0, KD4, 0.0),
    "kd T=4, no CE": (0.0, KD4, 0.0),
    "kd T=2": (1.0, [{"name": "kd", "temperature": 2.0}], 0.0),
    "kd T=4 + mixup": (1.0, KD4, 0.4),
    "fitnet hints on encoders": (1.0, HINTS, 0.0),
    "fitnet hints + kd T=4": (1.0, HINTS + KD4, 0.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--student-epochs", type=int, default=20)
    parser.add_argument("--teacher-epochs", type=int, default=12)
    parser.add_argument("--name", default="student_sweep")
    parser.add_argument("--limit", type=int, default=None, help="only the first N students (smoke test)")
    args = parser.parse_args()
    results: dict = {"args": vars(args), "runs": []}
    for seed in args.seeds:
        raw = small_recipe("teacher") | {"seed": seed, "device": args.device}
        raw["train"] = {**raw["train"], "epochs": args.teacher_epochs, "progress": False}
        tcfg = parse_config(raw)
        data = build_data(tcfg.data, seed=seed, val_fraction=tcfg.train.val_fraction)
        teacher = build_model(tcfg.model, data.specs, data.num_classes)
        api.train(teacher, data, tcfg.train, device=args.device, seed=seed)
        t_acc = evaluate_model(teacher, data.test, device=api.resolve_device(args.device), latency=False)["accuracy"]
        results["runs"].append({"seed": seed, "student": "teacher", "recipe": "-", "accuracy": t_acc,
                                "params": count_parameters(teacher)})
        print(f"seed {seed} teacher {t_acc:.4f}", flush=True)
        scfg = parse_config(small_recipe("student") | {"seed": seed, "device": args.device})
        train_cfg = scfg.train.model_copy(update={"epochs": args.student_epochs, "progress": False})
        for sname, mcfg in list(STUDENTS.items())[: args.limit]:
            for rname, (gamma, terms, alpha) in RECIPES.items():
                student = build_model(copy.deepcopy(mcfg), data.specs, data.num_classes)
                start = time.perf_counter()
                cfg = train_cfg.model_copy(update={"mixup": alpha})
                if terms is None:
                    api.train(student, data, cfg, device=args.device, seed=seed)
                else:
                    api.distill(student, teacher, data, terms=terms, gamma=gamma, cfg=cfg, device=args.device, seed=seed)
                acc = evaluate_model(student, data.test, device=api.resolve_device(args.device), latency=False)["accuracy"]
                results["runs"].append({"seed": seed, "student": sname, "recipe": rname, "accuracy": acc,
                                        "params": count_parameters(student),
                                        "seconds": round(time.perf_counter() - start, 1)})
                print(f"seed {seed} {sname:26s} {rname:26s} {acc:.4f}", flush=True)
    rows = []
    keys = sorted({(r["student"], r["recipe"]) for r in results["runs"]}, key=lambda k: (k[0] != "teacher", k))
    for sname, rname in keys:
        runs = [r for r in results["runs"] if r["student"] == sname and r["recipe"] == rname]
        rows.append([sname, rname, f"{runs[0]['params']:,}", fmt([r["accuracy"] for r in runs]), len(runs)])
    save(args.name, results, markdown_table(["student", "recipe", "params", "test accuracy %", "seeds"], rows))


if __name__ == "__main__":
    main()
