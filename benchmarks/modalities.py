"""How much each AV-Digits modality tells alone, and both together (the teacher recipe's encoders).

    python benchmarks/modalities.py --levels hard clean --seeds 0

Writes benchmarks/results/modalities.{md,json}.
"""
from __future__ import annotations

import argparse
import time

import torch
from _common import fmt, markdown_table, save, small_recipe

from mmdistill import api
from mmdistill.config import parse_config
from mmdistill.data import build_data
from mmdistill.evaluate import evaluate_model
from mmdistill.models import build_model

SUBSETS = (("image",), ("audio",), ("image", "audio"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", nargs="+", default=["hard", "clean"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = []
    for level in args.levels:
        for seed in args.seeds:
            raw = small_recipe("teacher") | {"seed": seed, "device": args.device}
            raw["data"] = {**raw["data"], "level": level}
            raw["train"] = {**raw["train"], "progress": False}
            cfg = parse_config(raw)
            data = build_data(cfg.data, seed=seed, val_fraction=cfg.train.val_fraction)
            for subset in SUBSETS:
                model_cfg = cfg.model.model_copy(update={"encoders": {m: cfg.model.encoders[m] for m in subset}})
                model = build_model(model_cfg, data.specs, data.num_classes)
                start = time.perf_counter()
                api.train(model, data, cfg.train, device=args.device, seed=seed)
                acc = evaluate_model(model, data.test, device=api.resolve_device(args.device), latency=False)["accuracy"]
                runs.append({"level": level, "seed": seed, "modalities": "+".join(subset), "accuracy": acc,
                             "seconds": round(time.perf_counter() - start, 1)})
                print(f"{level} seed {seed} {'+'.join(subset):12s} {acc:.4f}", flush=True)
    rows = []
    for level in args.levels:
        for subset in SUBSETS:
            accs = [r["accuracy"] for r in runs if r["level"] == level and r["modalities"] == "+".join(subset)]
            rows.append([level, "+".join(subset), fmt(accs), len(accs)])
    save("modalities", {"args": vars(args), "runs": runs},
         markdown_table(["level", "modalities", "test accuracy % (mean ± std)", "seeds"], rows))


if __name__ == "__main__":
    main()
