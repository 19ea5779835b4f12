"""The ``mmdistill`` command line: a thin layer over :mod:`mmdistill.runs` and :mod:`mmdistill.demo`.

User errors (bad config, bad data, missing checkpoint) print one line and exit with code 2;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import MMDistillError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multimodal knowledge distillation: train a teacher, distil it into a small student.")
console = Console()
err_console = Console(stderr=True)

OutOpt = typer.Option(..., "--out", help="Run directory to create.")
SetOpt = typer.Option(None, "--set", help="Override a config key: key.path=value (repeatable).")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu or cuda (overrides the config).")
RootOpt = typer.Option(None, "--data-root", help="Data root (overrides MMDISTILL_DATA and the config).")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace an existing run directory.")


def _config(path: Path, overrides, device, data_root):
    from .config import load_config

    overrides = list(overrides or [])
    if device:
        overrides.append(f"device={device}")
    if data_root:
        overrides.append(f"data.root={data_root}")
    return load_config(path, overrides)


def _print_metrics(title: str, rows: dict[str, dict]) -> None:
    table = Table(title=title)
    for col in ("", "accuracy", "macro-F1", "ECE", "params", "latency ms"):
        table.add_column(col, justify="right" if col else "left")
    for name, m in rows.items():
        table.add_row(name, f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}", f"{m['ece']:.4f}",
                      f"{m['params']:,}", f"{m.get('latency_ms', float('nan')):.3f}")
    console.print(table)


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory to create."),
         quick: bool = typer.Option(False, "--quick", help="Few epochs: finishes in about a minute."),
         seed: int = typer.Option(0, "--seed"),
         device: str = typer.Option("auto", "--device"),
         data_root: Optional[str] = RootOpt, overwrite: bool = OverwriteOpt):
    """Train a teacher on AV-Digits hard, a student from scratch, and a distilled student."""
    from .demo import print_summary, run_demo

    summary = run_demo(out, quick=quick, seed=seed, device=device, data_root=data_root, overwrite=overwrite,
                       log=console.print)
    print_summary(summary, console)
    console.print(f"wrote {out / 'summary.json'}")


@app.command("train")
def train_cmd(config: Path = typer.Argument(..., help="YAML recipe."), out: Path = OutOpt,
              set_: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt,
              data_root: Optional[str] = RootOpt, overwrite: bool = OverwriteOpt):
    """Train a model with cross-entropy (e.g. a teacher)."""
    from .runs import run_train

    summary = run_train(_config(config, set_, device, data_root), out, overwrite=overwrite)
    _print_metrics(f"test metrics ({out})", {"model": summary["model"]})


def _loss_terms(specs: list[str], encoders: dict) -> list[dict]:
    """``NAME[:WEIGHT]`` -> loss terms. A feature loss reads the layer its class names
    (``default_layer``): the fused embedding, or one term per modality of the student (``encoders``,
    its model config's encoders) on that modality's embedding or last convolutional map."""
    from .errors import ConfigError
    from .losses import LOSSES

    terms = []
    for spec in specs:
        name, _, weight = spec.partition(":")
        try:
            term = {"name": name, "weight": float(weight) if weight else 1.0}
        except ValueError:
            raise ConfigError(f"--loss {spec}: the weight must be a number") from None
        loss = LOSSES.get(name)
        if loss.inputs != "features":
            terms.append(term)
        elif loss.default_layer == "fusion":
            terms.append({**term, "student": "fusion", "teacher": "fusion"})
        else:
            for modality, encoder in encoders.items():
                maps = loss.default_layer == "maps" and encoder.type == "conv"
                path = f"encoders.{modality}" + (".features" if maps else "")
                terms.append({**term, "student": path, "teacher": path})
    return terms


@app.command("distill")
def distill_cmd(config: Path = typer.Argument(..., help="YAML recipe naming the teacher checkpoint."),
                out: Path = OutOpt, set_: Optional[List[str]] = SetOpt, device: Optional[str] = DeviceOpt,
                data_root: Optional[str] = RootOpt, overwrite: bool = OverwriteOpt,
                loss: Optional[List[str]] = typer.Option(
                    None, "--loss", help="NAME[:WEIGHT] (repeatable): replaces the config's loss terms; feature "
                                         "losses read the layers the method table uses (at, nst, sp: "
                                         "each modality's conv map; fitnet, vid: each modality's "
                                         "embedding; the others: the fused embedding).")):
    """Distil a trained teacher into the config's student."""
    from .config import parse_config
    from .runs import run_distill

    cfg = _config(config, set_, device, data_root)
    if loss:
        raw = cfg.model_dump()
        seen = cfg.model.modalities or list(cfg.model.encoders)
        raw["distill"]["terms"] = _loss_terms(loss, {m: cfg.model.encoders[m] for m in seen})
        cfg = parse_config(raw, str(config))
    summary = run_distill(cfg, out, overwrite=overwrite, config_path=config)
    teachers = summary.get("teachers", {"teacher": summary["teacher"]})
    _print_metrics(f"test metrics ({out})", {**teachers, "student": summary["student"]})
    console.print(f"agreement with {next(iter(teachers))}: {summary['student']['teacher_agreement']:.4f}")
    if "ensemble" in summary:
        weights = ", ".join(f"{n} {w:.3f}" for n, w in summary["ensemble"]["mean_weight"].items())
        console.print(f"mean teacher weight ({summary['ensemble']['strategy']}): {weights}; "
                      f"per sample in {summary['ensemble']['file']}")


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
             corrupt_seed: int = typer.Option(0, "--corrupt-seed", help="Seed of the corruptions' randomness.")):
    """Evaluate a checkpoint; writes OUT/metrics.json."""
    from .runs import run_evaluate

    metrics = run_evaluate(checkpoint, out, split=split, drop=drop or [], data_root=data_root, device=device,
                           overwrite=overwrite, all_subsets=all_subsets, corrupt=corrupt or [],
                           corrupt_seed=corrupt_seed)
    dropped = f", without {', '.join(drop)}" if drop else ""
    corrupted = f", corrupted by {', '.join(corrupt)}" if corrupt else ""
    _print_metrics(f"{split} metrics{dropped}{corrupted}", {checkpoint.name: metrics})
    if all_subsets:
        table = Table(title=f"{split} accuracy by modalities present")
        table.add_column("modalities")
        table.add_column("accuracy", justify="right")
        for subset, acc in metrics["subsets"].items():
            table.add_row(subset, f"{acc:.4f}")
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
    """List every registered distillation loss."""
    from .losses import LOSSES

    table = Table(title="distillation losses")
    table.add_column("name")
    table.add_column("reads (with --loss)")
    table.add_column("description")
    for name, cls in LOSSES.items():
        table.add_row(name, "logits" if cls.inputs == "logits" else f"features: {cls.default_layer}", cls.describe())
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=False)
    except MMDistillError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except FloatingPointError as err:
        err_console.print(f"[red]error:[/red] training diverged: {err}", highlight=False, soft_wrap=True)
        sys.exit(3)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as err:  # click's own usage errors carry an exit code and a message
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
