"""Choose the packaged AV-Digits student recipe on validation, with budgets that converge.

    python benchmarks/demo_recipe.py --seeds 0 --epochs 60            # the search, seed 0
    python benchmarks/demo_recipe.py --seeds 0 1 2 --epochs 60 --candidates scratch kd_t2
    # the 10x schedule: the recipe and its twin only (plain scratch converges well inside 120 epochs)
    python benchmarks/demo_recipe.py --seeds 0 1 2 --epochs 400 --candidates kd_t2_aug_cached scratch_aug
    # the --quick demo's recipe, at its own budget (half the pairs, an 8-epoch teacher, 12-epoch students)
    python benchmarks/demo_recipe.py --seeds 0 1 2 --epochs 12 --set train.epochs=8 \
        --set data.pairs_per_recording=2 --candidates scratch kd_t1 kd_t2 dist --name demo_recipe_quick8

Every candidate trains the packaged student (``recipes/av_digits_student.yaml`` less its teaching scheme, ``_common.plain_student_recipe``: conv[16,32],
stride-2 stem, 2x2 pool) on AV-Digits hard for the same number of epochs under the recipe's cosine
schedule, from the same initial weights (the seed), and is scored on the validation split; the
test split is read only to report. Scratch candidates differ in learning rate and input
augmentation (the scratch twin gets whichever helps it on validation); distillation candidates in
the loss (KD at T in {1, 2, 4}, DIST, KD plus NST on each modality's last map, the old NST-only
recipe) and in consistent teaching (the teacher sees the student's augmented input: run online, or
read from the augmented-view cache of 8 seeded views per sample, ``train.view_cache``). The teacher is the packaged one for the same seed, trained once and reused from
``$MMDISTILL_CACHE/teachers`` as ``mmdistill demo`` does.

A cosine schedule ends at a zero learning rate, so its best epoch is nearly always in its last
tenth; convergence is checked instead by a longer budget (``--epochs`` twice): a recipe whose
validation accuracy still grows with twice the epochs was not converged. Each row records its
best epoch, the steps it took and its training time.

Rows go to ``benchmarks/results/demo_recipe.json`` (resumable: a row already there for the same
seed, candidate and epochs is not rerun, and a run stopped in the middle continues from its last
complete epoch, its run directory kept under ``demo_recipe.runs/`` until its row is written) with a markdown table beside it. Seeds run as separate
processes write their own files (``--name demo_recipe_s1``); ``--merge A.json B.json`` adds their
rows to ``--name``'s. A file records its ``--set`` overrides and takes rows run with the same ones only. Below the table, the choice on validation: the scratch twin is the scratch
candidate with the best mean validation accuracy, the recipe the distillation candidate with the
best, both over the seeds every compared candidate has; the recipe's paired test gain is given
against that twin and against plain scratch (where plain scratch ran that schedule).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from _common import (RESULTS, machine, markdown_table, mean_std, merge_rows, packaged_teacher, plain_student_recipe,
                     remove_runs, resumable_run, runs_folder)

from mmdistill.config import apply_overrides
from mmdistill.distill.engine import in_last_tenth

KD = lambda t: {"name": "kd", "weight": 1.0, "temperature": t}  # noqa: E731
NST = [{"name": "nst", "weight": 0.5, "student": f"encoders.{m}.features", "teacher": f"encoders.{m}.features"}
       for m in ("audio", "image")]
AUGMENT = ["train.augment={image: [{type: translate, pixels: 2}], "
           "audio: [{type: time_mask, width: 4}, {type: freq_mask, width: 4}]}"]
#: name -> (kind, student overrides, distillation terms)
CANDIDATES = {
    "scratch": ("scratch", [], None),
    "scratch_lr0.01": ("scratch", ["train.optimizer.lr=0.01"], None),
    "scratch_aug": ("scratch", AUGMENT, None),
    "nst": ("distill", [], NST),  # the recipe chosen by the frontier at 20 epochs
    "kd_t1": ("distill", [], [KD(1.0)]),
    "kd_t2": ("distill", [], [KD(2.0)]),
    "kd_t4": ("distill", [], [KD(4.0)]),
    "dist": ("distill", [], [{"name": "dist", "weight": 1.0}]),
    "kd_t4_nst": ("distill", [], [KD(4.0), *NST]),
    "kd_t2_aug_consistent": ("distill", [*AUGMENT, "train.augment_teacher=same"], [KD(2.0)]),
    "kd_t2_aug_clean": ("distill", [*AUGMENT, "train.augment_teacher=clean"], [KD(2.0)]),
    # consistent teaching read from the augmented-view teacher cache (8 seeded views per sample):
    # the teacher runs once per view before training, so long schedules cost what scratch costs
    "kd_t2_aug_cached": ("distill", [*AUGMENT, "train.augment_teacher=same", "train.view_cache={views: 8}"],
                         [KD(2.0)]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[60])
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override applied to the teacher and every candidate (e.g. data.pairs_per_recording=1)")
    parser.add_argument("--name", default="demo_recipe", help="result file name (or path, without suffix)")
    parser.add_argument("--table", action="store_true", help="only rewrite the table from the JSON")
    parser.add_argument("--merge", nargs="+", type=Path, default=[],
                        help="add these result files' rows (other seeds' processes) to --name's, then write the table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = RESULTS / f"{args.name}.json"
    results = json.loads(path.read_text()) if path.exists() else {"rows": [], "overrides": args.overrides}
    others = {other: json.loads(other.read_text()) for other in args.merge}
    # rows are keyed by seed, candidate and epochs: a file holds one setting of --set, never a mix
    for source, held in ({} if args.table else {path: results, **others}).items():
        if held.get("overrides", []) != args.overrides:
            parser.error(f"{source} holds rows run with --set {held.get('overrides', [])}, not {args.overrides}: "
                         "give the same --set, or another --name")
    if args.merge:  # a row already here is kept (resumable runs rerun nothing either)
        parts = [(path, results["rows"]), *((other, part["rows"]) for other, part in others.items())]
        results["rows"] = merge_rows(parts, key=lambda r: (r["seed"], r["candidate"], r["epochs"]),
                                     resolve=lambda first, _: first)
        path.write_text(json.dumps(results, indent=2) + "\n")
    elif not args.table:
        for seed in args.seeds:
            run_seed(seed, args, results, path)
    text = table(results["rows"]) + "\n\n" + choice(results["rows"])
    (RESULTS / f"{args.name}.md").write_text(text + "\n")
    print(text)


def run_seed(seed: int, args, results: dict, path: Path) -> None:
    done = {(r["seed"], r["candidate"], r["epochs"]) for r in results["rows"]}
    todo = [(c, e) for e in args.epochs for c in args.candidates if (seed, c, e) not in done]
    folder = runs_folder(path) / f"seed{seed}"  # kept until the seed's rows are written: a stopped run resumes
    if not todo:  # (a folder left by a process stopped after its last row was written goes too)
        remove_runs(folder)
        return
    common = [f"seed={seed}", f"device={args.device}", "train.progress=false", *args.overrides]
    data, teacher = packaged_teacher(common, folder / "teacher")
    for name, epochs in todo:
        kind, overrides, terms = CANDIDATES[name]
        raw = apply_overrides(plain_student_recipe(), [*common, f"train.epochs={epochs}", *overrides])
        if kind == "scratch":
            raw.pop("distill")
        else:
            raw["distill"]["terms"] = terms
            raw["distill"]["teacher"]["checkpoint"] = teacher["checkpoint"]
        start = time.perf_counter()
        out = folder / f"{name}_{epochs}"
        summary, model, resumed = resumable_run(raw, out, data)
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        row = {"seed": seed, "candidate": name, "kind": kind, "epochs": epochs,
               "val_accuracy": summary["val_accuracy"], "accuracy": model["accuracy"],
               "best_epoch": summary["best_epoch"], "steps": summary["steps"],
               "train_accuracy_last": history[-1].get("train_accuracy"),
               "teacher_accuracy": teacher["model"]["accuracy"],
               "teacher_agreement": model.get("teacher_agreement"),
               # a resumed run's time is not known (only its last process's): none is recorded
               "seconds": None if resumed else round(time.perf_counter() - start, 1),
               "train_seconds": None if resumed else summary.get("train_seconds"),
               "overrides": overrides, "terms": terms, "machine": machine(), **({"resumed": True} if resumed else {})}
        results["rows"].append(row)
        path.write_text(json.dumps(results, indent=2) + "\n")
        shutil.rmtree(out)
        print(f"seed {seed} {name} ({epochs} epochs): val {row['val_accuracy']:.4f} test {row['accuracy']:.4f} "
              f"best epoch {row['best_epoch']} ({'resumed' if resumed else str(row['seconds']) + ' s'})", flush=True)
    remove_runs(folder)


def runs_of(rows: list[dict]) -> dict[tuple[str, int], dict[int, dict]]:
    """The rows by (candidate, epochs), then by seed (in the order they were run)."""
    runs: dict[tuple[str, int], dict[int, dict]] = {}
    for r in rows:
        runs.setdefault((r["candidate"], r["epochs"]), {})[r["seed"]] = r
    return runs


def mean_over(runs: dict[int, dict], field: str, seeds=None) -> float:
    """The mean of ``field`` over one candidate's runs (those on ``seeds`` only, if given)."""
    return mean_std([r[field] for s, r in runs.items() if seeds is None or s in seeds])[0]


def paired(runs: dict, key: tuple[str, int], against: tuple[str, int], seeds=None) -> list[float]:
    """``key``'s test accuracy minus ``against``'s, seed by seed, on the seeds both ran (or ``seeds``)."""
    common = sorted(runs[key].keys() & runs[against].keys()) if seeds is None else seeds
    return [runs[key][s]["accuracy"] - runs[against][s]["accuracy"] for s in common]


def complete(runs: dict, seeds) -> list[tuple[str, int]]:
    """The (candidate, epochs) run on every one of ``seeds``."""
    return [key for key, by_seed in runs.items() if by_seed.keys() >= set(seeds)]


def table(rows: list[dict]) -> str:
    """Mean +- std over seeds per (candidate, epochs), and the paired gain over the seed's scratch."""
    runs = runs_of(rows)
    out = []
    for name, epochs in sorted(runs, key=lambda k: (k[1], list(CANDIDATES).index(k[0]))):
        group = list(runs[name, epochs].values())
        val, val_sd = mean_std([r["val_accuracy"] for r in group])
        test, test_sd = mean_std([r["accuracy"] for r in group])
        gains = paired(runs, (name, epochs), ("scratch", epochs)) if ("scratch", epochs) in runs else []
        gain = (f"{100 * mean_std(gains)[0]:+.2f} ({sum(g > 0 for g in gains)}/{len(gains)})"
                if gains and name != "scratch" else "")
        late = sum(in_last_tenth(r["best_epoch"], epochs) for r in group)
        out.append([name, epochs, len(group), f"{100 * val:.2f} ± {100 * val_sd:.2f}",
                    f"{100 * test:.2f} ± {100 * test_sd:.2f}", gain,
                    ", ".join(str(r["best_epoch"]) for r in group) + (" (last tenth)" if late else "")])
    return markdown_table(["candidate", "epochs", "seeds", "val % (choice)", "test %", "test minus scratch (wins)",
                           "best epoch"], out)


def choice(rows: list[dict]) -> str:
    """The scratch twin and the recipe chosen on mean validation accuracy, per schedule length, among
    the candidates run on every seed that scratch was, and the recipe's paired test gains."""
    runs, order, lines = runs_of(rows), list(CANDIDATES).index, []
    kind = lambda key: CANDIDATES[key[0]][0]  # noqa: E731
    for epochs in sorted({e for _, e in runs}):
        # compared: the candidates run on every seed that plain scratch was (or, in a schedule run
        # without plain scratch, the scratch candidate run on the most seeds)
        scratches = [n for n, e in runs if e == epochs and kind((n, e)) == "scratch"]
        if not scratches:
            continue
        base = "scratch" if "scratch" in scratches else max(scratches, key=lambda n: len(runs[n, epochs]))
        seeds = sorted(runs[base, epochs])
        names = sorted((n for n, e in complete(runs, seeds) if e == epochs), key=order)
        fewer = sorted((n for n, e in runs if e == epochs and n not in names), key=order)
        val = {n: mean_over(runs[n, epochs], "val_accuracy", seeds) for n in names}
        twin = max((n for n in names if kind((n, epochs)) == "scratch"), key=val.get)
        distilled = [n for n in names if kind((n, epochs)) == "distill"]
        if not distilled:
            continue
        best = max(distilled, key=val.get)

        def gain(against: str) -> str:
            gains = paired(runs, (best, epochs), (against, epochs), seeds)
            return f"{100 * mean_std(gains)[0]:+.2f} points ({sum(g > 0 for g in gains)}/{len(gains)} seeds ahead)"

        left_out = f"; not yet on all of them: {', '.join(fewer)}" if fewer else ""
        lines.append(f"**{epochs} epochs, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}** "
                     f"(candidates run on every one of them: "
                     f"{', '.join(names)}{left_out}). Chosen on mean validation accuracy: scratch twin **{twin}** "
                     f"({100 * val[twin]:.2f}%), recipe **{best}** ({100 * val[best]:.2f}%). Paired test gain of "
                     f"{best}: {gain(twin)} over the chosen twin"
                     + ("" if twin == "scratch" or "scratch" not in names else f", {gain('scratch')} over plain scratch")
                     + ".")
    seeds = set().union(*(by_seed for (n, _), by_seed in runs.items() if n == "scratch"))
    full = complete(runs, seeds)
    if len({e for _, e in full}) > 1:  # the packaged recipe: the best over every schedule length
        val = {key: mean_over(runs[key], "val_accuracy", seeds) for key in full}
        twin = max((key for key in full if kind(key) == "scratch"), key=val.get)
        best = max((key for key in full if kind(key) == "distill"), key=val.get)
        lines.append(f"**Over every schedule** (validation's choice): scratch twin **{twin[0]}, {twin[1]} epochs** "
                     f"({100 * val[twin]:.2f}%), recipe **{best[0]}, {best[1]} epochs** ({100 * val[best]:.2f}%).")
    return "\n\n".join(lines)


if __name__ == "__main__":
    main()
