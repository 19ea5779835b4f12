"""The training/distillation loop shared by every task.

Per epoch: one pass over the training set minimising the sum of the task's loss terms, then
validation accuracy; one JSON line of metrics is appended to ``metrics.jsonl``; ``last.pt`` and
(by validation accuracy) ``best.pt`` are written atomically. At the end the model holds the best
weights. Seeded and deterministic on CPU.
"""
from __future__ import annotations

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

from ..config import AUGMENT_KINDS, OptimizerConfig, SchedulerConfig, TrainConfig
from ..data.augment import augment_batch, mixup, modality_dropout, time_shift
from ..data.batch import to_device
from ..data.dataset import MultimodalDataset
from ..errors import ConfigError
from ..evaluate.metrics import accuracy, predict


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


class Trainer:
    """Runs a task (see :mod:`mmdistill.distill.tasks`) for ``cfg.epochs`` epochs.

    ``save(path, model, meta)`` writes a checkpoint; the engine calls it for ``last.pt`` and
    ``best.pt`` in ``run_dir`` (nothing is written when ``run_dir`` is None).
    """

    def __init__(self, cfg: TrainConfig, *, device: torch.device | str = "cpu", seed: int = 0,
                 run_dir: Path | None = None, save: Callable | None = None, label: str = "train"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.seed = seed
        self.run_dir = Path(run_dir) if run_dir else None
        self.save = save
        self.label = label

    def _progress(self) -> Progress:
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        transient=True, disable=not self.cfg.progress)

    def fit(self, task: nn.Module, train: MultimodalDataset, val: MultimodalDataset | None = None) -> FitResult:
        seed_everything(self.seed)
        cfg = self.cfg
        for key in ("modality_dropout", "time_shift"):
            unknown = [m for m in getattr(cfg, key) if m not in train.modalities]
            if unknown:
                raise ConfigError(f"train.{key}.{unknown[0]}: the data has no modality {unknown[0]!r} "
                                  f"(it has {', '.join(train.modalities)})")
        for name, entries in cfg.augment.items():
            if name not in train.modalities:
                raise ConfigError(f"train.augment.{name}: the data has no modality {name!r} "
                                  f"(it has {', '.join(train.modalities)})")
            kind = train.specs[name].kind
            for i, entry in enumerate(entries):
                if kind not in AUGMENT_KINDS[entry.type]:
                    raise ConfigError(f"train.augment.{name}[{i}]: {entry.type} applies to "
                                      f"{' or '.join(AUGMENT_KINDS[entry.type])} modalities, {name!r} is {kind}")
        # the input augmentation's own random stream, seeded from the run seed
        self.augment_generator = torch.Generator().manual_seed(self.seed + 2)
        task.to(self.device)
        loader = train.loader(cfg.batch_size, shuffle=True, seed=self.seed)
        task.setup(to_device(next(iter(train.loader(min(cfg.batch_size, len(train))))), self.device), len(train))
        # teachers see each sample whole and aligned under modality dropout and time shifts, so
        # only mixup, and ``augment`` with ``augment_teacher: same``, change their inputs
        teacher_sees_clean = cfg.mixup == 0 and (not cfg.augment or cfg.augment_teacher == "clean")
        if cfg.cache_teacher and teacher_sees_clean and hasattr(task, "cache_teacher_outputs"):
            task.cache_teacher_outputs(train, batch_size=cfg.eval_batch_size, device=self.device)
        optimizer = build_optimizer(task.trainable_parameters(), cfg.optimizer)
        scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.epochs, steps_per_epoch=len(loader))
        result = FitResult()
        start = time.perf_counter()
        try:
            best_state = self._epochs(task, loader, val, optimizer, scheduler, result)
        finally:
            if hasattr(task, "clear_cache"):
                task.clear_cache()
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
        with self._progress() as bar:
            job = bar.add_task(self.label, total=cfg.epochs * steps_per_epoch, status="")
            for epoch in range(cfg.epochs):
                task.train()
                sums: dict[str, float] = {}
                correct = seen = 0
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
                    correct += int((logits.detach().argmax(1) == batch["label"]).sum())  # y_i under mixup
                    seen += n
                    bar.update(job, advance=1, status=f"epoch {epoch + 1}/{cfg.epochs} loss {sums['loss'] / seen:.4f}")
                record = {"epoch": epoch + 1, "lr": lr,
                          **{f"train_{k}": v / seen for k, v in sums.items()},
                          "train_accuracy": correct / seen, "epoch_seconds": time.perf_counter() - epoch_start}
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
                if self.save and self.run_dir:
                    meta = {"epoch": epoch + 1, "metrics": record}
                    self.save(self.run_dir / "last.pt", task.model, meta)
                    if improved:
                        self.save(self.run_dir / "best.pt", task.model, meta)
        return best_state
