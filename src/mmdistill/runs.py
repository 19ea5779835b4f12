"""Config-driven runs that write a run directory: ``train``, ``distill``, ``evaluate``.

Each loads and validates everything it needs (config, data, teacher checkpoint) before it
creates the run directory, so a user error never leaves a half-written run behind: the run
directory itself is checked first (:func:`~mmdistill.rundir.check_run_dir`), then the data against
the config (:func:`~mmdistill.distill.engine.check_train_options`) and every checkpoint against the data
(:func:`~mmdistill.checkpoint_data.check_checkpoint_data`).

Run directory contents: ``run.json`` (status, command, resolved config), ``metrics.jsonl`` (one
line per epoch), ``best.pt`` / ``last.pt`` (weights-only checkpoints), ``metrics.json`` (test
metrics) and ``summary.json`` (with the training budget: ``best_epoch``, ``epochs_run``,
``max_epochs``, ``steps``, ``stopped_early``, ``converged``; see
:class:`~mmdistill.distill.engine.FitResult`), the last two written only on success, and ``state.pt``, the
training state after the last complete epoch, from which ``resume=True`` continues the run (see
:func:`check_resumable`).
"""
from __future__ import annotations

import json
import sys
from itertools import combinations
from pathlib import Path
from typing import Sequence

from torch import nn

from .api import distill, make_terms, train
from .checkpoint import load_checkpoint, save_checkpoint
from .checkpoint_data import check_checkpoint_data, checkpoint_data, data_meta
from .config import RunConfig
from .data import build_data
from .data.corruptions import Corruption, corrupter
from .data.dataset import DataSplits
from .distill import backends, distributed
from .distill.distributed import resolve_device
from .distill.engine import TIME_KINDS, Trainer, check_train_options
from .errors import CheckpointError, ConfigError, MMDistillError
from .evaluate import accuracy, evaluate_model, predict
from .models.kinds import build as build_model
from .rundir import RunDir, check_run_dir, read_record, write_json, write_text

def _saver(cfg: RunConfig, data: DataSplits, role: str):
    """A checkpoint writer recording everything needed to rebuild the model and its data."""
    meta = {"role": role, **data_meta(cfg, data)}

    def save(path, model, extra):
        save_checkpoint(path, model, model_config=cfg.model.model_dump(), specs=data.specs,
                        num_classes=data.num_classes, meta={**meta, **extra}, imports=cfg.imports)

    return save


def _finish(run: RunDir, summary: dict, metrics: dict, fit=None, label: str = "train") -> dict:
    write_json(run / "metrics.json", metrics)
    write_json(run / "summary.json", summary)
    warning = fit.warning(label) if fit is not None else None
    if warning:  # the run finished, but validation was still improving when its budget ran out
        print(warning, file=sys.stderr, flush=True)
    return summary


def load_data(cfg: RunConfig, data: DataSplits | None = None) -> DataSplits:
    """The data ``cfg`` names; ``data``, when given, must have been built from the same config."""
    return data if data is not None else build_data(cfg.data, seed=cfg.seed, val_fraction=cfg.train.val_fraction)


#: config keys that do not change what a run computes, so a resumed run may differ in them
RESUME_IGNORES = ("train.progress", "train.workers")


def _first_difference(old, new, key: str = ""):
    """(dotted key, old value, new value) of the first difference between two JSON values, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            sub = f"{key}.{k}" if key else str(k)
            if sub in RESUME_IGNORES:
                continue
            found = _first_difference(old.get(k), new.get(k), sub)
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            found = _first_difference(a, b, f"{key}[{i}]")
            if found:
                return found
        return None
    return None if old == new else (key, old, new)


def check_resumable(cfg: RunConfig, out: str | Path, *, overwrite: bool = False) -> None:
    """Refuse (one line) unless ``out`` holds an unfinished run of exactly ``cfg`` with a training state
    (the run directory checks of :func:`~mmdistill.rundir.check_run_dir` included).

    The recorded config must equal ``cfg`` in every key but ``train.progress``; ``train.epochs``
    too, because the learning-rate schedule and loss warm-ups depend on it: a resumed run is the
    run that was started, bit for bit, not a longer one.
    """
    out = Path(out)
    if overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: give one of them")
    check_run_dir(out, resume=True)  # an unfinished mmdistill run, locked by no live process
    info = read_record(out)
    if not isinstance(info.get("config"), dict):
        raise MMDistillError(f"{out / 'run.json'}: not a train or distill run record; nothing to resume")
    if not (out / Trainer.STATE_FILE).is_file():
        raise MMDistillError(f"{out}: no training state to resume from ({Trainer.STATE_FILE} is missing: the run "
                             f"stopped before its first epoch ended); start it again with --overwrite")
    now = json.loads(json.dumps(cfg.model_dump(), default=str))
    diff = _first_difference(info["config"], now)
    if diff:
        key, old, new = diff
        raise ConfigError(f"{key}: {json.dumps(new)} in the config but {json.dumps(old)} in the run in {out}; "
                          f"a run resumes only with the config it started with")


def run_inputs(cfg: RunConfig, config_path: str | Path | None = None) -> list:
    """What a train or distill run reads (:class:`~mmdistill.guard.Input`): the config file, its
    data files and its teachers' checkpoints."""
    from .guard import Input, config_inputs

    found = config_inputs(cfg, config_path)
    if cfg.distill is not None:
        found += [Input("teacher checkpoint", resolve_checkpoint(t.checkpoint, config_path))
                  for t in cfg.distill.teacher_list()]
    return found


def _prepare(cfg: RunConfig, out, *, overwrite: bool = False, resume: bool = False, data: DataSplits | None = None,
             config_path: str | Path | None = None):
    """The checks every run makes before anything is written: that ``out`` is none of the run's
    inputs (:func:`run_inputs`, :func:`mmdistill.guard.check_out`), the run directory (or the run to
    resume; none when ``out`` is None), the device, the data, and the training options against
    the data. Returns (device, data)."""
    from .guard import check_out

    check_out(out, run_inputs(cfg, config_path))
    if resume:
        check_resumable(cfg, out, overwrite=overwrite)
    elif out is not None:
        check_run_dir(out, overwrite=overwrite)
    device = distributed.device_for(resolve_device(cfg.device))
    data = load_data(cfg, data)
    check_train_options(cfg.train, data.specs)
    return device, data


def _record_backends(run, device, cfg: RunConfig) -> None:
    """``run.json``'s ``backends``: the torch.backends settings the fit runs with (rank 0 writes)."""
    if distributed.is_main():
        run.info["backends"] = backends.settings(device, cfg.train.deterministic)
        write_json(run / "run.json", run.info)


@distributed.launch
def run_train(cfg: RunConfig, out: str | Path, *, overwrite: bool = False, data: DataSplits | None = None,
              resume: bool = False, log=print, config_path: str | Path | None = None) -> dict:
    """Train ``cfg.model`` with cross-entropy; the run directory holds its checkpoints and metrics.

    Only the labelled training samples train it; with unlabelled ones in the data, ``log`` says
    how many of each, and ``summary.json`` records them (``labelled``).
    ``resume``: continue the interrupted run in ``out`` from its last complete epoch.
    ``config_path``: the config file, an input ``out`` must not clobber (as the data files).
    Under torchrun (see :mod:`mmdistill.distill.distributed`) only rank 0 writes and evaluates;
    the other ranks return ``{}``."""
    with distributed.agreed():  # a user error on any rank stops every rank
        device, data = _prepare(cfg, out, overwrite=overwrite, resume=resume, data=data, config_path=config_path)
        model = build_model(cfg.model, data.specs, data.num_classes, seed=cfg.seed)
    labelled = {"used": data.train.num_labelled, "unlabelled_skipped": len(data.train) - data.train.num_labelled}
    if labelled["unlabelled_skipped"] and log and distributed.is_main():
        log(f"training with the {labelled['used']} labelled training samples; "
            f"{labelled['unlabelled_skipped']} unlabelled ones are left out")
    with distributed.run_dir(lambda: RunDir(out, overwrite=overwrite, config=cfg.model_dump(), resume=resume),
                             out) as run:
        _record_backends(run, device, cfg)
        fit = train(model, data, cfg.train, device=str(device), seed=cfg.seed, run_dir=run.path,
                    save=_saver(cfg, data, "model"), label="train", resume=resume)
        if not distributed.is_main():
            return {}
        metrics = evaluate_model(model, data.test, device=device, batch_size=cfg.train.eval_batch_size)
        summary = {"dataset": data.info, "model": metrics, **fit.budget(),
                   "val_accuracy": fit.best_val_accuracy, "train_seconds": round(fit.seconds, 2),
                   "checkpoint": str(run / "best.pt")}
        if labelled["unlabelled_skipped"]:
            summary["labelled"] = labelled
        return _finish(run, summary, metrics, fit, "train")


def resolve_checkpoint(path: str, config_path: str | Path | None = None) -> Path:
    """A checkpoint path as given, else relative to the config file's folder."""
    candidate = Path(path)
    if not candidate.exists() and config_path is not None and not candidate.is_absolute():
        beside = Path(config_path).parent / candidate
        if beside.exists():
            return beside
    return candidate


def load_teachers(cfg: RunConfig, data: DataSplits, device, config_path=None, *,
                  trust_code: bool = False) -> dict[str, nn.Module]:
    """``{name: model}`` for every teacher of ``cfg.distill``, each checked against the data.

    A teacher's recorded code (imports, factory) runs only with ``trust_code`` or when ``cfg``
    names it itself (:func:`mmdistill.checkpoint.check_code`)."""
    teachers = {}
    several = len(cfg.distill.teacher_list()) > 1
    for i, (name, tcfg) in enumerate(zip(cfg.distill.teacher_names(), cfg.distill.teacher_list())):
        key = f"distill.teachers[{i}].checkpoint" if several else "distill.teacher.checkpoint"
        try:
            teacher, payload = load_checkpoint(resolve_checkpoint(tcfg.checkpoint, config_path), device,
                                               trust_code=trust_code, config=cfg)
        except CheckpointError as err:
            raise CheckpointError(f"{key}: {err}") from None
        check_checkpoint_data(key, "the teacher", teacher.modalities, payload["specs"], payload["num_classes"],
                              data, cfg.data.name)
        teachers[name] = teacher
    return teachers


@distributed.launch
def run_distill(cfg: RunConfig, out: str | Path, *, overwrite: bool = False,
                config_path: str | Path | None = None, data: DataSplits | None = None, resume: bool = False,
                trust_code: bool = False) -> dict:
    """Distil the checkpointed teacher(s) of ``cfg.distill`` into a student built from ``cfg.model``.

    With several teachers the run directory also holds ``teacher_weights.csv``: the ensemble's
    weight of each teacher on each training sample, and the summary their mean per class.
    ``resume``: continue the interrupted run in ``out`` from its last complete epoch.
    ``trust_code``: run the code the teachers' checkpoints name (see :func:`load_teachers`).
    Under torchrun only rank 0 writes and evaluates; the other ranks return ``{}``.
    """
    if cfg.distill is None:
        raise ConfigError("distill: section missing (it names the teacher checkpoint and the loss terms)")
    with distributed.agreed():  # a user error on any rank stops every rank
        device, data = _prepare(cfg, out, overwrite=overwrite, resume=resume, data=data, config_path=config_path)
        teachers = load_teachers(cfg, data, device, config_path, trust_code=trust_code)
        student = build_model(cfg.model, data.specs, data.num_classes, seed=cfg.seed)
        # each loss built once and placed (feature points, explicit paths) before the run starts, so a
        # placement error leaves no run behind
        terms = make_terms(cfg.distill.terms, list(teachers), student=student, teachers=list(teachers.values()))
    with distributed.run_dir(lambda: RunDir(out, overwrite=overwrite, config=cfg.model_dump(), resume=resume),
                             out) as run:
        _record_backends(run, device, cfg)
        fit = distill(student, teachers, data, terms=terms, gamma=cfg.distill.gamma,
                      ensemble=cfg.distill.ensemble, cfg=cfg.train, device=str(device), seed=cfg.seed,
                      run_dir=run.path, save=_saver(cfg, data, "student"), resume=resume)
        if not distributed.is_main():
            return {}
        first = next(iter(teachers.values()))
        metrics = evaluate_model(student, data.test, device=device, teacher=first,
                                 batch_size=cfg.train.eval_batch_size)
        summary = {"dataset": data.info, "student": {**metrics, "extra_params": fit.extra_params},
                   **fit.budget(), "val_accuracy": fit.best_val_accuracy,
                   "train_seconds": round(fit.seconds, 2), "checkpoint": str(run / "best.pt"),
                   "terms": placed_terms(fit.task)}
        reports = {name: evaluate_model(t, data.test, device=device, latency=True, batch_size=cfg.train.eval_batch_size)
                   for name, t in teachers.items()}
        if len(teachers) == 1:
            summary["teacher"] = next(iter(reports.values()))
        else:
            summary["teachers"] = reports
            summary["teacher"] = reports[max(reports, key=lambda n: reports[n]["accuracy"])]
            summary["ensemble"] = write_teacher_weights(run / "teacher_weights.csv", fit.task, data.train, device,
                                                         cfg.distill.ensemble.strategy)
        return _finish(run, summary, metrics, fit, "distill")


def placed_terms(task) -> list[dict]:
    """The terms a distillation task optimises, as placed (feature points resolved)."""
    return [{"name": t.name, "weight": t.weight, "student": t.student_path, "teacher": t.teacher_path,
             "source": task.teacher_names[t.teacher] if t.teacher is not None else None} for t in task.terms]


def write_teacher_weights(path: Path, task, dataset, device, strategy: str) -> dict:
    """Per-sample teacher weights on ``dataset`` to a CSV (index, label, one column per teacher);
    returns their overall and per-class means."""
    weights = task.sample_weights(dataset, device=device)
    labels = dataset.labels
    names = task.teacher_names
    rows = ["index,label," + ",".join(names)]
    for i, (label, w) in enumerate(zip(labels.tolist(), weights.tolist())):
        rows.append(f"{i},{label}," + ",".join(f"{v:.6f}" for v in w))
    write_text(path, "\n".join(rows) + "\n")
    per_class = {str(c): dict(zip(names, weights[labels == c].mean(0).tolist()))
                 for c in labels[labels >= 0].unique().tolist()}  # unlabelled samples (-1) have no class
    return {"strategy": strategy, "mean_weight": dict(zip(names, weights.mean(0).tolist())),
            "mean_weight_per_class": per_class, "file": str(path)}


def run_evaluate(checkpoint: str | Path, out: str | Path, *, split: str = "test", drop: Sequence[str] = (),
                 data_root: str | None = None, device: str = "auto", overwrite: bool = False,
                 all_subsets: bool = False, corrupt: Sequence[str] = (), corrupt_seed: int = 0,
                 cost: bool = True, trust_code: bool = False) -> dict:
    """Evaluate a checkpoint on the split of the data it was trained on (``drop``: absent modalities;
    ``corrupt``: ``MODALITY:KIND:SEVERITY`` corruptions, see :mod:`mmdistill.data.corruptions`).

    With ``all_subsets``, ``metrics["subsets"]`` also maps every non-empty subset of the model's
    modalities (joined by ``+``) to the accuracy with only that subset present.
    With ``cost``, it also holds the cost fields of :func:`mmdistill.export.profile.measure_cost`
    (``macs``, ``onnx_bytes``, ``onnx_ms_b1``, ``onnx_sps_b64``, ...; ONNX Runtime on one CPU thread).
    ``trust_code``: run the code the checkpoint names (imports, factory); refused without it.
    """
    from .guard import checkpoint_inputs, check_out

    corruptions = [Corruption.parse(c) for c in corrupt]
    check_out(out, checkpoint_inputs(checkpoint))
    dev = resolve_device(device)
    model, payload = load_checkpoint(checkpoint, dev, trust_code=trust_code)
    check_out(out, checkpoint_inputs(checkpoint, payload, data_root=data_root))
    check_run_dir(out, overwrite=overwrite)
    unknown = [c.modality for c in corruptions if c.modality not in model.modalities]
    if unknown:
        raise ConfigError(f"--corrupt: the model has no modality {unknown[0]!r} (it has {', '.join(model.modalities)})")
    unknown = [m for m in drop if m not in model.modalities]
    if unknown:
        raise ConfigError(f"--drop {unknown[0]}: the model has no modality {unknown[0]!r} "
                          f"(it has {', '.join(model.modalities)})")
    for c in corruptions:  # each corruption against the kind of data it would corrupt, before any work
        spec = payload["specs"][c.modality]
        if c.kind == "occlusion" and len(spec.shape) < 2:
            raise ConfigError(f"--corrupt {c}: occlusion needs samples with two spatial axes; {c.modality!r} is "
                              f"{spec.kind} of shape {list(spec.shape)}")
        if c.kind == "time_shift" and spec.kind not in TIME_KINDS:
            raise ConfigError(f"--corrupt {c}: time_shift needs a time axis; {c.modality!r} is {spec.kind} data "
                              f"(time axes: {', '.join(TIME_KINDS)})")
    if drop and set(model.modalities) <= set(drop):
        raise ConfigError(f"--drop: dropping every modality of the model ({', '.join(model.modalities)}) leaves it "
                          "nothing to predict from; keep at least one")
    _, data = checkpoint_data(checkpoint, model, payload, data_root)
    dataset = data.split(split, " for this checkpoint")
    with RunDir(out, overwrite=overwrite, config={"checkpoint": str(checkpoint), "split": split,
                                                   "drop": list(drop), "corrupt": list(corrupt)}) as run:
        transform = corrupter(corruptions, corrupt_seed) if corruptions else None
        metrics = evaluate_model(model, dataset, device=dev, drop=drop, transform=transform)
        metrics.update(split=split, checkpoint=str(checkpoint), corrupt=[str(c) for c in corruptions])
        if all_subsets:
            metrics["subsets"] = subset_accuracies(model, dataset, device=dev, corrupt=corruptions,
                                                   corrupt_seed=corrupt_seed)
        if cost:
            from .export.profile import measure_cost

            metrics.update(measure_cost(model, payload["specs"], repeats=50, warmup=5, eager=False, cuda=False))
        write_json(run / "metrics.json", metrics)
        return metrics



def subset_accuracies(model, dataset, *, device="cpu", corrupt=(), corrupt_seed: int = 0) -> dict[str, float]:
    """Accuracy with only each non-empty subset of ``model.modalities`` present."""
    names = list(model.modalities)
    out = {}
    for size in range(1, len(names) + 1):
        for subset in combinations(names, size):
            transform = corrupter(corrupt, corrupt_seed) if corrupt else None
            logits, labels = predict(model, dataset, device=device, drop=[m for m in names if m not in subset],
                                     transform=transform)
            out["+".join(subset)] = accuracy(logits, labels)
    return out
