"""``mmdistill demo``: teacher, student from scratch and distilled student on AV-Digits ``hard``.

The recipes are the packaged ``recipes/av_digits_teacher.yaml`` and ``av_digits_student.yaml``
(also under ``configs/``). A finished teacher is kept in ``$MMDISTILL_CACHE/teachers/`` under a
key of its resolved recipe and data, so a second demo with the same recipe, data and seed reuses
it (and says so). Without the real data the demo stops with one line on how to get it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Callable

import yaml

from .config import RunConfig, apply_overrides, parse_config
from .data.root import cache_dir
from .distill.distributed import resolve_device
from .errors import DataError
from .export.bundle import export_checkpoint
from .rundir import BEST, SUMMARY, RunDir, check_run_dir, write_json
from .runs import load_data, run_distill, run_train

# the scratch twin: the student recipe without ``distill`` and without the teacher's view cache, so
# it trains on the same augmentation drawn afresh every epoch (chosen on validation over the plain,
# lr 0.01 and augmented twins by benchmarks/demo_recipe.py)
SCRATCH_TWIN = ["train.view_cache=null"]
# --quick: the same teacher and student on half the training pairs and short schedules, so that the
# whole workflow (three trainings, cost, export, report) runs in a few minutes on 2 cores. A short
# schedule cannot use the full recipe's patient teaching (augmented views need hundreds of epochs),
# so the quick student's recipe was chosen on validation at its own budget (benchmarks/demo_recipe.py,
# docs/results.md): DIST plus cross-entropy on unaugmented inputs, the teacher's outputs computed
# once; its twin is plain scratch on the same inputs. A 4-epoch teacher was too weak to teach at 12
# epochs, so the quick teacher trains 8.
QUICK_TEACHER = ["train.epochs=8", "data.pairs_per_recording=2"]
QUICK_STUDENT = ["train.epochs=12", "data.pairs_per_recording=2", "train.view_cache=null", "train.augment={}",
                 "distill.terms=[{name: dist, weight: 1.0}]"]


def recipe(name: str) -> dict:
    """A packaged recipe as a raw dict (``av_digits_teacher``, ``av_digits_student``, ...)."""
    return yaml.safe_load(resources.files("mmdistill.recipes").joinpath(f"{name}.yaml").read_text())


def run_demo(out: str | Path, *, quick: bool = False, seed: int = 0, device: str = "auto",
             data_root: str | None = None, overwrite: bool = False, progress: bool = True,
             log: Callable = print, overrides: list[str] = (), reuse_teacher: bool = True) -> dict:
    """The demo: :func:`run_comparison` on the packaged AV-Digits recipes."""
    common = [f"seed={seed}", f"device={device}", f"train.progress={progress}"]
    if data_root:
        common.append(f"data.root={data_root}")
    teacher_raw = apply_overrides(recipe("av_digits_teacher"), common + (QUICK_TEACHER if quick else []) + list(overrides))
    student_raw = apply_overrides(recipe("av_digits_student"), common + (QUICK_STUDENT if quick else []) + list(overrides))
    extra = {"dataset": "av_digits", "synthetic": False, "quick": quick}
    return run_comparison(teacher_raw, student_raw, out, overwrite=overwrite, log=log, extra=extra,
                          reuse_teacher=reuse_teacher, scratch_overrides=SCRATCH_TWIN)


def teacher_key(cfg: RunConfig, data_info: dict) -> str:
    """A key of everything that decides a trained teacher: its resolved recipe (less the device, the
    progress bar and the loader's worker count) and the data it was trained on."""
    config = cfg.model_dump(exclude={"device": True, "train": {"progress", "workers"}})
    text = json.dumps({"config": config, "data": _rounded(data_info)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _rounded(value):
    """Floats to 6 significant digits, recursively: statistics such as the standardisation means
    differ in their last bits with the number of threads that computed them."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def train_or_reuse_teacher(cfg: RunConfig, data, folder: Path, log: Callable, reuse: bool) -> dict:
    """Train the teacher into ``folder``, or copy a finished run with the same key from the cache."""
    cached = cache_dir() / "teachers" / teacher_key(cfg, data.info)
    if reuse and (cached / SUMMARY).is_file() and (cached / BEST).is_file():
        log(f"reusing the teacher trained earlier with the same recipe, data and seed ({cached}; "
            "delete it to train again)")
        shutil.copytree(cached, folder)
        summary = json.loads((folder / SUMMARY).read_text())
        summary["checkpoint"] = str(folder / BEST)
        summary["reused_from"] = str(cached)
        return summary
    summary = run_train(cfg, folder, data=data, role="teacher")
    if reuse:
        tmp = cached.with_name(cached.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp)
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)
    return summary


def scratch_recipe(student_raw: dict, overrides=()) -> dict:
    """The scratch twin of a distillation recipe: ``student_raw`` without its ``distill`` section,
    plus ``overrides`` (a copy: ``student_raw`` is left as it was)."""
    return apply_overrides({k: v for k, v in student_raw.items() if k != "distill"}, list(overrides))


def run_comparison(teacher_raw: dict, student_raw: dict, out: str | Path, *, overwrite: bool = False,
                   log: Callable = print, extra: dict | None = None, reuse_teacher: bool = False,
                   scratch_overrides: list[str] = ()) -> dict:
    """Teacher, student from scratch and distilled student from two raw recipes, in ``out/``.

    ``student_raw`` is a distillation recipe; the scratch student is the same recipe without its
    ``distill`` section (plus ``scratch_overrides``, e.g. its own validation-chosen learning rate),
    and the distilled one reads ``out/teacher/best.pt``. Writes and returns
    ``summary.json`` with each model's test metrics and the fraction of the scratch-to-teacher
    accuracy gap that distillation closes.
    """
    out = Path(out)
    check_run_dir(out, overwrite=overwrite)  # before any data is loaded or model trained
    student_raw = json.loads(json.dumps(student_raw))
    teacher_cfg = parse_config(teacher_raw, "teacher")
    scratch_cfg = parse_config(scratch_recipe(student_raw, scratch_overrides), "student")
    from .guard import check_out, config_inputs

    check_out(out, config_inputs(teacher_cfg) + config_inputs(scratch_cfg))  # e.g. --out holding the data root
    resolve_device(teacher_cfg.device)  # --device cuda without CUDA: the one-line error, before any work
    try:
        data = load_data(teacher_cfg)
    except DataError as err:
        raise DataError(f"the demo needs the real AV-Digits data (FSDD and MNIST): {err}. Download them into a "
                        "folder and pass --data-root DIR or set MMDISTILL_DATA (README, 'Data'); an online machine "
                        "downloads them by itself") from None
    # one build serves all three runs when they ask for the same data
    same = lambda cfg: (cfg.data, cfg.seed, cfg.train.val_fraction) == (  # noqa: E731
        teacher_cfg.data, teacher_cfg.seed, teacher_cfg.train.val_fraction)
    student_data = data if same(scratch_cfg) else None
    with RunDir(out, kind="demo", overwrite=overwrite, config={"teacher": teacher_raw, "student": student_raw}) as run:
        log("[bold]1/3[/bold] training the teacher")
        teacher = train_or_reuse_teacher(teacher_cfg, data, run / "teacher", log, reuse_teacher)
        log("[bold]2/3[/bold] training the student from scratch")
        scratch = run_train(scratch_cfg, run / "student_scratch", data=student_data, role="scratch")
        student_raw["distill"]["teacher"]["checkpoint"] = str(run / "teacher" / BEST)
        log("[bold]3/3[/bold] distilling the teacher into the student")
        distilled = run_distill(parse_config(student_raw, "student"), run / "student_distilled", data=student_data)

        def entry(metrics: dict) -> dict:
            keys = ("accuracy", "macro_f1", "ece", "params", "latency_ms", "teacher_agreement", "extra_params")
            return {k: metrics[k] for k in keys if k in metrics}

        summary = {
            "dataset": teacher["dataset"]["dataset"],
            "data": teacher["dataset"],
            "seed": teacher_raw.get("seed", 0),
            "distillation": {"gamma": student_raw["distill"].get("gamma", 1.0), "terms": student_raw["distill"]["terms"]},
            "teacher": entry(teacher["model"]),
            "student_scratch": entry(scratch["model"]),
            "student_distilled": entry(distilled["student"]),
            **({"scratch_overrides": list(scratch_overrides)} if scratch_overrides else {}),
            "teacher_train_seconds": teacher.get("train_seconds"),
            "teacher_reused_from": teacher.get("reused_from"),
            **(extra or {}),
        }
        gap = summary["teacher"]["accuracy"] - summary["student_scratch"]["accuracy"]
        gain = summary["student_distilled"]["accuracy"] - summary["student_scratch"]["accuracy"]
        summary["gap_closed"] = gain / gap if gap > 0 else None
        log("exporting the distilled student and measuring cost (ONNX Runtime, one thread)")
        export = export_checkpoint(run / "student_distilled" / BEST, run / "student_distilled" / "export",
                                   data_root=teacher_cfg.data.root, log=lambda *_: None)
        _add_cost(summary, run.path, data.specs,
                  student_onnx=run / "student_distilled" / "export" / export["files"]["onnx"])
        summary["export"] = {"folder": str(run / "student_distilled" / "export"),
                             "max_abs_diff": max(export["parity"]["max_abs_diff"].values()),
                             "onnx_accuracy": export["accuracy"]["onnx"]}
        write_json(run / SUMMARY, summary)
    from .report import write_report
    log(f"wrote {write_report([out], out / 'report.html', title='mmdistill demo report')}")
    return summary


COST_KEYS = ("macs", "onnx_ms_b1", "onnx_sps_b64")


def _add_cost(summary: dict, folder: Path, specs, student_onnx: Path | None = None) -> None:
    """MACs and ONNX Runtime latency (batch 1, one thread) of the teacher and the student, measured
    one after the other in this process; the scratch and the distilled student share one
    architecture, hence one cost. ``student_onnx``: the distilled student's export, timed as it
    ships instead of exported a second time."""
    from .checkpoint import load_checkpoint
    from .export.profile import measure_cost

    for key, run in (("teacher", "teacher"), ("student", "student_distilled")):
        model = load_checkpoint(folder / run / BEST)[0]
        cost = measure_cost(model, specs, threads=1, repeats=300, eager=False, cuda=False,
                            onnx_path=student_onnx if key == "student" else None)
        targets = ("teacher",) if key == "teacher" else ("student_scratch", "student_distilled")
        for target in targets:
            summary[target].update({k: cost[k] for k in COST_KEYS})
    t, s = summary["teacher"], summary["student_distilled"]
    summary["student_vs_teacher"] = {"params": t["params"] / s["params"], "macs": t["macs"] / s["macs"],
                                     "onnx_ms_b1": t["onnx_ms_b1"] / s["onnx_ms_b1"],
                                     "accuracy": s["accuracy"] / t["accuracy"]}


def print_summary(summary: dict, console) -> None:
    from rich.table import Table

    title = f"mmdistill demo on {summary['dataset']}" + (" (quick)" if summary.get("quick") else "")
    table = Table(title=title)
    # macro-F1 and calibration are in summary.json and the report; the table fits 80 columns
    for col in ("model", "accuracy", "params", "MACs", "ONNX ms (batch 1)", "agrees with teacher"):
        table.add_column(col, justify="left" if col == "model" else "right")
    labels = {"teacher": "teacher", "student_scratch": "scratch", "student_distilled": "distilled"}
    for key, label in labels.items():
        m = summary[key]
        agreement = f"{m['teacher_agreement']:.4f}" if "teacher_agreement" in m else ""
        macs = f"{m['macs'] / 1e6:.2f} M" if "macs" in m else ""
        onnx = f"{m['onnx_ms_b1']:.3f}" if "onnx_ms_b1" in m else ""
        table.add_row(label, f"{m['accuracy']:.4f}", f"{m['params']:,}", macs, onnx, agreement)
    console.print(table)
    ratio = summary.get("student_vs_teacher")
    if ratio:
        console.print(f"the student has {ratio['params']:.1f}x fewer parameters and {ratio['macs']:.1f}x fewer MACs, "
                      f"runs {ratio['onnx_ms_b1']:.1f}x faster (ONNX Runtime, batch 1, one thread) and keeps "
                      f"{100 * ratio['accuracy']:.1f}% of the teacher's accuracy")
    gain = summary["student_distilled"]["accuracy"] - summary["student_scratch"]["accuracy"]
    if gain > 0:
        closed = summary.get("gap_closed")
        console.print(f"distillation helps: +{100 * gain:.2f} points over the same student trained from scratch"
                      + (f", closing {100 * closed:.1f}% of the gap to the teacher" if closed is not None else ""))
    else:
        console.print(f"distillation did not help on this seed: {100 * gain:+.2f} points against the same student "
                      "trained from scratch")
    if summary.get("quick"):
        console.print("--quick shows the workflow on short schedules, where the students are far from converged; "
                      "the full demo (without --quick) measures what distillation is worth (docs/results.md)")
