"""The ``mmdistill`` command line: a thin layer over :mod:`mmdistill.runs` and :mod:`mmdistill.demo`.

Exit codes: 0 success; 2 a user error (bad config, data, checkpoint or command line, an unusable
run directory, a full or read-only disk), printed as one line naming the key, file or sample; 3 a
diverged run; 130 Ctrl-C and 143 SIGTERM (``run.json`` then says ``interrupted``). Anything else is
a bug and keeps its traceback. Messages are printed without rich markup, so ``[bold]`` or
``:name:`` in a path or key is shown as written.
"""
from __future__ import annotations

import re
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .errors import Interrupted, MMDistillError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multimodal knowledge distillation: train a teacher, distil it into a small student.")
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False, highlight=False)

OutOpt = typer.Option(..., "--out", help="Run directory to create.")
SetOpt = typer.Option(None, "--set", help="Override a config key: key.path=value (repeatable).")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu or cuda (overrides the config).")
RootOpt = typer.Option(None, "--data-root", help="Data root (overrides MMDISTILL_DATA and the config).")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace an existing run directory.")
TrustOpt = typer.Option(False, "--trust-code", help="Run the code a checkpoint names (its recorded imports: and "
                                                    "model factory), as transformers' trust_remote_code; without "
                                                    "it such a checkpoint is refused. Only for files you trust.")
ResumeOpt = typer.Option(False, "--resume", help="Continue the interrupted run in --out from its last complete "
                                                 "epoch (same config).")


def _config(path: Path, overrides, device, data_root):
    from .config import load_config

    overrides = list(overrides or [])
    if device:
        overrides.append(f"device={device}")
    if data_root:
        overrides.append(f"data.root={data_root}")
    return load_config(path, overrides)


def _print_metrics(title: str, rows: dict[str, dict]) -> None:
    table = Table(title=escape(title))
    for col in ("", "accuracy", "macro-F1", "ECE", "params", "latency ms"):
        table.add_column(col, justify="right" if col else "left")
    for name, m in rows.items():
        table.add_row(Text(name), f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}", f"{m['ece']:.4f}",
                      f"{m['params']:,}", f"{m.get('latency_ms', float('nan')):.3f}")
    console.print(table)


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory to create."),
         quick: bool = typer.Option(False, "--quick", help="Short schedules on half the training pairs: a few minutes on 2 cores."),
         seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1),
         device: str = typer.Option("auto", "--device"),
         data_root: Optional[str] = RootOpt, overwrite: bool = OverwriteOpt):
    """Train a teacher on AV-Digits hard, a student from scratch, and a distilled student."""
    from .demo import print_summary, run_demo
    from .rundir import SUMMARY

    summary = run_demo(out, quick=quick, seed=seed, device=device, data_root=data_root, overwrite=overwrite,
                       log=console.print)
    print_summary(summary, console)
    console.print(Text(f"wrote {out / SUMMARY}"))


@app.command("train")
def train_cmd(config: Path = typer.Argument(..., help="YAML recipe."), out: Path = OutOpt,
              set_: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt,
              data_root: Optional[str] = RootOpt, overwrite: bool = OverwriteOpt, resume: bool = ResumeOpt):
    """Train a model with cross-entropy (e.g. a teacher)."""
    from .runs import run_train

    summary = run_train(_config(config, set_, device, data_root), out, overwrite=overwrite, resume=resume,
                        config_path=config)
    if not summary:  # a torchrun rank other than 0: rank 0 reports
        return
    _print_metrics(f"test metrics ({out})", {"model": summary["model"]})


def _print_auto(auto: dict) -> None:
    table = Table(title=f"--auto candidates (chosen: {auto['choice']}; final model {auto['final']})")
    for col in ("candidate", "terms", "val accuracy", "best epoch"):
        table.add_column(col, justify="left" if col in ("candidate", "terms") else "right")
    for r in auto["candidates"]:
        terms = ", ".join(f"{t['name']} x{t['weight']:g} @ {t['student']}" for t in r["placed"]) or "CE only"
        table.add_row(Text(r["name"] + (" *" if r["name"] == auto["choice"] else "")), Text(terms),
                      f"{r['val_accuracy']:.4f}", str(r["best_epoch"]))
    table.add_row(Text("(teacher)"), Text("the teacher itself"), f"{auto['teacher_val_accuracy']:.4f}", "")
    console.print(table)
    if auto["teacher_no_better"]:
        console.print(Text("the teacher is no better on validation than the student trained without it: a better "
                           "teacher would help, not another loss", style="yellow"))


@app.command("distill")
def distill_cmd(config: Path = typer.Argument(..., help="YAML recipe naming the teacher checkpoint."),
                out: Path = OutOpt, set_: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt,
                data_root: Optional[str] = RootOpt, overwrite: bool = OverwriteOpt, resume: bool = ResumeOpt,
                loss: Optional[List[str]] = typer.Option(
                    None, "--loss", help="NAME[:WEIGHT] (repeatable): replaces the config's loss terms; a feature "
                                         "loss reads the feature points of its kind that the models declare "
                                         "(see `mmdistill losses`), one term per shared modality for "
                                         "per-modality kinds."),
                auto: bool = typer.Option(False, "--auto", help="Choose the method and weight on the validation "
                                          "split among none (plain CE), KD at T=2 and 4, DIST and one feature "
                                          "method; ties within 0.5 points go to none. See summary.json's auto."),
                auto_epochs: Optional[int] = typer.Option(None, "--auto-epochs", help="--auto: epochs per candidate "
                                                          "(default train.epochs; fewer: the choice is retrained "
                                                          "with train.epochs)."),
                auto_scale: Optional[List[float]] = typer.Option(None, "--auto-scale", help="--auto: multiply each "
                                                                 "candidate's weights by this (repeatable: a grid)."),
                trust_code: bool = TrustOpt):
    """Distil a trained teacher into the config's student."""
    from .auto import run_distill_command

    summary = run_distill_command(_config(config, set_, device, data_root), out, loss=loss or (), auto=auto,
                                  auto_epochs=auto_epochs, auto_scales=auto_scale or (), resume=resume,
                                  overwrite=overwrite, config_path=config, trust_code=trust_code,
                                  log=lambda line: console.print(Text(line)))
    if not summary:  # a torchrun rank other than 0: rank 0 reports
        return
    if "auto" in summary:
        _print_auto(summary["auto"])
        _print_metrics(f"test metrics ({out})", {"teacher": summary["teacher"], "student": summary["student"]})
        return
    teachers = summary.get("teachers", {"teacher": summary["teacher"]})
    _print_metrics(f"test metrics ({out})", {**teachers, "student": summary["student"]})
    console.print(Text(f"agreement with {next(iter(teachers))}: {summary['student']['teacher_agreement']:.4f}"))
    if "ensemble" in summary:
        weights = ", ".join(f"{n} {w:.3f}" for n, w in summary["ensemble"]["mean_weight"].items())
        console.print(Text(f"mean teacher weight ({summary['ensemble']['strategy']}): {weights}; "
                           f"per sample in {summary['ensemble']['file']}"))


@app.command("diagnose")
def diagnose_cmd(config: Path = typer.Argument(..., help="YAML recipe naming the teacher checkpoint and the student."),
                 out: Optional[Path] = typer.Option(None, "--out", help="Folder to write diagnose.json to."),
                 set_: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt,
                 data_root: Optional[str] = RootOpt, overwrite: bool = OverwriteOpt,
                 trial_epochs: Optional[int] = typer.Option(None, "--trial-epochs", help="Epochs of the scratch vs "
                                                            "KD trial (default: a quarter of train.epochs)."),
                 trust_code: bool = TrustOpt):
    """Predict, before the full runs, whether distillation will help; prints the evidence and a score."""
    from .diagnose import run_diagnose
    from .rundir import DIAGNOSE

    result = run_diagnose(_config(config, set_, device, data_root), out, overwrite=overwrite, config_path=config,
                          trial_epochs=trial_epochs, log=lambda line: console.print(Text(line)), trust_code=trust_code)
    table = Table(title=f"diagnose (validation split; student sees {', '.join(result['student_modalities'])})")
    table.add_column("evidence")
    table.add_column("value", justify="right")
    rows = [("teacher accuracy, all modalities", result["teacher_val_accuracy"]),
            ("teacher accuracy, student's modalities only", result["teacher_val_accuracy_student_view"]),
            ("linear probe on student's view: accuracy (true labels)", result["probe_accuracy"]),
            ("probe fitted to teacher's labels: accuracy", result["probe_teacher_accuracy"]),
            ("probe fitted to teacher's labels: agreement with teacher", result["probe_teacher_fidelity"]),
            ("label probe's agreement with teacher", result["probe_teacher_agreement"]),
            (f"{result['trial_epochs']}-epoch trial: scratch", result["trial_scratch_val_accuracy"]),
            (f"{result['trial_epochs']}-epoch trial: KD T=4", result["trial_kd_val_accuracy"])]
    for label, value in rows:
        table.add_row(Text(label), f"{value:.4f}")
    console.print(table)
    console.print(Text(f"score {result['score']:+.2f} points (mean of trial gain {result['trial_gain']:+.2f} and "
                       f"probe gain {result['probe_gain']:+.2f}): {result['verdict']}"
                       + (f"; wrote {out / DIAGNOSE}" if out else "")))


@app.command()
def evaluate(checkpoint: Path = typer.Argument(..., help="A best.pt or last.pt checkpoint."), out: Path = OutOpt,
             split: str = typer.Option("test", "--split", help="test, val or train."),
             drop: Optional[List[str]] = typer.Option(None, "--drop", help="Evaluate with this modality absent (repeatable)."),
             device: str = typer.Option("auto", "--device"), data_root: Optional[str] = RootOpt,
             overwrite: bool = OverwriteOpt,
             all_subsets: bool = typer.Option(False, "--all-subsets",
                                              help="Also report accuracy for every non-empty subset of the modalities."),
             corrupt: Optional[List[str]] = typer.Option(
                 None, "--corrupt", help="MODALITY:KIND:SEVERITY (repeatable), KIND one of gaussian_noise, occlusion, "
                                         "noise_snr, time_shift, SEVERITY 1-5; e.g. audio:noise_snr:3."),
             corrupt_seed: int = typer.Option(0, "--corrupt-seed", min=0, max=2**32 - 1,
                                              help="Seed of the corruptions' randomness."),
             cost: bool = typer.Option(True, "--cost/--no-cost", help="Also measure MACs, ONNX size and ONNX "
                                                                      "Runtime latency (exports the model)."),
             trust_code: bool = TrustOpt):
    """Evaluate a checkpoint; writes OUT/metrics.json."""
    from .runs import run_evaluate

    metrics = run_evaluate(checkpoint, out, split=split, drop=drop or [], data_root=data_root, device=device,
                           overwrite=overwrite, all_subsets=all_subsets, corrupt=corrupt or [],
                           corrupt_seed=corrupt_seed, cost=cost, trust_code=trust_code)
    dropped = f", without {', '.join(drop)}" if drop else ""
    corrupted = f", corrupted by {', '.join(corrupt)}" if corrupt else ""
    _print_metrics(f"{split} metrics{dropped}{corrupted}", {checkpoint.name: metrics})
    if cost:
        console.print(f"cost per sample: {metrics['macs']:,} MACs, ONNX Runtime {metrics['onnx_ms_b1']:.3f} ms at "
                      f"batch 1, {metrics['onnx_sps_b64']:,.0f} samples/s at batch 64 ({metrics['threads']} thread)")
    if all_subsets:
        table = Table(title=f"{split} accuracy by modalities present")
        table.add_column("modalities")
        table.add_column("accuracy", justify="right")
        for subset, acc in metrics["subsets"].items():
            table.add_row(Text(subset), f"{acc:.4f}")
        console.print(table)


@app.command()
def report(run_dirs: List[Path] = typer.Argument(..., help="Run directories (train, distill, evaluate), or folders "
                                                           "of them such as the demo's."),
           out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write."),
           title: str = typer.Option("mmdistill report", "--title")):
    """One self-contained HTML page: cost table, training curves, confusion matrices, subset accuracy."""
    from .report import write_report

    console.print(f"wrote {write_report(run_dirs, out, title=title)}")


@app.command()
def losses():
    """List every registered distillation loss and the feature points it reads."""
    from .losses import LOSSES
    from .models.points import describe_layer

    def reads(cls) -> str:
        return "logits" if cls.inputs == "logits" else describe_layer(cls.default_layer)

    table = Table(title="distillation losses")
    table.add_column("name")
    table.add_column("reads (without paths)")
    table.add_column("description")
    for name, cls in LOSSES.items():
        table.add_row(name, reads(cls), cls.describe())
    console.print(table)


@app.command("list")
def list_cmd(group: Optional[str] = typer.Argument(None, help="losses, encoders, fusions, heads, models, datasets, "
                                                             "optimisers, schedulers or strategies (default: all)."),
             config: Optional[Path] = typer.Option(None, "--config", help="Also list the entries this config's "
                                                                          "imports: register.")):
    """List every registry's entries (what a config can name) with their options and defaults."""
    import inspect

    from pydantic import BaseModel

    from .data import DATASETS
    from .distill.ensemble import STRATEGIES
    from .losses import LOSSES
    from .models import ENCODERS, FUSIONS, HEADS, MODEL_KINDS
    from .optim import OPTIMIZERS, SCHEDULERS

    registries = {r.group: r for r in (LOSSES, ENCODERS, FUSIONS, HEADS, MODEL_KINDS, DATASETS, OPTIMIZERS,
                                       SCHEDULERS, STRATEGIES)}
    if group is not None and group not in registries:
        raise typer.BadParameter(f"{group!r} is not a registry (choose from {', '.join(registries)})",
                                 param_hint="GROUP")
    if config is not None:
        _config(config, None, None, None)  # imports its imports: (the one way a user's code runs)
    for name in ([group] if group else registries):
        registry = registries[name]
        table = Table(title=f"{name} (named by {registry.key}:)" if registry.key else name)
        for col in ("name", "options (default)", "description"):
            table.add_column(col)
        for entry, builder in registry.items():
            model = registry.options(entry)
            defaults = {k: f.default.model_dump() if isinstance(f.default, BaseModel) else f.default
                        for k, f in model.model_fields.items() if not f.is_required()}  # as a config writes them
            options = ", ".join(f"{k}={defaults[k]!r}" if k in defaults else k
                                for k in model.model_fields if k != registry.key)
            doc = inspect.getdoc(builder) or ""
            table.add_row(Text(entry), Text(options), Text(" ".join(doc.split("\n\n")[0].split())))
        console.print(table)


@app.command("export")
def export_cmd(checkpoint: Path = typer.Argument(..., help="A best.pt or last.pt checkpoint."),
               out: Path = typer.Option(..., "--out", help="Export folder to create."),
               format: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
               quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: add a statically quantised "
                                                      "ONNX model calibrated on training samples."),
               data_root: Optional[str] = RootOpt, overwrite: bool = OverwriteOpt, trust_code: bool = TrustOpt):
    """Export a checkpoint (ONNX or TorchScript + model.json), checked against PyTorch on real samples."""
    from .export.bundle import export_checkpoint

    meta = export_checkpoint(checkpoint, out, format=format, quantize=quantize, data_root=data_root,
                             overwrite=overwrite, log=console.print, trust_code=trust_code)
    acc = meta["accuracy"]
    console.print(f"test accuracy: PyTorch {acc['pytorch']:.4f}, {format} {acc[format]:.4f} ({acc['samples']} samples)")
    if "quantized" in meta:
        q = meta["quantized"]
        table = Table(title=f"ONNX Runtime, CPU, {q['fp32']['threads']} thread")
        for col in ("model", "accuracy", "p50 ms b1", "p95 ms b1", "samples/s b64", "KB"):
            table.add_column(col, justify="right" if col != "model" else "left")
        for name in ("fp32", "int8"):
            r = q[name]
            size = q["fp32_bytes"] if name == "fp32" else q["bytes"]
            table.add_row(name, f"{r['accuracy']:.4f}", f"{r['onnx_ms_b1']:.3f}", f"{r['onnx_p95_ms_b1']:.3f}",
                          f"{r['onnx_sps_b64']:,.0f}", f"{size / 1024:,.1f}")
        console.print(table)
    console.print(Text(f"wrote {out}/ ({', '.join(meta['files'].values())}, model.json)"))


@app.command("predict")
def predict_cmd(export_dir: Path = typer.Argument(..., help="A folder written by `mmdistill export` (ONNX)."),
                data: Path = typer.Option(..., "--data", help="YAML recipe whose data section names the data."),
                out: Path = typer.Option(..., "--out", help="Predictions file to write (JSON lines)."),
                split: str = typer.Option("test", "--split", help="test, val or train."),
                int8: bool = typer.Option(False, "--int8", help="Use the int8 model of the export."),
                data_root: Optional[str] = RootOpt):
    """Predict with an exported model on ONNX Runtime; prints the accuracy, writes one line per sample."""
    from .export.bundle import predict_export

    result = predict_export(export_dir, data, out, split=split, data_root=data_root,
                            variant="int8" if int8 else "fp32")
    console.print(Text(f"{split} accuracy ({result['variant']}, ONNX Runtime): {result['accuracy']:.4f} "
                       f"on {result['samples']} samples; wrote {out}"))


@app.command("profile")
def profile_cmd(checkpoint: Path = typer.Argument(..., help="A checkpoint to measure."),
                out: Path = typer.Option(..., "--out", help="Folder for profile.json."),
                compare: Optional[List[Path]] = typer.Option(None, "--compare", help="Another checkpoint to "
                                                             "measure beside it (repeatable)."),
                threads: int = typer.Option(1, "--threads", min=1, max=1024,
                                            help="Intra-op threads for PyTorch and ONNX Runtime."),
                repeats: int = typer.Option(200, "--repeats", min=1, max=10**6,
                                            help="Timed runs at batch 1 (a tenth of it at batch 64)."),
                overwrite: bool = OverwriteOpt, trust_code: bool = TrustOpt):
    """Parameters, MACs, ONNX size and latency (eager PyTorch and ONNX Runtime) of checkpoints."""
    from .export.profile import COST_ROWS, column_labels, format_cost, profile_checkpoints
    from .rundir import PROFILE

    result = profile_checkpoints([checkpoint, *(compare or [])], out, threads=threads, repeats=repeats,
                                 trust_code=trust_code, overwrite=overwrite)
    models = result["models"]
    table = Table(title=f"cost per sample ({threads} thread{'s' if threads > 1 else ''}, "
                       f"{repeats} runs at batch 1 after warm-up)")
    labels = column_labels(models)  # by run (folder name, recorded role), not by file name
    table.add_column("")
    for name in labels:
        table.add_column(Text(name), justify="right")
    ratios = result.get("ratios", [])
    for name in labels[1:]:
        table.add_column(Text(f"{name}: x cheaper"), justify="right")
    for key, label, _ in COST_ROWS:
        if any(key in m for m in models):
            table.add_row(label, *(format_cost(key, m.get(key)) for m in models),
                          *(f"{r[key]:.2f}x" if key in r else "-" for r in ratios))
    console.print(table)
    console.print(Text(f"wrote {out / PROFILE}"))


_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def _error(message: object, code: int) -> int:
    """Print ``error: message`` as one line, verbatim (no markup, no emoji codes); returns ``code``."""
    text = _CONTROL.sub("", str(message))  # terminal escapes from a library's message
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if _rank():  # under torchrun, say which process
        text = f"rank {_rank()}: {text}"
    err_console.print(Text.assemble(("error:", "red"), " ", text), soft_wrap=True)
    return code


def _rank() -> int:
    from .distill.distributed import rank

    return rank()


def _usage_error(err: typer.TyperException) -> int:
    """A command-line error (unknown command or option, missing or invalid value): one line, exit 2."""
    ctx = getattr(err, "ctx", None)
    if type(err).__name__ == "NoArgsIsHelpError":  # plain ``mmdistill``: the help, as click does
        console.print(Text(ctx.get_help() if ctx is not None else err.format_message()))
        return 2
    where = f"{ctx.command_path}: " if ctx is not None else ""
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    code = getattr(err, "exit_code", 2)
    return _error(f"{where}{err.format_message()}{hint}", 2 if code in (1, 2) else code)


def _disk_error(err: OSError) -> int:
    """An OSError from the environment (disk full, read-only, permission): one line naming the file."""
    from .rundir import disk_message

    return _error(disk_message(err), 2)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def run(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` and return the exit code (see the module docstring)."""
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with command.make_context("mmdistill", args) as ctx:
            command.invoke(ctx)
        return 0
    except Interrupted as err:
        return _error(f"interrupted by {err}", err.exit_code)
    except KeyboardInterrupt:
        return _error("interrupted (Ctrl-C)", 130)
    except typer.Exit as err:  # --help, or a command's own exit
        return err.exit_code
    except typer.Abort:
        return _error("aborted", 1)
    except MMDistillError as err:
        if getattr(err, "reported_elsewhere", False):  # torchrun: the rank that failed prints it
            return 2
        return _error(err, 2)
    except typer.TyperException as err:  # click's usage errors (typer bundles its own click)
        return _usage_error(err)
    except FloatingPointError as err:
        return _error(f"training diverged: {err}", 3)
    except OSError as err:
        return _disk_error(err)


def main(argv: list[str] | None = None) -> None:
    """The ``mmdistill`` entry point: :func:`run`, exiting with its code when it is not 0.

    SIGTERM is turned into :class:`~mmdistill.errors.Interrupted` while it runs, so a run
    directory records ``interrupted`` and the process exits 143.
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        code = run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
