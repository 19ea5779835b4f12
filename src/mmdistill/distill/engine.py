"""The training/distillation loop shared by every task.

Per epoch: one pass over the training set minimising the sum of the task's loss terms, then
validation accuracy; one JSON line of metrics is appended to ``metrics.jsonl``; ``last.pt`` and
(by validation accuracy) ``best.pt`` are written atomically, then ``state.pt``, the training state
(see :meth:`Trainer._save_state`), from which ``Trainer(resume=True)`` continues an interrupted
run bit-identically. At the end the model holds the best weights. Seeded and deterministic on CPU.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from ..checkpoint import atomic_torch_save
from ..config import AUGMENT_KINDS, OptimizerConfig, SchedulerConfig, TrainConfig
from ..data.augment import augment_batch, mixup, modality_dropout, time_shift
from ..data.batch import to_device
from ..data.dataset import MultimodalDataset
from ..errors import CheckpointError, ConfigError
from ..evaluate.metrics import accuracy, predict
from ..rundir import write_text
from .sinks import MetricSinks


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; asking for ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def build_optimizer(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer, cfg: SchedulerConfig, epochs: int,
                    steps_per_epoch: int = 1) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning-rate factor: linear warm-up, then constant, cosine, step or exponential.

    With ``cfg.interval == "epoch"`` the scheduler is stepped once per epoch; with ``"step"`` once
    per optimiser step, and the factor is that of the fractional epoch e = step / steps_per_epoch
    (e.g. cosine: 0.5 * (1 + cos(pi * e / epochs))). Warm-up counts in the same units.
    """
    per = steps_per_epoch if cfg.interval == "step" else 1

    def factor(count: int) -> float:
        warm = cfg.warmup_epochs * per
        if count < warm:
            return (count + 1) / (warm + 1)
        e = (count - warm) / per
        if cfg.name == "cosine":
            return 0.5 * (1 + math.cos(math.pi * e / max(1, epochs - cfg.warmup_epochs)))
        if cfg.name == "step":
            return cfg.gamma ** (e // cfg.step_size)
        if cfg.name == "exponential":
            return cfg.gamma ** e
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float | None = None
    best_score: float = -math.inf
    extra_params: int = 0
    seconds: float = 0.0
    task: object = None  # the task that was fitted (set by api.distill)


#: kinds whose last axis is time, the only ones a time shift makes sense for
TIME_KINDS = ("audio", "sequence")


def check_train_options(cfg: TrainConfig, specs: dict) -> None:
    """The ``train`` options that name modalities, against the data's ``specs``: each must exist,
    a time shift only applies to a modality whose last axis is time (audio, sequence), and each
    ``augment`` entry only to the kinds it is made for. Called before a run writes anything and
    again by :meth:`Trainer.fit`, for the Python API."""
    for key in ("modality_dropout", "time_shift", "augment"):
        for m in getattr(cfg, key):
            if m not in specs:
                raise ConfigError(f"train.{key}.{m}: the data has no modality {m!r} (it has {', '.join(specs)})")
    for m in cfg.time_shift:
        kind = specs[m].kind
        if kind not in TIME_KINDS:
            raise ConfigError(f"train.time_shift.{m}: modality {m!r} is {kind} data with no time axis; "
                              f"time shifts apply to {' and '.join(TIME_KINDS)} modalities")
    for m, entries in cfg.augment.items():
        kind = specs[m].kind
        for i, entry in enumerate(entries):
            if kind not in AUGMENT_KINDS[entry.type]:
                raise ConfigError(f"train.augment.{m}[{i}]: {entry.type} applies to "
                                  f"{' or '.join(AUGMENT_KINDS[entry.type])} modalities, {m!r} is {kind}")


class Trainer:
    """Runs a task (see :mod:`mmdistill.distill.tasks`) for ``cfg.epochs`` epochs.

    ``save(path, model, meta)`` writes a checkpoint; the engine calls it for ``last.pt`` and
    ``best.pt`` in ``run_dir`` (nothing is written when ``run_dir`` is None). With ``run_dir``,
    ``state.pt`` holds the training state after the last complete epoch; ``resume=True`` loads it
    and continues from that epoch.
    """

    def __init__(self, cfg: TrainConfig, *, device: torch.device | str = "cpu", seed: int = 0,
                 run_dir: Path | None = None, save: Callable | None = None, label: str = "train",
                 resume: bool = False):
        self.cfg = cfg
        self.device = torch.device(device)
        self.seed = seed
        self.run_dir = Path(run_dir) if run_dir else None
        self.save = save
        self.label = label
        if resume and self.run_dir is None:
            raise ConfigError("resume: needs the run directory of the run to continue")
        self.resume = resume
        self.sinks = MetricSinks((), None)  # fit opens the sinks train.log asks for

    def _progress(self) -> Progress:
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        transient=True, disable=not self.cfg.progress)

    def fit(self, task: nn.Module, train: MultimodalDataset, val: MultimodalDataset | None = None) -> FitResult:
        seed_everything(self.seed)
        cfg = self.cfg
        check_train_options(cfg, train.specs)
        # the input augmentation's own random stream, seeded from the run seed
        self.augment_generator = torch.Generator().manual_seed(self.seed + 2)
        task.to(self.device)
        loader = train.loader(cfg.batch_size, shuffle=True, seed=self.seed)
        if self.run_dir:
            self._fingerprints = self._inputs_fingerprint(task, train)
        task.setup(to_device(next(iter(train.loader(min(cfg.batch_size, len(train))))), self.device), len(train),
                   labels=train.labels)
        # teachers see each sample whole and aligned under modality dropout and time shifts, so
        # only mixup, and ``augment`` with ``augment_teacher: same``, change their inputs
        teacher_sees_clean = cfg.mixup == 0 and (not cfg.augment or cfg.augment_teacher == "clean")
        if cfg.cache_teacher and teacher_sees_clean and hasattr(task, "cache_teacher_outputs"):
            task.cache_teacher_outputs(train, batch_size=cfg.eval_batch_size, device=self.device)
        optimizer = build_optimizer(task.trainable_parameters(), cfg.optimizer)
        scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.epochs, steps_per_epoch=len(loader))
        result = FitResult()
        start = time.perf_counter()
        self.sinks = MetricSinks(cfg.log, self.run_dir)  # train.log: e.g. TensorBoard, beside metrics.jsonl
        try:
            best_state = self._epochs(task, loader, val, optimizer, scheduler, result)
        finally:
            self.sinks.close()
            if hasattr(task, "clear_cache"):
                task.clear_cache()
            if hasattr(task, "teardown"):  # forward hooks and whatever else the fit set up
                task.teardown()
        task.model.load_state_dict(best_state)
        result.seconds = time.perf_counter() - start
        return result

    def _epochs(self, task, loader, val, optimizer, scheduler, result: FitResult) -> dict:
        """Train for ``cfg.epochs`` epochs; returns the best model state (by validation accuracy)."""
        cfg = self.cfg
        best_state = None
        metrics_path = self.run_dir / "metrics.jsonl" if self.run_dir else None
        steps_per_epoch = len(loader)
        mix_generator = torch.Generator().manual_seed(self.seed + 1)
        first_epoch = 0
        if self.resume:
            first_epoch, best_state = self._load_state(task, loader, optimizer, scheduler, mix_generator, result)
        with self._progress() as bar:
            job = bar.add_task(self.label, total=cfg.epochs * steps_per_epoch, status="",
                               completed=first_epoch * steps_per_epoch)
            for epoch in range(first_epoch, cfg.epochs):
                task.train()
                sums: dict[str, float] = {}
                correct = seen = seen_labelled = 0
                epoch_start = time.perf_counter()
                for step, batch in enumerate(loader):
                    batch = to_device(batch, self.device, non_blocking=True)
                    whole = batch
                    if cfg.augment:
                        batch = augment_batch(batch, cfg.augment, self.augment_generator)
                        if cfg.augment_teacher == "same":
                            whole = batch
                    if cfg.modality_dropout:
                        batch = modality_dropout(batch, cfg.modality_dropout, mix_generator)
                    if cfg.time_shift:
                        batch = time_shift(batch, cfg.time_shift, mix_generator)
                    if cfg.mixup > 0:
                        batch = whole = mixup(batch, cfg.mixup, mix_generator)
                    progress = (epoch + step / steps_per_epoch) / cfg.epochs
                    logits, losses = task.training_step(batch, progress, teacher_batch=whole)
                    total = sum(losses.values())
                    if not torch.isfinite(total):
                        raise FloatingPointError(f"{self.label}: loss became {float(total)} at epoch {epoch + 1}, step {step}")
                    optimizer.zero_grad(set_to_none=True)
                    total.backward()
                    if cfg.grad_clip:
                        nn.utils.clip_grad_norm_(task.trainable_parameters(), cfg.grad_clip)
                    optimizer.step()
                    lr = optimizer.param_groups[0]["lr"]
                    if cfg.scheduler.interval == "step":
                        scheduler.step()
                    n = len(batch["label"])
                    for key, value in losses.items():
                        sums[key] = sums.get(key, 0.0) + float(value.detach()) * n
                    sums["loss"] = sums.get("loss", 0.0) + float(total.detach()) * n
                    has_label = batch["label"] >= 0  # training accuracy: labelled samples only
                    correct += int((logits.detach().argmax(1) == batch["label"])[has_label].sum())  # y_i under mixup
                    seen += n
                    seen_labelled += int(has_label.sum())
                    bar.update(job, advance=1, status=f"epoch {epoch + 1}/{cfg.epochs} loss {sums['loss'] / seen:.4f}")
                record = {"epoch": epoch + 1, "lr": lr,
                          **{f"train_{k}": v / seen for k, v in sums.items()},
                          "train_accuracy": correct / max(seen_labelled, 1),
                          "epoch_seconds": time.perf_counter() - epoch_start}
                if hasattr(task, "epoch_stats"):
                    record.update(task.epoch_stats())
                if cfg.scheduler.interval == "epoch":
                    scheduler.step()
                if val is not None:
                    logits_v, labels_v = predict(task.model, val, device=self.device, batch_size=cfg.eval_batch_size)
                    record["val_accuracy"] = accuracy(logits_v, labels_v)
                score = record.get("val_accuracy", -record["train_loss"])
                improved = best_state is None or score > result.best_score
                if improved:
                    result.best_score = score
                    result.best_epoch = epoch + 1
                    result.best_val_accuracy = record.get("val_accuracy")
                    best_state = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
                result.history.append(record)
                if metrics_path:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    self.sinks.write(record)
                if self.save and self.run_dir:
                    meta = {"epoch": epoch + 1, "metrics": record}
                    self.save(self.run_dir / "last.pt", task.model, meta)
                    if improved:
                        self.save(self.run_dir / "best.pt", task.model, meta)
                if self.run_dir:
                    self._save_state(task, loader, optimizer, scheduler, mix_generator, result, epoch + 1, best_state)
        return best_state

    # --- resumable training state ----------------------------------------------------------
    STATE_FILE = "state.pt"
    STATE_FORMAT = "mmdistill-state/1"

    def _save_state(self, task, loader, optimizer, scheduler, mix_generator, result: FitResult, epoch: int,
                    best_state: dict) -> None:
        """Write ``run_dir/state.pt`` atomically: everything a resumed run needs to continue exactly.

        Called last in an epoch, so every RNG state is the one the next epoch starts from. The
        task's state dict covers the model, adapters and the losses' parameters and buffers (e.g.
        VID's variances, CRD's memory banks); the frozen teachers and the training data are stored
        as fingerprints only, so a resumed run refuses different ones.
        Tensors and plain containers only, so ``torch.load(weights_only=True)`` reads it.
        """
        task_state, _ = _split_teachers(task.state_dict())
        payload = {
            "format": self.STATE_FORMAT,
            "epoch": epoch,
            "task": {k: v.detach().cpu() for k, v in task_state.items()},
            "inputs_sha256": self._fingerprints,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {**rng_state(), "mix": mix_generator.get_state(), "augment": self.augment_generator.get_state()},
            "best": {"score": result.best_score, "epoch": result.best_epoch,
                     "val_accuracy": result.best_val_accuracy,
                     "state": {k: v.detach().cpu() for k, v in best_state.items()}},
            "history": json.loads(json.dumps(result.history)),  # plain floats, ints and strings
        }
        sampler_generator = getattr(loader.sampler, "generator", None)
        if sampler_generator is not None:
            payload["rng"]["sampler"] = sampler_generator.get_state()
        atomic_torch_save(payload, self.run_dir / self.STATE_FILE)

    @staticmethod
    def _inputs_fingerprint(task, train: MultimodalDataset) -> dict[str, str]:
        """SHA-256 of what a run reads but does not train: the frozen teachers and the training set."""
        data = {f"x.{k}": v for k, v in train.modalities.items()}
        data.update({f"present.{k}": v for k, v in train.present.items()}, label=train.labels)
        return {"teachers": _fingerprint(_split_teachers(task.state_dict())[1]), "data": _fingerprint(data)}

    def _load_state(self, task, loader, optimizer, scheduler, mix_generator, result: FitResult) -> tuple[int, dict]:
        """Restore what :meth:`_save_state` wrote; returns (epochs done, best model state so far).

        ``metrics.jsonl`` is rewritten to the restored history, so epochs after the saved one are
        not logged twice.
        """
        path = self.run_dir / self.STATE_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: no training state to resume from (the run ended before its first epoch)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable training state ({str(err).splitlines()[0]})") from None
        if not isinstance(state, dict) or state.get("format") != self.STATE_FORMAT:
            raise CheckpointError(f"{path}: not an mmdistill training state (format {self.STATE_FORMAT})")
        if state["epoch"] > self.cfg.epochs:
            raise CheckpointError(f"{path}: the run already trained {state['epoch']} epochs, more than "
                                  f"train.epochs = {self.cfg.epochs}")
        task_state, _ = _split_teachers(task.state_dict())
        if self._fingerprints["teachers"] != state["inputs_sha256"]["teachers"]:
            raise CheckpointError(f"{path}: the teacher weights differ from the interrupted run's "
                                  f"(was a teacher checkpoint replaced?)")
        if self._fingerprints["data"] != state["inputs_sha256"]["data"]:
            raise CheckpointError(f"{path}: the training data differ from the interrupted run's "
                                  f"(were the data files changed?)")
        missing = sorted(set(task_state) ^ set(state["task"]))
        if missing:
            raise CheckpointError(f"{path}: the training state does not match the model ({missing[0]!r} "
                                  f"is in one but not the other)")
        try:
            task.load_state_dict(state["task"], strict=False)
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as err:
            raise CheckpointError(f"{path}: the training state does not match the model "
                                  f"({str(err).splitlines()[0]})") from None
        scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        set_rng_state(rng)
        mix_generator.set_state(rng["mix"])
        if "augment" in rng:
            self.augment_generator.set_state(rng["augment"])
        sampler_generator = getattr(loader.sampler, "generator", None)
        if sampler_generator is not None and "sampler" in rng:
            sampler_generator.set_state(rng["sampler"])
        best = state["best"]
        result.best_score, result.best_epoch, result.best_val_accuracy = best["score"], best["epoch"], best["val_accuracy"]
        result.history = list(state["history"])
        metrics_path = self.run_dir / "metrics.jsonl"
        write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in result.history))
        best_state = {k: v.to(self.device) for k, v in best["state"].items()}
        return int(state["epoch"]), best_state


def rng_state() -> dict:
    """Every global RNG state as tensors and plain lists (weights-only loadable)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"torch": torch.get_rng_state(),
           "python": [version, list(internal), gauss],
           "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _split_teachers(state: dict) -> tuple[dict, dict]:
    """(trained entries, frozen teacher entries) of a task's state dict."""
    teachers = {k: v for k, v in state.items() if k.startswith("teachers.")}
    return {k: v for k, v in state.items() if k not in teachers}, teachers


def _fingerprint(state: dict) -> str:
    """SHA-256 of the names, dtypes, shapes and bytes of ``state``'s tensors."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


