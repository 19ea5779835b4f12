"""The loop's one extension seam: callbacks on five events of a fit.

Everything :class:`~mmdistill.distill.engine.Trainer` does besides training and validating is a
callback, in this order: the divergence check, the progress bar, early stopping,
``metrics.jsonl``, TensorBoard, the ``last.pt``/``best.pt`` checkpoints and the training state
``state.pt``. A user's callbacks
(``Trainer(callbacks=...)``, ``api.train``/``api.distill(callbacks=...)``) run after the built-in
ones and before ``state.pt`` is written, so that their state is saved with the epoch's.

Events, each called on every callback in order with the trainer and the :class:`Fit` in progress:

* ``on_fit_start(trainer, fit)``: before the first epoch (of a resumed run: after the training
  state and every callback's state are restored);
* ``on_epoch_start(trainer, fit)``: before each epoch's training pass (``fit.epoch``: epochs done);
* ``on_progress(trainer, fit, loss, steps)``: the loop's throttled host read, at most every
  ``SYNC_INTERVAL`` seconds and at the end of each epoch: ``loss`` is the epoch's running mean
  loss, ``steps`` the steps taken since the last call. Per-step work belongs in the task, not here;
* ``on_epoch_end(trainer, fit, record)``: the epoch's record (the ``metrics.jsonl`` line) is
  complete and in ``fit.result.history``; ``fit.improved`` says whether it is the best epoch so
  far. Setting ``fit.stop = True`` ends the fit after this epoch;
* ``on_fit_end(trainer, fit)``: when the fit ends, successfully or not (``fit.error`` holds the
  exception of a failed one): release what ``on_fit_start`` opened.

A callback with state that a resumed run needs returns it from ``state_dict()`` (tensors and plain
containers, so that ``state.pt`` stays loadable with ``torch.load(weights_only=True)``) and takes
it back in ``load_state_dict(state)``; it is stored under the callback's ``name``, which must be
unique in a fit. Callbacks under torchrun run on every rank: one that writes files checks
``trainer.writes`` (only rank 0 writes the run directory).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import ConfigError
from ..rundir import BEST, HISTORY, LAST, append_text, write_text
from . import distributed


@dataclass
class Fit:
    """The state of a fit in progress, as callbacks see it. ``epoch``: epochs done; ``result``: the
    :class:`~mmdistill.distill.engine.FitResult` being filled; ``best_state``: the best epoch's model
    weights; ``resumed``: the fit continues a run from its ``state.pt``."""

    task: Any
    loader: Any
    optimizer: Any
    scheduler: Any
    result: Any
    mix_generator: Any = None
    epoch: int = 0
    step: int = 0  # the step of the epoch, as of the last on_progress
    steps_per_epoch: int = 0
    best_state: dict | None = None
    improved: bool = False
    stop: bool = False
    resumed: bool = False
    error: BaseException | None = None


class Callback:
    """No-op base: override the events a callback needs (see the module's docstring)."""

    @property
    def name(self) -> str:
        """The key of the callback's state in ``state.pt``: the class name (a subclass may set another)."""
        return type(self).__name__

    def on_fit_start(self, trainer, fit: Fit) -> None:
        pass

    def on_epoch_start(self, trainer, fit: Fit) -> None:
        pass

    def on_progress(self, trainer, fit: Fit, loss: float, steps: int) -> None:
        pass

    def on_epoch_end(self, trainer, fit: Fit, record: dict) -> None:
        pass

    def on_fit_end(self, trainer, fit: Fit) -> None:
        pass

    def state_dict(self) -> dict:
        """What a resumed run needs of this callback (empty: nothing)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ProgressBar(Callback):
    """The transient progress bar (``train.progress``; rank 0 only)."""

    def __init__(self):
        self.bar = self.job = None

    def on_fit_start(self, trainer, fit: Fit) -> None:
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            transient=True, disable=not trainer.cfg.progress or not distributed.is_main())
        self.bar.__enter__()
        self.job = self.bar.add_task(trainer.label, total=trainer.cfg.epochs * fit.steps_per_epoch, status="",
                                     completed=fit.epoch * fit.steps_per_epoch)

    def on_progress(self, trainer, fit: Fit, loss: float, steps: int) -> None:
        self.bar.update(self.job, advance=steps, status=f"epoch {fit.epoch + 1}/{trainer.cfg.epochs} loss {loss:.4f}")

    def on_fit_end(self, trainer, fit: Fit) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


class DivergenceCheck(Callback):
    """Stops a fit whose running loss is no longer finite, with a FloatingPointError."""

    def on_progress(self, trainer, fit: Fit, loss: float, steps: int) -> None:
        if not math.isfinite(loss):
            raise FloatingPointError(f"{trainer.label}: loss became {loss} in epoch {fit.epoch + 1}, "
                                     f"by step {fit.step}")


class EarlyStopping(Callback):
    """``train.early_stopping``: stop after ``patience`` epochs without an improvement of the
    validation score by more than ``min_delta``. Reads only the validation history, which every
    rank holds alike under torchrun. Its state: the score and epoch of the last improvement."""

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience, self.min_delta = patience, min_delta
        self.score, self.epoch = -math.inf, 0

    def _stops(self, trainer, epochs_done: int) -> bool:
        return epochs_done < trainer.cfg.epochs and epochs_done - self.epoch >= self.patience

    def on_fit_start(self, trainer, fit: Fit) -> None:
        if fit.resumed and self._stops(trainer, fit.epoch):  # interrupted after its stopping epoch's state
            fit.stop = True

    def on_epoch_end(self, trainer, fit: Fit, record: dict) -> None:
        score = score_of(record)
        if self.epoch == 0 or score > self.score + self.min_delta:
            self.score, self.epoch = score, fit.epoch
        if self._stops(trainer, fit.epoch):
            fit.stop = True

    def state_dict(self) -> dict:
        return {"score": self.score, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.score, self.epoch = state["score"], int(state["epoch"])


def score_of(record: dict) -> float:
    """The number model selection maximises: validation accuracy, else minus the validation loss
    (label-free tasks), else minus the training loss (no validation set)."""
    if "val_accuracy" in record:
        return record["val_accuracy"]
    return -record.get("val_loss", record["train_loss"])


class MetricsFile(Callback):
    """One JSON line per epoch in ``RUN_DIR/metrics.jsonl``; a resumed run rewrites it to the
    restored history first, so that epochs after the saved one are not logged twice."""

    def on_fit_start(self, trainer, fit: Fit) -> None:
        if fit.resumed and trainer.writes:
            write_text(trainer.run_dir / HISTORY, "".join(json.dumps(r) + "\n" for r in fit.result.history))

    def on_epoch_end(self, trainer, fit: Fit, record: dict) -> None:
        if trainer.writes:
            append_text(trainer.run_dir / HISTORY, json.dumps(record) + "\n")


def _tag(key: str) -> str:
    if key == "train_loss":
        return "loss/total"
    if key.endswith("_accuracy"):
        return f"accuracy/{key.removesuffix('_accuracy')}"
    if key.startswith("train_"):
        return f"loss/{key.removeprefix('train_')}"
    return f"other/{key}"


class TensorBoard(Callback):
    """``train.log: [tensorboard]``: one scalar per numeric metric per epoch in
    ``RUN_DIR/tensorboard``, grouped as ``loss/<term>``, ``accuracy/<split>`` and ``other/<key>``
    (``epoch`` is the step)."""

    def __init__(self, folder: Path | None = None):
        self.folder, self.writer = folder, None

    def on_fit_start(self, trainer, fit: Fit) -> None:
        if not trainer.writes:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError(f"train.log: tensorboard cannot be used ({err}); "
                              "pip install 'mmdistill[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(self.folder or trainer.run_dir / "tensorboard"))

    def on_epoch_end(self, trainer, fit: Fit, record: dict) -> None:
        if self.writer is None:
            return
        step = int(record["epoch"])
        for key, value in record.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key != "epoch" and numeric and math.isfinite(value):
                self.writer.add_scalar(_tag(key), value, step)
        self.writer.flush()

    def on_fit_end(self, trainer, fit: Fit) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Checkpoints(Callback):
    """``last.pt`` after every epoch and ``best.pt`` after each best one, written by the trainer's
    ``save(path, model, meta)`` (none without it)."""

    def on_epoch_end(self, trainer, fit: Fit, record: dict) -> None:
        if trainer.save is None or not trainer.writes:
            return
        meta = {"epoch": fit.epoch, "metrics": record}
        trainer.save(trainer.run_dir / LAST, fit.task.model, meta)
        if fit.improved:
            trainer.save(trainer.run_dir / BEST, fit.task.model, meta)


class TrainingState(Callback):
    """``state.pt`` after every epoch, the last thing an epoch does, so that every RNG state and
    every callback's state is the one the next epoch starts from (see
    :meth:`~mmdistill.distill.engine.Trainer.save_state`). Always the last callback."""

    def on_epoch_end(self, trainer, fit: Fit, record: dict) -> None:
        if trainer.writes:
            trainer.save_state(fit)


def default_callbacks(cfg, extra: Sequence[Callback] = ()) -> list[Callback]:
    """The callbacks of a fit with options ``cfg`` (a TrainConfig), in their fixed order, with the
    user's ``extra`` ones before :class:`TrainingState`."""
    if isinstance(extra, Callback) or not isinstance(extra, (list, tuple)):
        raise TypeError(f"callbacks: expected a list of Callback instances, got {type(extra).__name__}")
    callbacks: list[Callback] = [DivergenceCheck(), ProgressBar()]
    if cfg.early_stopping is not None:
        callbacks.append(EarlyStopping(cfg.early_stopping.patience, cfg.early_stopping.min_delta))
    callbacks.append(MetricsFile())
    if "tensorboard" in cfg.log:
        callbacks.append(TensorBoard())
    callbacks += [Checkpoints(), *extra, TrainingState()]
    for c in extra:
        if not isinstance(c, Callback):
            raise TypeError(f"callbacks: expected mmdistill.distill.callbacks.Callback instances, got "
                            f"{type(c).__name__}")
    names = [c.name for c in callbacks]
    for c in extra:
        if names.count(c.name) > 1:
            raise ValueError(f"callbacks: two callbacks are named {c.name!r} (their states in state.pt would "
                             f"collide); give one another name")
    return callbacks


class CallbackList:
    """Calls each event on every callback, in order."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = list(callbacks)

    def on_fit_start(self, trainer, fit: Fit) -> None:
        for c in self.callbacks:
            c.on_fit_start(trainer, fit)

    def on_epoch_start(self, trainer, fit: Fit) -> None:
        for c in self.callbacks:
            c.on_epoch_start(trainer, fit)

    def on_progress(self, trainer, fit: Fit, loss: float, steps: int) -> None:
        for c in self.callbacks:
            c.on_progress(trainer, fit, loss, steps)

    def on_epoch_end(self, trainer, fit: Fit, record: dict) -> None:
        for c in self.callbacks:
            c.on_epoch_end(trainer, fit, record)

    def on_fit_end(self, trainer, fit: Fit) -> None:
        for c in self.callbacks:
            c.on_fit_end(trainer, fit)

    def state_dict(self) -> dict:
        return {c.name: s for c in self.callbacks if (s := c.state_dict())}

    def load_state_dict(self, states: dict) -> None:
        for c in self.callbacks:
            if c.name in states:
                c.load_state_dict(states[c.name])
