"""The accuracy-cost frontier of AV-Digits ``hard`` students: from scratch and distilled.

A family of small students (width, depth, strided stem, depthwise-separable blocks, pooling
grid), each trained from scratch and distilled from the packaged teacher with the candidate
methods. Two protocols (``--protocol``):

- ``search`` (the committed 20-epoch table): the method is chosen per student on *validation*
  accuracy (seed 0) among kd, dist, at and nst, then run on the other seeds, paired with the same
  seed's scratch student (same initial weights, same data order); one teacher (``--teacher-seed``)
  for every student seed.
- ``shipped``: every student trains under the packaged student recipe as ``mmdistill demo`` runs it
  (``recipes/av_digits_student.yaml``, its schedule, augmentation and consistent teaching from the
  augmented-view cache, chosen on validation by demo_recipe.py) with only the model swapped, beside
  the demo's scratch twin of that recipe; each seed reads its own seed's packaged teacher, as the
  demo does. Each row records its best epoch and the machine it ran on; a part that is stopped and
  started again with the same arguments reruns only the runs its file lacks, and continues a run it
  stopped in the middle from its last complete epoch (run directories under ``<part>.runs/``).
Cost is measured where the model runs: exported to ONNX and timed with ONNX Runtime on one
thread (batch 1 latency p50, batch 64 throughput), in one process, alone.

    # each process takes some students (every seed); timings are not taken here
    python benchmarks/frontier.py --seeds 0 1 2 --students "conv[8,16] pool2" "conv[16,32] pool2" --name frontier_a
    python benchmarks/frontier.py --seeds 0 1 2 --students "conv[16,32] stride2 pool2" \
        "conv[16,32,64] separable" --name frontier_b
    # then, alone on the machine: cost (ONNX Runtime), the table and the plot
    python benchmarks/frontier.py --merge benchmarks/results/frontier_a.json benchmarks/results/frontier_b.json
    # the shipped recipe on every student (400 epochs: about an hour per student and seed on one thread)
    python benchmarks/frontier.py --protocol shipped --seeds 0 1 2 --students "conv[16,32,64] separable" \
        --name frontier_shipped_a

The teacher is the packaged teacher recipe trained once (seed ``--teacher-seed``) and kept in
``$MMDISTILL_CACHE/teachers/``, as the demo keeps it (reused when its recipe, data and seed
match): like a user's teacher, it is fixed while the students' seeds vary. Writes ``benchmarks/results/frontier.{md,json,png}``.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from _common import (RESULTS, fmt, load_runs, machine, markdown_table, mean_std, merge_rows, packaged_teacher,
                     paired_gain, plain_student_recipe, remove_runs, result_file, resumable_run, runs_folder)

from mmdistill import api
from mmdistill.checkpoint import load_checkpoint
from mmdistill.config import apply_overrides, parse_config
from mmdistill.data import build_data
from mmdistill.demo import SCRATCH_TWIN, recipe, scratch_recipe, train_or_reuse_teacher
from mmdistill.distill.engine import in_last_tenth
from mmdistill.evaluate import evaluate_model
from mmdistill.models import build_model, count_parameters

MODALITIES = ("audio", "image")


def conv(**encoder) -> dict:
    """The same conv encoder for both modalities, concatenation fusion, a linear head."""
    return {"encoders": {m: {"type": "conv", **encoder} for m in MODALITIES}}


STUDENTS = {
    "conv[8,16] pool2": conv(channels=[8, 16], pool=2),
    "conv[16,32] stride2 pool2": conv(channels=[16, 32], stride=2, pool=2),
    "conv[16,32,64] separable": conv(channels=[16, 32, 64], separable=True),
    "conv[16,32] pool2": conv(channels=[16, 32], pool=2),
}


def maps(name: str, weight: float) -> list[dict]:
    """A map loss: placed on each modality's last convolutional map through the models' feature points."""
    return [{"name": name, "weight": weight}]


# candidate methods (weights: the method table's choices on validation, benchmarks/results/methods.md)
METHODS = {
    "kd": [{"name": "kd", "weight": 1.0, "temperature": 4.0}],
    "dist": [{"name": "dist", "weight": 1.0}],
    "at": maps("at", 10.0),
    "nst": maps("nst", 0.5),
}
#: the ``shipped`` protocol's one distillation method: the packaged student recipe
RECIPE = "recipe"


def teacher_for(seed: int, args, data) -> torch.nn.Module:
    """The packaged teacher recipe trained with ``seed``, or the finished one that a demo or an
    earlier run trained with the same recipe, data and seed (``$MMDISTILL_CACHE/teachers``)."""
    raw = apply_overrides(recipe("av_digits_teacher"), [f"seed={seed}", f"device={args.device}",
                                                        "train.progress=false", *args.overrides])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "teacher"
        train_or_reuse_teacher(parse_config(raw), data, folder, print, reuse=True)
        return load_checkpoint(folder / "best.pt", api.resolve_device(args.device))[0]


def student_config(seed: int, args):
    return parse_config(apply_overrides(plain_student_recipe(), [
        f"seed={seed}", f"device={args.device}", "train.progress=false", f"train.epochs={args.epochs or 20}",
        *args.overrides]))


def shipped_recipes(student: str, seed: int, args) -> tuple[dict, dict]:
    """(distillation recipe, scratch twin): the packaged student recipe with ``student``'s encoders,
    and its twin as the demo builds it (:func:`mmdistill.demo.scratch_recipe`, :data:`~mmdistill.demo.SCRATCH_TWIN`)."""
    raw = apply_overrides(recipe("av_digits_student"), [
        f"seed={seed}", f"device={args.device}", "train.progress=false",
        *([f"train.epochs={args.epochs}"] if args.epochs else []), *args.overrides])
    # in the recipe's modality order: the order the encoders are built in decides their initial weights,
    # so the packaged student's rows are the demo's own runs
    raw["model"]["encoders"] = {m: copy.deepcopy(STUDENTS[student]["encoders"][m]) for m in raw["model"]["encoders"]}
    return raw, scratch_recipe(raw, SCRATCH_TWIN)


def train_shipped(args, out: Path, runs: list[dict]) -> None:
    """The ``shipped`` protocol: per student and seed, the scratch twin and the packaged recipe; the
    runs already in ``runs`` (a part started again) are skipped.

    Each run writes its run directory under ``<part>.runs/`` beside the part file, with the seed's
    teacher copied there (:func:`_common.runs_folder`), so a part stopped in the middle of a run
    continues that run from its last complete epoch when started again; a run's folder is removed
    once its row is in the part file."""
    done = {(r["student"], r["method"], r["seed"]) for r in runs}
    for seed in args.seeds:
        todo = [(s, m) for s in args.students or list(STUDENTS) for m in ("scratch", RECIPE) if (s, m, seed) not in done]
        folder = runs_folder(out) / f"seed{seed}"
        if not todo:  # (a folder left by a process stopped after its last row was written goes too)
            remove_runs(folder)
            continue
        data, teacher = packaged_teacher([f"seed={seed}", f"device={args.device}", "train.progress=false",
                                             *args.overrides], folder / "teacher")
        if ("teacher", "teacher", seed) not in done:
            runs.append({"student": "teacher", "method": "teacher", "seed": seed,
                         "params": teacher["model"]["params"], "accuracy": teacher["model"]["accuracy"],
                         "teacher_seed": seed, "machine": machine()})
        for student, method in todo:
            distill_raw, twin_raw = shipped_recipes(student, seed, args)
            distill_raw["distill"]["teacher"]["checkpoint"] = teacher["checkpoint"]
            start = time.perf_counter()
            run_folder = folder / f"{student}_{method}".replace(" ", "_")
            summary, model, resumed = resumable_run(twin_raw if method == "scratch" else distill_raw, run_folder, data)
            epochs = distill_raw["train"]["epochs"]
            runs.append({"student": student, "method": method, "seed": seed, "params": model["params"],
                         "accuracy": model["accuracy"], "val_accuracy": summary["val_accuracy"],
                         "best_epoch": summary["best_epoch"], "epochs": epochs, "steps": summary["steps"],
                         "teacher_accuracy": teacher["model"]["accuracy"],
                         "teacher_agreement": model.get("teacher_agreement"),
                         # a resumed run's time is not known (only its last process's): none is recorded
                         "seconds": None if resumed else round(time.perf_counter() - start, 1),
                         "train_seconds": None if resumed else summary.get("train_seconds"), "machine": machine(),
                         **({"resumed": True} if resumed else {})})
            r = runs[-1]
            took = "resumed" if resumed else f"{r['seconds']:.0f} s"
            print(f"seed {seed} {student:28s} {method:8s} test {r['accuracy']:.4f} val {r['val_accuracy']:.4f} "
                  f"best epoch {r['best_epoch']} of {epochs} ({took})", flush=True)
            out.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2) + "\n")
            shutil.rmtree(run_folder)
        remove_runs(folder)  # every run of this seed has its row


def run_one(student: str, method: str, seed: int, teacher, data, args) -> dict:
    scfg = student_config(seed, args)
    model = build_model(copy.deepcopy(STUDENTS[student]), data.specs, data.num_classes, seed=seed)
    start = time.perf_counter()
    if method == "scratch":
        fit = api.train(model, data, scfg.train, device=args.device, seed=seed, label=student)
    else:
        fit = api.distill(model, teacher, data, terms=METHODS[method], gamma=1.0, cfg=scfg.train,
                          device=args.device, seed=seed, label=f"{student} {method}")
    device = api.resolve_device(args.device)
    test = evaluate_model(model, data.test, device=device, latency=False, teacher=teacher)
    train_acc = evaluate_model(model, data.train, device=device, latency=False)["accuracy"]
    return {"student": student, "method": method, "seed": seed, "params": count_parameters(model),
            "accuracy": test["accuracy"], "val_accuracy": fit.best_val_accuracy, "train_accuracy": train_acc,
            "teacher_agreement": test["teacher_agreement"], "seconds": round(time.perf_counter() - start, 1)}


def chosen_methods(runs: list[dict], seed: int = 0) -> dict[str, str]:
    """student -> the distillation method with the best validation accuracy on ``seed`` (ties: listing order)."""
    best: dict[str, tuple[float, int, str]] = {}
    order = [*METHODS, RECIPE]
    for r in runs:
        if r["seed"] != seed or r["method"] in ("scratch", "teacher"):
            continue
        score = (r["val_accuracy"], -order.index(r["method"]), r["method"])
        if r["student"] not in best or score > best[r["student"]]:
            best[r["student"]] = score
    return {s: b[2] for s, b in best.items()}


#: the arguments a ``shipped`` part's file must share with the call that adds runs to it (not
#: ``--teacher-seed``: under ``shipped`` each seed reads its own seed's teacher)
SAME_ARGS = ("protocol", "epochs", "overrides", "device")


def train_part(args) -> None:
    """``search``: per student, seed 0 from scratch and with every candidate method; the method with
    the best validation accuracy; then the other seeds from scratch and with that method.
    ``shipped``: :func:`train_shipped`. Results are written after every run, so a part that is
    stopped keeps what it finished (and ``shipped`` resumes from it)."""
    out = result_file(RESULTS / args.name, ".json")  # an absolute --name writes there instead
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    if args.protocol == "shipped":
        if out.exists():
            held = json.loads(out.read_text())
            differ = {k: held["args"].get(k) for k in SAME_ARGS if held["args"].get(k) != vars(args)[k]}
            if differ:
                raise SystemExit(f"{out} holds runs made with other arguments ({differ}): give the same, or another --name")
            runs = held["runs"]
        return train_shipped(args, out, runs)
    data_by_seed, teacher = {}, None

    def setup(seed):
        nonlocal teacher
        if seed not in data_by_seed:
            tcfg = parse_config(apply_overrides(recipe("av_digits_teacher"), [f"seed={seed}", *args.overrides]))
            data_by_seed[seed] = build_data(tcfg.data, seed=seed, val_fraction=tcfg.train.val_fraction)
            teacher = teacher or teacher_for(args.teacher_seed, args, data_by_seed[seed])
            t = evaluate_model(teacher, data_by_seed[seed].test, device=api.resolve_device(args.device), latency=False)
            runs.append({"student": "teacher", "method": "teacher", "seed": seed, "params": t["params"],
                         "accuracy": t["accuracy"], "teacher_seed": args.teacher_seed})
            print(f"seed {seed} teacher {t['accuracy']:.4f}", flush=True)
        return data_by_seed[seed]

    for student in args.students or list(STUDENTS):
        for seed in args.seeds:
            if seed == args.seeds[0]:
                methods = ["scratch", *(args.methods or METHODS)]
            else:
                methods = ["scratch", chosen_methods(runs, args.seeds[0])[student]]
            for method in methods:
                data = setup(seed)  # loads the teacher on first use
                runs.append(run_one(student, method, seed, teacher, data, args))
                r = runs[-1]
                print(f"seed {seed} {student:28s} {method:8s} test {r['accuracy']:.4f} val {r['val_accuracy']:.4f} "
                      f"({r['seconds']:.0f} s)", flush=True)
                out.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2) + "\n")
    print(f"wrote {out}")


def cost(model: torch.nn.Module, specs) -> dict:
    """Parameters, MACs per sample and ONNX Runtime timings (one thread) of ``model``."""
    from mmdistill.export.profile import measure_cost

    c = measure_cost(model, specs, threads=1, repeats=300, eager=False, cuda=False)
    return {k: c[k] for k in ("params", "macs", "onnx_bytes", "onnx_ms_b1", "onnx_p95_ms_b1", "onnx_sps_b64")}


def report(args) -> None:
    """Merge result parts, measure every model's cost alone, write frontier.{json,md,png}."""
    protocols = {json.loads(Path(path).read_text())["args"].get("protocol", "search") for path in args.merge}
    if len(protocols) != 1:
        raise SystemExit(f"--merge: parts of both protocols ({', '.join(sorted(protocols))}): merge one protocol's parts")
    protocol = protocols.pop()
    # each part trains (or reuses) the same teacher: its identical rows collapse to one per seed. Under
    # ``shipped``, a part run on another machine retrains its teachers: the first row of a seed is kept,
    # and every student row records the accuracy of the teacher it read (the table names any mismatch)
    def first_teacher(first: dict, new: dict) -> dict:
        if first["method"] != "teacher":
            raise SystemExit("--merge: two parts ran the same student, method and seed: merge one run of each cell")
        return first

    runs = merge_rows([(path, load_runs(path)) for path in args.merge],
                      key=lambda r: (r["student"], r["method"], r["seed"]),
                      resolve=first_teacher if protocol == "shipped" else None)
    teacher_runs = [r for r in runs if r["method"] == "teacher"]
    tcfg = parse_config(apply_overrides(recipe("av_digits_teacher"), args.overrides))
    specs_data = build_data(tcfg.data, seed=0, val_fraction=tcfg.train.val_fraction)
    specs, k = specs_data.specs, specs_data.num_classes
    costs = {}
    measured = {r["student"] for r in runs}  # the students these parts trained, not every one known
    for name, mcfg in [("teacher", tcfg.model.model_dump()), *((s, c) for s, c in STUDENTS.items() if s in measured)]:
        costs[name] = cost(build_model(copy.deepcopy(mcfg), specs, k, seed=0).eval(), specs)
        print(f"{name:28s} {costs[name]}", flush=True)
    chosen = chosen_methods(runs)
    rows = []
    for r in runs:
        if r["method"] != "scratch":
            continue
        method = chosen.get(r["student"])
        pair = next((d for d in runs if d["student"] == r["student"] and d["seed"] == r["seed"]
                     and d["method"] == method), None)
        if pair is None:
            continue
        rows.append({"student": r["student"], **costs[r["student"]], "seed": r["seed"],
                     "scratch_accuracy": r["accuracy"], "distilled_accuracy": pair["accuracy"], "method": method,
                     "scratch_val_accuracy": r["val_accuracy"], "distilled_val_accuracy": pair["val_accuracy"],
                     **({"scratch_train_accuracy": r["train_accuracy"], "distilled_train_accuracy": pair["train_accuracy"]}
                        if protocol == "search" else
                        {"epochs": r["epochs"], "scratch_best_epoch": r["best_epoch"],
                         "distilled_best_epoch": pair["best_epoch"], "teacher_accuracy": pair["teacher_accuracy"]})})
    teacher_runs.sort(key=lambda r: r["seed"])
    teacher_acc = [r["accuracy"] for r in teacher_runs]
    payload = {"protocol": protocol,
               "teacher": {**costs["teacher"], "accuracy": mean_std(teacher_acc)[0], "accuracy_per_seed": teacher_acc,
                           "seeds": [r["seed"] for r in teacher_runs],
                           "teacher_seed": (teacher_runs[0]["teacher_seed"] if teacher_runs else None)
                           if protocol == "search" else "per seed"},
               "rows": rows, "candidates": [r for r in runs if r["method"] not in ("teacher",)],
               "chosen_on_validation": chosen, "onnx_threads": 1}
    out = Path(args.out)
    result_file(out, ".json").write_text(json.dumps(payload, indent=2) + "\n")
    markdown = frontier_table(payload)
    result_file(out, ".md").write_text(markdown + "\n")
    plot(payload, result_file(out, ".png"))
    print(markdown)
    print(f"wrote {out}.json, .md and .png")


def other_teachers(payload: dict) -> list[str]:
    """``shipped``: the students whose runs read a teacher other than the seed's teacher row (a part run
    on another machine, which retrained its teachers)."""
    per_seed = dict(zip(payload["teacher"]["seeds"], payload["teacher"]["accuracy_per_seed"]))
    return list(dict.fromkeys(r["student"] for r in payload["rows"]
                              if abs(r["teacher_accuracy"] - per_seed.get(r["seed"], r["teacher_accuracy"])) > 1e-6))


def frontier_table(payload: dict) -> str:
    t = payload["teacher"]
    shipped = payload.get("protocol", "search") == "shipped"
    header = ["model", "params", "MACs", "ONNX ms (b1, p50)", "ONNX samples/s (b64)", "speed-up b1",
              "method (val)", "scratch %", "distilled %", "distilled minus scratch (seeds above)",
              "% of teacher", *(["best epochs: scratch; distilled"] if shipped else [])]
    teacher_acc = f"{100 * t['accuracy']:.2f} " + ("(mean of the seeds' teachers)" if shipped else "(one teacher)")
    lines = [["teacher", f"{t['params']:,}", f"{t['macs'] / 1e6:.2f} M", f"{t['onnx_ms_b1']:.3f}",
              f"{t['onnx_sps_b64']:,.0f}", "1.0x", "", "", teacher_acc, "", "100", *([""] if shipped else [])]]
    for student in dict.fromkeys(r["student"] for r in payload["rows"]):
        rows = [r for r in payload["rows"] if r["student"] == student]
        r0 = rows[0]
        gains = [r["distilled_accuracy"] - r["scratch_accuracy"] for r in rows]
        dist_mean = mean_std([r["distilled_accuracy"] for r in rows])[0]
        # shipped: against the mean of the teachers these runs read
        teacher = mean_std([r["teacher_accuracy"] for r in rows])[0] if shipped else t["accuracy"]
        epochs = []
        if shipped:
            late = lambda e: f"{e}*" if in_last_tenth(e, r0["epochs"]) else str(e)  # noqa: E731
            epochs = [", ".join(late(r["scratch_best_epoch"]) for r in rows) + "; "
                      + ", ".join(late(r["distilled_best_epoch"]) for r in rows) + f" (of {r0['epochs']})"]
        lines.append([student, f"{r0['params']:,}", f"{r0['macs'] / 1e6:.2f} M", f"{r0['onnx_ms_b1']:.3f}",
                      f"{r0['onnx_sps_b64']:,.0f}", f"{t['onnx_ms_b1'] / r0['onnx_ms_b1']:.1f}x", r0["method"],
                      fmt([r["scratch_accuracy"] for r in rows]), fmt([r["distilled_accuracy"] for r in rows]),
                      paired_gain(gains), f"{100 * dist_mean / teacher:.1f}", *epochs])
    if shipped:
        others = other_teachers(payload)
        note = ("Teachers: the packaged recipe trained with each student seed, as `mmdistill demo` does. Students: "
                f"{len(payload['rows'])} (student, seed) pairs, each under the packaged student recipe (recipe: "
                "its schedule, augmentation and consistent teaching from the augmented-view cache) beside the demo's "
                "scratch twin of it, with only the model swapped; % of teacher against the teachers each student's "
                "runs read; * marks a best epoch in the last tenth of the schedule (not converged)."
                + (f" Runs of {', '.join(others)} read teachers retrained on another machine (their accuracy "
                   "differs from the seed's teacher row)." if others else ""))
    else:
        note = (f"Teacher: the packaged recipe, seed {t['teacher_seed']}, fixed for every student seed. "
                f"Students: {len(payload['rows'])} (student, seed) pairs; method chosen per student on seed 0's "
                "validation accuracy among " + ", ".join(METHODS) + ".")
    note += " Cost: ONNX Runtime, CPU, one thread, batch 1 latency median and batch 64 throughput."
    return markdown_table(header, lines) + "\n\n" + note


def plot(payload: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    students = list(dict.fromkeys(r["student"] for r in payload["rows"]))
    points = []
    for student in students:
        rows = [r for r in payload["rows"] if r["student"] == student]
        points.append((rows[0]["onnx_ms_b1"], 100 * mean_std([r["scratch_accuracy"] for r in rows])[0],
                       100 * mean_std([r["distilled_accuracy"] for r in rows])[0], student))
    points.sort()
    ax.scatter([p[0] for p in points], [p[1] for p in points], marker="o", label="from scratch", zorder=3)
    label = ("distilled (the packaged recipe)" if payload.get("protocol") == "shipped"
             else "distilled (method chosen on validation)")
    ax.scatter([p[0] for p in points], [p[2] for p in points], marker="s", label=label, zorder=3)
    for x, scratch, distilled, name in points:
        ax.plot([x, x], [scratch, distilled], color="grey", linewidth=1, zorder=2)
        ax.annotate(name, (x, max(scratch, distilled)), fontsize=7, xytext=(4, 4), textcoords="offset points")
    t = payload["teacher"]
    ax.plot([t["onnx_ms_b1"]], [100 * t["accuracy"]], "k*", markersize=12, label="teacher")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("ONNX Runtime latency, batch 1, one thread (ms, log scale)")
    ax.set_ylabel("AV-Digits hard test accuracy (%, mean of seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--students", nargs="+", choices=list(STUDENTS), default=None)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                        help="candidate methods (default: all)")
    parser.add_argument("--teacher-seed", type=int, default=0)
    parser.add_argument("--protocol", choices=("search", "shipped"), default="search",
                        help="search: choose each student's method on validation at --epochs (default 20); "
                             "shipped: the packaged student recipe at its own schedule (module docstring)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="student epochs (default: 20 under search, the recipe's under shipped)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every recipe")
    parser.add_argument("--name", default="frontier_part")
    parser.add_argument("--merge", nargs="+", default=None, help="merge result parts, measure cost, write the table")
    parser.add_argument("--out", default=str(RESULTS / "frontier"), help="with --merge: the .json/.md/.png path, no suffix")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.merge:
        report(args)
    else:
        train_part(args)


if __name__ == "__main__":
    main()
