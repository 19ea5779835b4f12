"""Consistent teaching online vs the augmented-view teacher cache (``train.view_cache``), on the demo pair.

Three students per seed, the packaged AV-Digits student architecture and optimiser, the same
augmentation (image: translate by up to 2 pixels; audio log-mel: SpecAugment time and frequency
masks), the same epochs:

- ``scratch``: cross-entropy alone (the scratch twin, same augmentation);
- ``online``: consistent teaching (Beyer et al. 2022): CE + KD with the teacher run every step on
  exactly the student's augmented input (``augment_teacher: consistent``);
- ``views``: the same objective with the teacher's outputs cached for K seeded views per sample
  (``train.view_cache``, float16, memory-mapped); each epoch a sample sees one of its K views.

Reported per row: test accuracy (mean +- std over seeds), the best epoch, the training samples/s
measured in the same process (and for ``views`` the seconds spent building the cache, and the
samples/s with that build counted), and the speed-up over ``online`` paired by seed. The teacher
is the demo's (``mmdistill.demo.train_or_reuse_teacher``, so one trained earlier under
``$MMDISTILL_CACHE/teachers`` is reused). ``--quick-teacher`` uses the teacher and data the demo's
``--quick`` used when these results were measured (4 epochs, 2 pairs per recording), where the
full one is too slow to train.

    python benchmarks/view_cache.py --seeds 0 1 2 --epochs 15 --views 8 --quick-teacher
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, fmt, markdown_table, mean_std  # noqa: E402

from mmdistill import api  # noqa: E402
from mmdistill.checkpoint import load_checkpoint  # noqa: E402
from mmdistill.config import TrainConfig, apply_overrides, parse_config  # noqa: E402
from mmdistill.demo import recipe, train_or_reuse_teacher  # noqa: E402
from mmdistill.evaluate import evaluate_model  # noqa: E402
from mmdistill.models import build_model  # noqa: E402
from mmdistill.runs import load_data  # noqa: E402

NAME = "view_cache"
AUGMENT = {"image": [{"type": "translate", "pixels": 2}],
           "audio": [{"type": "time_mask", "width": 6, "count": 2}, {"type": "freq_mask", "width": 4}]}
TERMS = [{"name": "kd", "temperature": 4.0}]
#: --quick-teacher: the teacher `mmdistill demo --quick` trained when these results were measured
#: (4 epochs on half the pairs; the demo's quick teacher has trained 8 since)
QUICK_TEACHER_4 = ["train.epochs=4", "data.pairs_per_recording=2"]
ROWS = ("scratch", "online", "views")


def teacher_and_data(args):
    common = [f"seed={args.teacher_seed}", "device=cpu", "train.progress=false"]
    cfg = parse_config(apply_overrides(recipe("av_digits_teacher"), common + (QUICK_TEACHER_4 if args.quick_teacher else [])),
                       "teacher")
    data = load_data(cfg)
    folder = Path(tempfile.mkdtemp(prefix="view-cache-teacher-")) / "teacher"
    summary = train_or_reuse_teacher(cfg, data, folder, print, True)
    teacher = load_checkpoint(folder / "best.pt")[0]
    return teacher, data, summary


def student_cfg(args, seed: int):
    extra = ["data.pairs_per_recording=2"] if args.quick_teacher else []
    return parse_config(apply_overrides(recipe("av_digits_student"), [f"seed={seed}", "device=cpu",
                                                                     "train.progress=false", *extra]), "student")


def run_one(row: str, seed: int, teacher, data, args) -> dict:
    scfg = student_cfg(args, seed)
    options = dict(scfg.train.model_dump(), epochs=args.epochs, augment=AUGMENT, progress=False)
    if row == "online":
        options.update(augment_teacher="consistent")
    elif row == "views":
        options.update(augment_teacher="consistent",
                       view_cache={"views": args.views, "dtype": "float16", "storage": "mmap"})
    cfg = TrainConfig.model_validate(options)
    torch.manual_seed(seed)
    student = build_model(scfg.model, data.specs, data.num_classes)
    with tempfile.TemporaryDirectory() as folder:
        if row == "scratch":
            fit = api.train(student, data, cfg, device="cpu", seed=seed, run_dir=Path(folder))
        else:
            fit = api.distill(student, teacher, data, terms=TERMS, gamma=1.0, cfg=cfg, device="cpu", seed=seed,
                              run_dir=Path(folder))
    test = evaluate_model(student, data.test, device="cpu", latency=False)
    train_seconds = fit.seconds  # the fit's epochs; the view cache is built before they start
    samples = args.epochs * len(data.train)
    return {"row": row, "seed": seed, "accuracy": test["accuracy"], "val_accuracy": fit.best_val_accuracy,
            "best_epoch": fit.best_epoch, "epochs": args.epochs, "steps": args.epochs * -(-len(data.train) // cfg.batch_size),
            "train_seconds": train_seconds, "samples_per_s": samples / train_seconds,
            "cache_seconds": fit.view_cache_seconds, "cache_bytes": fit.view_cache_bytes,
            "samples_per_s_with_build": samples / (fit.seconds + fit.view_cache_seconds)}


def speed_rounds(teacher, data, args) -> dict:
    """Training samples/s of the three rows on the same ``--speed-samples`` training samples,
    ``--speed-rounds`` rounds of scratch, online, views in turn, so that a shared machine's load
    drifts over all three alike. Each fit runs 2 epochs without validation; the view cache (of
    ``--speed-views`` views: a step's cost does not depend on K) is built before the clock starts
    and its build is timed apart."""
    from mmdistill.data import DataSplits

    subset = DataSplits(train=data.train.subset(list(range(args.speed_samples))), test=data.test)
    rounds = []
    for r in range(args.speed_rounds):
        one = {}
        for row in ROWS:
            scfg = student_cfg(args, 0)
            options = dict(scfg.train.model_dump(), epochs=2, augment=AUGMENT, progress=False, val_fraction=0.0)
            if row != "scratch":
                options["augment_teacher"] = "consistent"
            if row == "views":
                options["view_cache"] = {"views": args.speed_views, "dtype": "float16", "storage": "mmap"}
            cfg = TrainConfig.model_validate(options)
            torch.manual_seed(r)
            student = build_model(scfg.model, data.specs, data.num_classes)
            if row == "scratch":
                fit = api.train(student, subset, cfg, device="cpu", seed=r)
            else:
                fit = api.distill(student, teacher, subset, terms=TERMS, gamma=1.0, cfg=cfg, device="cpu", seed=r)
            one[row] = {"seconds": fit.seconds, "samples_per_s": 2 * args.speed_samples / fit.seconds,
                        "cache_seconds": fit.view_cache_seconds}
            print(f"speed round {r} {row}: {one[row]['samples_per_s']:.0f} samples/s", flush=True)
        rounds.append(one)
    return {"samples": args.speed_samples, "epochs": 2, "views": args.speed_views, "rounds": rounds}


def speed_table(speed: dict) -> str:
    import statistics

    rows = []
    for row in ROWS:
        sps = [r[row]["samples_per_s"] for r in speed["rounds"]]
        ratio = [r[row]["samples_per_s"] / r["online"]["samples_per_s"] for r in speed["rounds"]]
        rows.append([row, f"{statistics.median(sps):.0f}", f"{statistics.median(ratio):.2f}x",
                     f"{min(ratio):.2f}x to {max(ratio):.2f}x"])
    return markdown_table(["student", "train samples/s (median)", "vs online (median of rounds)", "range"], rows)


def table(result: dict) -> str:
    runs = result["runs"]
    epochs = result["setup"]["epochs"]
    online = {r["seed"]: r for r in runs if r["row"] == "online"}
    out = []
    labels = {"scratch": "scratch twin (CE, same augmentation)",
              "online": "consistent teaching, teacher online every step",
              "views": f"consistent teaching, {result['setup']['views']}-view teacher cache (fp16, mmap)"}
    for row in ROWS:
        rs = [r for r in runs if r["row"] == row]
        if not rs:
            continue
        speed = [r["samples_per_s"] / online[r["seed"]]["samples_per_s"] for r in rs if r["seed"] in online]
        speed_b = [r["samples_per_s_with_build"] / online[r["seed"]]["samples_per_s"] for r in rs if r["seed"] in online]
        late = sum(r["best_epoch"] > epochs - max(1, epochs // 10) for r in rs)
        out.append([labels[row], len(rs), fmt([r["accuracy"] for r in rs]),
                    ", ".join(str(r["best_epoch"]) for r in rs) + (" (not converged)" if late else ""),
                    f"{mean_std([r['samples_per_s'] for r in rs])[0]:.0f}",
                    f"{mean_std(speed)[0]:.2f}x" if speed else "",
                    f"{mean_std([r['cache_seconds'] for r in rs])[0]:.0f}" if row == "views" else "",
                    f"{mean_std(speed_b)[0]:.2f}x" if speed_b and row == "views" else ""])
    header = ["student", "seeds", "test accuracy %", f"best epoch (of {epochs})", "train samples/s (sequential runs)",
              "vs online", "cache build s", "vs online, build counted"]
    return markdown_table(header, out)


def save(result: dict) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    (RESULTS / f"{NAME}.md").write_text(text + "\n")
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--teacher-seed", type=int, default=0)
    parser.add_argument("--quick-teacher", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--speed-only", action="store_true",
                        help="only the interleaved throughput rounds, into results/view_cache_speed.json")
    parser.add_argument("--speed-rounds", type=int, default=3)
    parser.add_argument("--speed-samples", type=int, default=1280)
    parser.add_argument("--speed-views", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher, data, summary = teacher_and_data(args)
    if args.speed_only:
        speed = speed_rounds(teacher, data, args)
        speed.update(threads=args.threads, quick_teacher=args.quick_teacher,
                     machine=f"{platform.machine()}, shared by several jobs")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{NAME}_speed.json").write_text(json.dumps(speed, indent=2) + "\n")
        print(speed_table(speed))
        return
    teacher_acc = evaluate_model(teacher, data.test, device="cpu", latency=False)["accuracy"]
    result = {"setup": {"epochs": args.epochs, "views": args.views, "augment": AUGMENT, "terms": TERMS,
                        "quick_teacher": args.quick_teacher, "teacher_accuracy": teacher_acc,
                        "teacher_epochs": summary.get("epochs"), "train_samples": len(data.train),
                        "threads": args.threads, "machine": f"{platform.machine()}, shared by several jobs "
                        "(timings are not from an idle machine; compare rows of the same seed)",
                        "seeds": args.seeds},
              "runs": []}
    for seed in args.seeds:
        for row in ROWS:
            start = time.perf_counter()
            run = run_one(row, seed, teacher, data, args)
            result["runs"].append(run)
            print(f"seed {seed} {row}: {100 * run['accuracy']:.2f} % test, best epoch {run['best_epoch']}, "
                  f"{run['samples_per_s']:.0f} samples/s, {time.perf_counter() - start:.0f} s", flush=True)
            save(result)
    print(save(result))
    print(f"\nwrote {RESULTS / NAME}.json and .md")


if __name__ == "__main__":
    main()
