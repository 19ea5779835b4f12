"""Shared helpers of the benchmark scripts: mean +- std, markdown tables, result files, measuring a model."""
from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from mmdistill import api
from mmdistill.config import apply_overrides, parse_config
from mmdistill.data import build_data
from mmdistill.evaluate import evaluate_model
from mmdistill.models import count_parameters

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def small_recipe(role: str) -> dict:
    """The method-table setup's recipe (``teacher`` or ``student``): configs/av_digits_small_*.yaml,
    the demo's recipes before the accuracy-cost frontier, kept so the method, KD-gap and multimodal
    tables reproduce."""
    import yaml

    return yaml.safe_load((CONFIGS / f"av_digits_small_{role}.yaml").read_text())


#: the ``train`` keys of the packaged AV-Digits student recipe's teaching scheme (chosen by demo_recipe.py)
TEACHING = ("augment", "augment_teacher", "view_cache")


def plain_student_recipe() -> dict:
    """The packaged AV-Digits student recipe without its teaching scheme (:data:`TEACHING`) and at
    the 20 epochs it had before demo_recipe.py chose that scheme: the base of the benchmarks that
    choose their own training (demo_recipe's candidates, the frontier, label efficiency), so their
    committed results reproduce."""
    from mmdistill.demo import recipe

    raw = recipe("av_digits_student")
    for key in TEACHING:
        raw["train"].pop(key, None)
    raw["train"]["epochs"] = 20
    return raw


def machine() -> dict:
    """Where a benchmark row ran: the CPU (model name, family/model/stepping), logical cores, torch
    version and threads. Teacher training is not bit-reproducible from one machine to another, so a
    row's numbers are only comparable to the sample with rows from the same machine."""
    import os
    import platform

    import torch

    cpu = {"name": platform.processor() or platform.machine()}
    info = Path("/proc/cpuinfo")
    if info.is_file():
        fields = dict(line.split(":", 1) for line in info.read_text().split("\n\n")[0].splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        cpu = {"name": fields.get("model name", cpu["name"]),
               **{k.replace(" ", "_"): fields[k] for k in ("cpu family", "model", "stepping") if k in fields}}
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def runs_folder(result: Path) -> Path:
    """Where a benchmark keeps the run directories of its unfinished runs: ``<result>.runs/`` beside
    its result file (ignored by git), so a benchmark stopped in the middle of a run (a killed
    process, a session's end) continues that run when started again (:func:`resumable_run`)."""
    return result.with_suffix(".runs")


def packaged_teacher(overrides: list[str], folder: Path, log=print):
    """(data, teacher summary) of the packaged teacher recipe with ``overrides`` (seed, device,
    ``--set``), its run in ``folder``: kept there from an earlier call, else copied from
    ``$MMDISTILL_CACHE/teachers`` (or trained and cached) as ``mmdistill demo`` does. The summary's
    ``checkpoint`` is ``folder/best.pt``, absolute: the same path for as long as ``folder`` is kept,
    so a distillation that reads it can be resumed."""
    from mmdistill.demo import recipe, train_or_reuse_teacher
    from mmdistill.rundir import BEST, SUMMARY
    from mmdistill.runs import load_data

    tcfg = parse_config(apply_overrides(recipe("av_digits_teacher"), overrides), "teacher")
    data = load_data(tcfg)
    if (folder / SUMMARY).is_file() and (folder / BEST).is_file():
        summary = json.loads((folder / SUMMARY).read_text())
    else:
        shutil.rmtree(folder, ignore_errors=True)  # a copy or a training that was stopped
        folder.parent.mkdir(parents=True, exist_ok=True)
        summary = train_or_reuse_teacher(tcfg, data, folder, log, reuse=True)
    return data, {**summary, "checkpoint": str((folder / BEST).resolve())}


def remove_runs(folder: Path) -> None:
    """Remove ``folder``, a folder of run directories in a :func:`runs_folder` whose rows are all
    written, and the :func:`runs_folder` too once it holds nothing else."""
    shutil.rmtree(folder, ignore_errors=True)
    if folder.parent.is_dir() and not any(folder.parent.iterdir()):
        folder.parent.rmdir()


def resumable_run(raw: dict, folder: Path, data) -> tuple[dict, dict, bool]:
    """(summary, the trained model's test metrics, resumed) of the run of recipe ``raw`` (a distillation
    when it has a ``distill`` section, else training) in ``folder``: a finished run's summary is read
    back, an interrupted one (a training state after some epoch) continues bit for bit
    (:func:`mmdistill.runs.check_resumable` refuses it if ``raw`` changed), any other folder starts again."""
    from mmdistill.rundir import STATE, SUMMARY
    from mmdistill.runs import run_distill, run_train

    distill = bool(raw.get("distill"))
    key = "student" if distill else "model"
    if (folder / SUMMARY).is_file():
        summary = json.loads((folder / SUMMARY).read_text())
        return summary, summary[key], False
    resume = (folder / STATE).is_file()
    cfg = parse_config(raw, "student")
    options = {"data": data, "resume": resume, "overwrite": folder.exists() and not resume}
    summary = run_distill(cfg, folder, **options) if distill else run_train(cfg, folder, log=None, **options)
    return summary, summary[key], resume


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    m, s = mean_std(values)
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def paired_gain(gains: list[float]) -> str:
    """Mean +- std of per-seed differences (as points) and how many are above zero: "+1.03 ± 0.38 (3/3)"."""
    gain, spread = mean_std(gains)
    return f"{100 * gain:+.2f} ± {100 * spread:.2f} ({sum(g > 0 for g in gains)}/{len(gains)})"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load_runs(path: str) -> list[dict]:
    """The ``runs`` of a result file written by :func:`save`."""
    return json.loads(Path(path).read_text())["runs"]


def merge_rows(parts, key, resolve=None) -> list[dict]:
    """One row per ``key(row)`` from result parts run in parallel (``--merge``).

    ``parts`` is ``(source, rows)`` pairs, in order. A row equal to one already taken is dropped (the
    same part merged twice). A different row under a key already taken is ``resolve(taken, new)``,
    the row to keep; without ``resolve`` it is an error naming both sources, since two processes ran
    the same cell and a mean over both would count one seed twice.
    """
    taken: dict = {}
    source: dict = {}
    for name, rows in parts:
        for row in rows:
            k = key(row)
            if k not in taken:
                taken[k], source[k] = row, name
            elif taken[k] != row:
                if resolve is None:
                    raise SystemExit(f"--merge: {name}: {k} is also in {source[k]}, with other results: "
                                     f"merge one run of each cell")
                taken[k], source[k] = resolve(taken[k], row), name
    return list(taken.values())


def result_file(name: str | Path, suffix: str) -> Path:
    """The results file ``name`` + ``suffix``, ``name`` given without a suffix: a dot in it is kept
    (``parts/p_0.05_s2`` gives ``p_0.05_s2.json``, where ``Path.with_suffix`` gives ``p_0.json``)."""
    return Path(f"{Path(name)}{suffix}")


def save(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
    print(markdown)
    print(f"\nwrote {RESULTS / name}.json and .md")


def measure(model, fit, epochs: int, data, device, teacher=None) -> dict:
    """Test, validation and training accuracy (and agreement with ``teacher``) and time per epoch."""
    test = evaluate_model(model, data.test, device=device, latency=False, teacher=teacher)
    return {"params": count_parameters(model), "extra_params": fit.extra_params, "accuracy": test["accuracy"],
            "val_accuracy": fit.best_val_accuracy,
            "train_accuracy": evaluate_model(model, data.train, device=device, latency=False)["accuracy"],
            **({"teacher_agreement": test["teacher_agreement"]} if teacher is not None else {}),
            "epoch_seconds": fit.seconds / epochs}


def av_digits_setup(seed: int, args):
    """(device, teacher config, student config, data) of the method-table AV-Digits recipes for ``seed``,
    with ``args.device`` and the ``--set`` overrides in ``args.overrides`` applied."""
    common = [f"seed={seed}", f"device={args.device}", "train.progress=false", *args.overrides]
    tcfg = parse_config(apply_overrides(small_recipe("teacher"), common))
    scfg = parse_config(apply_overrides(small_recipe("student"), common))
    data = build_data(tcfg.data, seed=seed, val_fraction=tcfg.train.val_fraction)
    return api.resolve_device(args.device), tcfg, scfg, data
