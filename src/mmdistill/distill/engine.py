"""The training/distillation loop shared by every task.

Per epoch: one pass over the training set minimising the sum of the task's loss terms, then
validation accuracy (for a label-free task, e.g. a student learning a pretrained encoder's
embedding with ``gamma = 0``, the terms' validation loss instead: :attr:`Task.label_free`), which
selects the best epoch. At the end the model holds the best weights. Seeded and deterministic on
CPU. Under torchrun the same loop runs data-parallel (see :mod:`mmdistill.distill.distributed`).

Everything else a fit does is a callback (:mod:`mmdistill.distill.callbacks`), in a fixed order:
the divergence check, the progress bar, early stopping, one JSON line per epoch in
``metrics.jsonl``, TensorBoard, ``last.pt`` and ``best.pt`` (written atomically), the user's
callbacks, then ``state.pt``, the training state (see :meth:`Trainer.save_state`), from which
``Trainer(resume=True)`` continues an interrupted run bit-identically.

The hot loop never waits for the host per step: loss terms and accuracy are summed on the device
(:class:`EpochMeter`) and read once per epoch, plus a running-loss read every ``SYNC_INTERVAL``
seconds for the callbacks' ``on_progress`` (the divergence check and the progress bar).
``train.precision`` and ``train.compile``: :func:`autocast`, :func:`grad_scaler`, :func:`compile_forwards`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Literal, Sequence

import numpy as np
import pydantic
import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat, StrictBool
from torch import nn

from ..checkpoint import atomic_torch_save
from ..data.augment import AUGMENT_KINDS, CUTMIX_KINDS, AugmentConfig, training_inputs
from ..data.batch import to_device
from ..data.dataset import MultimodalDataset
from ..data.dataset import tensor_digest as _fingerprint  # the teachers' digest, as the data's
from ..data.kinds import kinds_with
from ..errors import CheckpointError, ConfigError
from ..evaluate.metrics import accuracy, predict
from ..optim import OPTIMIZERS, SCHEDULERS, OptimizerConfig, SchedulerConfig, build_optimizer, build_scheduler
from ..options import PositiveInt, Strict
from ..rundir import STATE
from . import backends, distributed
from .callbacks import Callback, CallbackList, Fit, default_callbacks, score_of
from .tasks import Task
from .views import ViewCacheConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class FitResult:
    """What a fit did. ``steps``: optimiser steps taken (every rank's global step counted once);
    ``best_epoch`` (1-based), whose weights the model holds at the end; ``stopped_early``: whether
    ``train.early_stopping`` ended the run before ``max_epochs``; ``converged``: False when the run
    did not stop early and its best epoch is in the last tenth of the schedule (best_epoch >
    0.9 * max_epochs), i.e. validation was still improving when the budget ran out."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float | None = None
    best_score: float = -math.inf
    extra_params: int = 0
    seconds: float = 0.0
    view_cache_seconds: float = 0.0  # building train.view_cache (0 without one)
    view_cache_bytes: int = 0  # what this process's view cache held
    task: object = None  # the task that was fitted (set by api.distill)
    steps: int = 0
    max_epochs: int = 0
    stopped_early: bool = False

    @property
    def epochs(self) -> int:
        """Epochs run."""
        return len(self.history)

    @property
    def converged(self) -> bool:
        return self.stopped_early or not in_last_tenth(self.best_epoch, self.max_epochs)

    def warning(self, label: str) -> str | None:
        """The line a finished run prints when it did not converge (None when it did)."""
        if self.converged:
            return None
        return (f"{label}: warning: best epoch {self.best_epoch} of {self.max_epochs} is in the last tenth of the "
                "schedule: validation was still improving (not converged; more epochs, or train.early_stopping)")

    def budget(self) -> dict:
        """The fields a run summary records about its training budget."""
        return {"best_epoch": self.best_epoch, "epochs_run": self.epochs, "max_epochs": self.max_epochs,
                "steps": self.steps, "stopped_early": self.stopped_early, "converged": self.converged}


def in_last_tenth(best_epoch: int, epochs: int) -> bool:
    """Whether epoch ``best_epoch`` (1-based) of ``epochs`` is in the schedule's last tenth."""
    return best_epoch > 0.9 * epochs


# --- ``train``: the loop's options -----------------------------------------------------------
class EarlyStoppingConfig(Strict):
    """Stop when validation accuracy (the training loss's negative without a validation split) has
    not improved by more than ``min_delta`` for ``patience`` epochs; the model keeps its best weights."""

    patience: PositiveInt
    min_delta: NonNegativeFloat = 0.0


class TrainConfig(Strict):
    """The ``train`` section of a run config: how :class:`Trainer` trains (kept apart from the
    method's ``distill`` section); also the ``cfg`` of :func:`mmdistill.api.train` and ``distill``."""

    # at most this many epochs; the learning-rate schedule spans them even when early stopping ends
    # the run sooner. A run whose best epoch is in the last tenth of them, and which did not stop
    # early, is flagged as not converged (``converged: false`` in summary.json, and a log line)
    epochs: PositiveInt = 10
    # e.g. {patience: 5, min_delta: 0.002}: stop after ``patience`` epochs without an improvement of
    # the validation accuracy by more than ``min_delta`` (a fraction: 0.002 = 0.2 points); the same
    # decision on every process under torchrun; null (default): run all ``epochs``
    early_stopping: EarlyStoppingConfig | None = None
    batch_size: PositiveInt = 128
    # distilling with unlabelled samples: each step's batch is ``labelled_batch_size`` labelled
    # samples (cross-entropy reads these) followed by ``batch_size`` samples drawn from the whole
    # training set with their labels hidden (the transfer batch); distillation terms read every
    # sample of it. An epoch is one pass of the transfer batches over the training set. null
    # (default): one batch of ``batch_size`` samples, cross-entropy on its labelled members
    labelled_batch_size: PositiveInt | None = None
    eval_batch_size: PositiveInt = 1024
    optimizer: OPTIMIZERS.field() = OptimizerConfig()
    scheduler: SCHEDULERS.field() = SchedulerConfig()
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    grad_clip: PositiveFloat | None = None
    mixup: NonNegativeFloat = 0.0  # Beta(alpha, alpha) mixup across all modalities; 0 = off
    # CutMix (Yun et al. 2019) with lam ~ Beta(alpha, alpha): one partner and one cut fraction for all
    # modalities of a sample (images: a box, spectrograms and sequences: a band of time); 0 = off
    cutmix: NonNegativeFloat = 0.0
    # modality -> drop rate; below 1: at 1 the modality would never be seen in training
    modality_dropout: dict[str, Annotated[float, Field(ge=0, lt=1)]] = {}
    # modality -> largest random time shift, as a fraction of the last (time) axis; the student sees
    # shifted inputs, teachers the aligned ones
    time_shift: dict[str, Annotated[float, Field(gt=0, lt=1)]] = {}
    cache_teacher: StrictBool = True  # compute frozen teachers' outputs once per run (not with mixup)
    # where that cache lives: ``memory`` (tensors), or ``mmap``: np.memmap files in a temporary folder
    # (inside the run directory when there is one), deleted when the fit ends; ``cache_dtype``
    # float16 halves its size (outputs are read back as float32)
    cache_storage: Literal["memory", "mmap"] = "memory"
    cache_dtype: Literal["float32", "float16"] = "float32"
    # modality -> input augmentations, applied in order to every training batch (teachers being
    # trained and distilled students see them); e.g. {image: [{type: translate, pixels: 2}]}
    augment: dict[str, list[AugmentConfig]] = {}
    # what distillation teachers see (mmdistill.data.augment.training_inputs): ``consistent``: exactly
    # the student's input (augmented, modality-dropped, time-shifted, mixed); ``same``: the augmented
    # input, whole and aligned, mixed as the student's; ``clean``: the stored sample, mixed as the
    # student's. The plain teacher cache only serves inputs that are stored samples
    augment_teacher: Literal["same", "clean", "consistent"] = "same"
    # teacher outputs precomputed on K seeded augmented views per sample (None: off)
    view_cache: ViewCacheConfig | None = None
    progress: StrictBool = True
    # extra sinks for the per-epoch metrics (metrics.jsonl is always written): tensorboard writes
    # event files to RUN_DIR/tensorboard (needs the optional extra: pip install 'mmdistill[tensorboard]')
    log: list[Literal["tensorboard"]] = []
    # mixed precision of the training step (forward and losses): ``bf16`` or ``fp16`` run it under
    # torch.autocast on the device, ``fp16`` with a GradScaler; weights, optimiser state,
    # checkpoints and validation stay float32, and the losses compute in float32. fp32 is the
    # default: bf16 changes the numerics, and it is only faster where the hardware computes in bf16
    # (1.41x on the Hinton pair, 1.32x on AV-Digits, on an AVX512-BF16 CPU: benchmarks/results/throughput.md)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # torch.compile the student's forward (and the teachers' when they are not cached); needs a C++
    # compiler on CPU. Off by default: on CPU it was slower on the Hinton MLPs (0.90x) though faster
    # on the AV-Digits CNN (1.36x, benchmarks/results/throughput.md), it compiles for tens of
    # seconds, and compiled dropout draws other random numbers than eager
    compile: StrictBool = False
    # DataLoader worker processes for the training set (0: batches are gathered in the main process).
    # The engine's random draws (shuffling, augmentation, mixup, dropout) stay in the main process,
    # so the weights do not depend on the count; each worker is seeded from the run's seed
    # (torch's per-worker seed, also given to numpy and random), for datasets that draw their own.
    # Pays off for data read from disk (npy_dir); in-memory data is one gather per batch
    workers: Annotated[int, Field(ge=0)] = 0
    # bit-identical repeats on CUDA too: torch.use_deterministic_algorithms, cuDNN's deterministic
    # kernels without autotuning, CUBLAS_WORKSPACE_CONFIG; slower on GPUs, free on CPU
    # (mmdistill.distill.backends says what it sets and costs)
    deterministic: StrictBool = False

    @pydantic.model_validator(mode="after")
    def _mixing(self):
        if self.mixup > 0 and self.cutmix > 0:
            raise ValueError("cutmix: set either mixup or cutmix, not both")
        if self.view_cache is not None:
            if self.mixup > 0 or self.cutmix > 0:
                raise ValueError("view_cache: cannot serve mixup or cutmix (a cached view holds one sample, a mixed "
                                 "input pairs samples per batch); set mixup and cutmix to 0 or drop view_cache")
            if self.augment_teacher == "clean":
                raise ValueError("view_cache: with augment_teacher: clean the teachers see stored samples and "
                                 "cache_teacher serves them; use augment_teacher: consistent or same")
            if not (self.augment or self.modality_dropout or self.time_shift):
                raise ValueError("view_cache: there is no augmentation to make views with (set train.augment, "
                                 "modality_dropout or time_shift)")
        return self

    @pydantic.field_validator("log")
    @classmethod
    def _sinks_installed(cls, sinks):
        import importlib.util

        if "tensorboard" in sinks and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("tensorboard is not installed; pip install 'mmdistill[tensorboard]' "
                             "(or remove it from train.log)")
        return sinks


#: kinds whose last axis is time, the only ones a time shift makes sense for
TIME_KINDS = kinds_with(time_axis=True)


def check_train_options(cfg: TrainConfig, specs: dict) -> None:
    """The ``train`` options that name modalities, against the data's ``specs``: each must exist,
    a time shift only applies to a modality whose last axis is time (audio, sequence), and each
    ``augment`` entry only to the kinds it is made for. Called before a run writes anything and
    again by :meth:`Trainer.fit`, for the Python API."""
    for key in ("modality_dropout", "time_shift", "augment"):
        for m in getattr(cfg, key):
            if m not in specs:
                raise ConfigError(f"train.{key}.{m}: the data has no modality {m!r} (it has {', '.join(specs)})")
    text = [m for m, s in specs.items() if s.kind == "text"]
    if cfg.mixup > 0 and text:  # mixing token ids would make other tokens, not a blend
        raise ConfigError(f"train.mixup: cannot mix the token ids of text modality {text[0]!r}; set mixup: 0")
    if cfg.cutmix > 0:
        for m, s in specs.items():
            if s.kind not in CUTMIX_KINDS:
                raise ConfigError(f"train.cutmix: modality {m!r} is {s.kind} data with no spatial or time axis to cut "
                                  f"(CutMix cuts {', '.join(CUTMIX_KINDS)} modalities); use mixup")
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
            shape = tuple(specs[m].shape)
            if entry.type == "translate" and len(shape) >= 2 and entry.pixels >= min(shape[-2:]):
                raise ConfigError(f"train.augment.{m}[{i}].pixels: {entry.pixels} moves the {shape[-2]}x{shape[-1]} "
                                  f"images of {m!r} entirely out of view; use less than {min(shape[-2:])}")
            axis = {"time_mask": -1, "freq_mask": -2}.get(entry.type)
            if axis is not None and len(shape) >= -axis and entry.width > shape[axis]:
                what = "time steps" if axis == -1 else "frequency bins"
                raise ConfigError(f"train.augment.{m}[{i}].width: {entry.width} is more than the {shape[axis]} "
                                  f"{what} of {m!r}")


#: seconds between two reads of the running loss (progress bar, divergence check): the only host
#: syncs of an epoch besides its end
SYNC_INTERVAL = 0.5

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """The context a training step runs in: torch.autocast to ``precision`` on ``device``'s type
    (``fp32``: no autocast). Raises ConfigError naming ``train.precision`` where it is unsupported."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = _AUTOCAST_DTYPES[precision]
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"train.precision: {precision} needs torch.autocast, which {device.type} does not support")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision: bf16 is not supported by this CUDA device; use fp16 or fp32")
    try:
        return torch.autocast(device.type, dtype=dtype)
    except RuntimeError as err:
        raise ConfigError(f"train.precision: {precision} is not supported on {device.type} "
                          f"({str(err).splitlines()[0]})") from None


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled for ``fp16`` only (bf16 has float32's range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def compile_forwards(modules: list[nn.Module], device: torch.device) -> list[nn.Module]:
    """``torch.compile`` the forward of ``modules`` (a task's :meth:`~Task.step_modules`: the
    student, and the teachers when they run every step, uncached); returns them, for
    :func:`uncompile`. A machine where torch.compile cannot work (no C++ compiler, unsupported
    Python) gives a ConfigError."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(2, device=device))
    except Exception as err:  # inductor's errors have no common base class
        raise ConfigError(f"train.compile: torch.compile does not work here ({str(err).strip().splitlines()[0]}); "
                          "set train.compile: false") from None
    for module in modules:
        module.forward = torch.compile(module.forward)
    return modules


def uncompile(modules: list[nn.Module]) -> None:
    """Undo :func:`compile_forwards`: the models leave a fit with their eager forward."""
    for module in modules:
        module.__dict__.pop("forward", None)


LABELLED = "_labelled"  # EpochMeter's count of labelled samples, reduced across processes with the sums


class EpochMeter:
    """Sums over an epoch of each loss term (times the batch size) and of correct predictions,
    kept on the device as detached tensors so that a training step never waits for the host;
    :meth:`read` copies them out once."""

    def __init__(self, device: torch.device):
        self.device = device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.sums: dict[str, torch.Tensor] = {}
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.labelled = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0

    def add(self, losses: dict[str, torch.Tensor], total: torch.Tensor, logits: torch.Tensor,
            labels: torch.Tensor) -> None:
        n = labels.shape[0]
        for key, value in (*losses.items(), ("loss", total)):
            acc = self.sums.get(key)
            if acc is None:
                acc = self.sums[key] = torch.zeros((), dtype=self.dtype, device=self.device)
            acc.add_(value.detach(), alpha=n)
        has_label = labels >= 0  # training accuracy: labelled samples only (y_i under mixup)
        self.correct.add_(((logits.detach().argmax(1) == labels) & has_label).sum())
        self.labelled.add_(has_label.sum())
        self.seen += n

    def mean_loss(self) -> float:
        """The running mean total loss (one host sync)."""
        return float(self.sums["loss"]) / self.seen

    def read(self, reduce=None) -> dict[str, float]:
        """``{"train_<term>": mean, ..., "train_loss": mean, "train_accuracy": fraction}`` (one host sync).

        ``reduce(sums, correct, seen)``: sums them over processes first (DDP, see
        :func:`mmdistill.distill.distributed.reduce_epoch`)."""
        values = torch.stack([*self.sums.values(), self.labelled.to(self.dtype),
                              self.correct.to(self.dtype)]).cpu().tolist()
        sums = {**dict(zip(self.sums, values[:-2])), LABELLED: values[-2]}
        correct, seen = int(values[-1]), self.seen
        if reduce is not None:
            sums, correct, seen = reduce(sums, correct, seen)
        labelled = sums.pop(LABELLED)
        out = {f"train_{k}": v / seen for k, v in sums.items()}
        out["train_accuracy"] = correct / max(labelled, 1)
        return out


class Trainer:
    """Runs a task (see :mod:`mmdistill.distill.tasks`) for ``cfg.epochs`` epochs.

    ``save(path, model, meta)`` writes a checkpoint; the engine calls it for ``last.pt`` and
    ``best.pt`` in ``run_dir`` (nothing is written when ``run_dir`` is None). With ``run_dir``,
    ``state.pt`` holds the training state after the last complete epoch; ``resume=True`` loads it
    and continues from that epoch. ``callbacks``: the user's
    :class:`~mmdistill.distill.callbacks.Callback` s, run after the built-in ones (see
    :mod:`mmdistill.distill.callbacks` for the events and their order).
    """

    def __init__(self, cfg: TrainConfig, *, device: torch.device | str = "cpu", seed: int = 0,
                 run_dir: Path | None = None, save: Callable | None = None, label: str = "train",
                 resume: bool = False, callbacks: Sequence[Callback] = ()):
        self.cfg = cfg
        self.device = torch.device(device)
        self.seed = seed
        self.run_dir = Path(run_dir) if run_dir else None
        self.save = save
        self.label = label
        if resume and self.run_dir is None:
            raise ConfigError("resume: needs the run directory of the run to continue")
        self.resume = resume
        default_callbacks(cfg, callbacks)  # a wrong callbacks argument fails here, before any work
        self.user_callbacks = list(callbacks)

    @property
    def writes(self) -> bool:
        """Whether this process writes the run directory (under torchrun only rank 0 does)."""
        return self.run_dir is not None and distributed.is_main()

    def fit(self, task: Task, train: MultimodalDataset, val: MultimodalDataset | None = None) -> FitResult:
        """Train ``task`` under the backend settings of :mod:`mmdistill.distill.backends` (set for the
        fit, restored after it; ``self.backends`` records them)."""
        with backends.configured(self.device, self.cfg.deterministic) as self.backends:
            try:
                return self._fit(task, train, val)
            except RuntimeError as err:
                if not backends.is_nondeterminism_error(err):
                    raise
                raise ConfigError(f"train.deterministic: {str(err).splitlines()[0]}; "
                                  "set train.deterministic: false") from None

    def _fit(self, task: Task, train: MultimodalDataset, val: MultimodalDataset | None = None) -> FitResult:
        seed_everything(self.seed)
        cfg = self.cfg
        self.callbacks = CallbackList(default_callbacks(cfg, self.user_callbacks))  # the built-in ones fresh per fit
        check_train_options(cfg, train.specs)
        self.autocast = autocast(self.device, cfg.precision)  # before any work: an unsupported precision fails here
        self.scaler = grad_scaler(self.device, cfg.precision)
        # the input augmentation's own random stream, seeded from the run seed
        self.augment_generator = torch.Generator().manual_seed(self.seed + 2)
        task.to(self.device)
        loader = train.loader(cfg.batch_size, shuffle=True, seed=self.seed, **self._loader_options())
        if cfg.labelled_batch_size is not None:
            if distributed.active():
                raise ConfigError("train.labelled_batch_size: not supported under torchrun; run in one process")
            if cfg.view_cache is not None:
                raise ConfigError("train.labelled_batch_size: cannot be combined with train.view_cache (its views "
                                  "are drawn per sample of one batch); remove one of them")
            from .transfer import transfer_loader

            loader = transfer_loader(train, cfg.batch_size, cfg.labelled_batch_size, seed=self.seed)
        if distributed.active():  # global batch split over the ranks, the 1-process order
            # (a view cache: each rank keeps to its own fixed shard of the samples, whose views it caches)
            loader = distributed.train_loader(train, cfg.batch_size, seed=self.seed, owned=cfg.view_cache is not None,
                                                **self._loader_options())
        self.kinds = {m: s.kind for m, s in train.specs.items()}
        self.views = None
        if cfg.view_cache is not None:
            from .views import Views

            self.views = Views(cfg, self.kinds, len(train), self.seed)
        if self.run_dir:
            self._fingerprints = self._inputs_fingerprint(task, train)
        task.setup(to_device(next(iter(train.loader(min(cfg.batch_size, len(train))))), self.device), len(train),
                   labels=train.labels)
        result = FitResult(max_epochs=cfg.epochs)
        compiled = []
        try:
            if self.views is not None and cfg.view_cache.cache:
                built = time.perf_counter()
                cached = task.cache_view_outputs(train, self.views, batch_size=cfg.eval_batch_size, device=self.device,
                                                 storage=cfg.view_cache.storage, dtype=cfg.view_cache.dtype,
                                                 topk=cfg.view_cache.topk, folder=self.run_dir)
                if cached is not None:  # bytes held (None: the task has no teachers to cache)
                    result.view_cache_seconds = time.perf_counter() - built
                    result.view_cache_bytes = cached
            # the plain cache serves teachers that see stored samples (see data.augment.training_inputs)
            altered = (cfg.augment and cfg.augment_teacher != "clean") or (
                cfg.augment_teacher == "consistent" and (cfg.modality_dropout or cfg.time_shift))
            teacher_sees_clean = cfg.mixup == 0 and cfg.cutmix == 0 and not altered and self.views is None
            if cfg.cache_teacher and teacher_sees_clean:
                task.cache_teacher_outputs(train, batch_size=cfg.eval_batch_size, device=self.device,
                                           storage=cfg.cache_storage, dtype=cfg.cache_dtype, folder=self.run_dir)
            optimizer = build_optimizer(task.trainable_parameters(), cfg.optimizer)
            scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.epochs, steps_per_epoch=len(loader))
            self._forward = distributed.wrap(task, self.device)  # task.training_step, through DDP under torchrun
            start = time.perf_counter()
            if cfg.compile:
                compiled = compile_forwards(task.step_modules(), self.device)
            best_state = self._epochs(Fit(task, loader, optimizer, scheduler, result,
                                          mix_generator=torch.Generator().manual_seed(self.seed + 1),
                                          steps_per_epoch=len(loader)), val)
        finally:
            uncompile(compiled)
            task.teardown()  # forward hooks, the teacher cache and whatever else the fit set up
        task.model.load_state_dict(best_state)
        result.seconds = time.perf_counter() - start
        return result

    def _loader_options(self) -> dict:
        """The training loader's workers (``train.workers``) and, for CUDA, pinned batches, so that
        the steps' ``non_blocking`` copies overlap the host's work."""
        return {"workers": self.cfg.workers, "pin_memory": self.device.type == "cuda"}

    def _epochs(self, fit: Fit, val) -> dict:
        """Train for ``cfg.epochs`` epochs, calling the callbacks' events; returns the best model
        state (by :func:`~mmdistill.distill.callbacks.score_of`)."""
        cfg, callbacks = self.cfg, self.callbacks
        task, loader, optimizer, scheduler, result = fit.task, fit.loader, fit.optimizer, fit.scheduler, fit.result
        shard = loader.sampler if isinstance(loader.sampler, distributed.ShardSampler) else None
        steps_per_epoch = fit.steps_per_epoch
        if self.resume:
            self._load_state(fit)
        try:
            callbacks.on_fit_start(self, fit)
            for epoch in range(fit.epoch, cfg.epochs):
                if fit.stop:  # a callback ended the fit (resumed: after its stopping epoch's state was saved)
                    result.stopped_early = True
                    break
                if shard is not None:
                    shard.set_epoch(epoch)
                callbacks.on_epoch_start(self, fit)
                task.train()
                meter = EpochMeter(self.device)
                epoch_start = time.perf_counter()
                next_sync, pending = epoch_start + SYNC_INTERVAL, 0
                for step, batch in enumerate(loader):
                    batch = to_device(batch, self.device, non_blocking=True)
                    if self.views is not None:  # each sample's seeded view of this epoch
                        batch, whole = self.views.epoch_views(batch, epoch)
                    else:
                        batch, whole = training_inputs(batch, cfg, self.kinds, self.augment_generator,
                                                       fit.mix_generator)
                    progress = (epoch + step / steps_per_epoch) / cfg.epochs
                    scale = None if shard is None else shard.loss_scale(step)
                    logits, losses, total = self._step(task, batch, whole, progress, optimizer, scale)
                    result.steps += 1
                    lr = optimizer.param_groups[0]["lr"]
                    if cfg.scheduler.interval == "step":
                        scheduler.step()
                    if shard is not None and shard.empty(step):
                        continue  # no sample of the last global batch for this rank: it stepped with weight 0
                    meter.add(losses, total, logits, batch["label"])
                    pending += 1
                    if time.perf_counter() >= next_sync:  # the throttled host read
                        fit.step = step
                        callbacks.on_progress(self, fit, meter.mean_loss(), pending)
                        next_sync, pending = time.perf_counter() + SYNC_INTERVAL, 0
                if pending:  # the epoch's last steps: one read, also the final divergence check
                    fit.step = step
                    callbacks.on_progress(self, fit, meter.mean_loss(), pending)
                record = {"epoch": epoch + 1, "lr": lr, **meter.read(reduce=distributed.reduce_epoch),
                          "epoch_seconds": time.perf_counter() - epoch_start}
                record.update(task.epoch_stats())
                if cfg.scheduler.interval == "epoch":
                    scheduler.step()
                if val is not None and task.label_free:  # no label signal: the terms' loss
                    record["val_loss"] = task.validation_loss(val, batch_size=cfg.eval_batch_size, device=self.device)
                elif val is not None and distributed.active():  # sharded over the ranks, exact counts summed
                    record["val_accuracy"] = distributed.accuracy_on(task.model, val, device=self.device,
                                                                     batch_size=cfg.eval_batch_size)
                elif val is not None:
                    logits_v, labels_v = predict(task.model, val, device=self.device, batch_size=cfg.eval_batch_size)
                    record["val_accuracy"] = accuracy(logits_v, labels_v)
                score = score_of(record)
                fit.epoch = epoch + 1
                fit.improved = fit.best_state is None or score > result.best_score
                if fit.improved:
                    result.best_score = score
                    result.best_epoch = epoch + 1
                    result.best_val_accuracy = record.get("val_accuracy")
                    fit.best_state = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
                result.history.append(record)
                callbacks.on_epoch_end(self, fit, record)
        except BaseException as err:
            fit.error = err
            raise
        finally:
            callbacks.on_fit_end(self, fit)
        return fit.best_state

    def _step(self, task, batch, whole, progress: float, optimizer, scale: float | None = None) -> tuple:
        """One optimiser step (forward and losses under ``train.precision``'s autocast, the
        backward through the GradScaler); returns (logits, {term: loss}, total loss), unsynced.
        ``scale``: under DDP, this rank's share of the global batch, which weights its loss."""
        with self.autocast:
            logits, losses = self._forward(batch, progress, teacher_batch=whole)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total if scale is None else total * scale).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(task.trainable_parameters(), self.cfg.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        return logits, losses, total

    # --- resumable training state ----------------------------------------------------------
    STATE_FILE = STATE
    STATE_FORMAT = "mmdistill-state/1"

    def save_state(self, fit: Fit) -> None:
        """Write ``run_dir/state.pt`` atomically: everything a resumed run needs to continue exactly.

        Called last in an epoch (by the :class:`~mmdistill.distill.callbacks.TrainingState`
        callback), so every RNG state and every callback's state is the one the next epoch starts
        from. The task's state dict covers the model, adapters and the losses' parameters and
        buffers (e.g. VID's variances, CRD's memory banks); the frozen teachers and the training
        data are stored as fingerprints only, so a resumed run refuses different ones.
        Tensors and plain containers only, so ``torch.load(weights_only=True)`` reads it.
        """
        result = fit.result
        task_state, _ = _split_teachers(fit.task.state_dict())
        payload = {
            "format": self.STATE_FORMAT,
            "epoch": fit.epoch,
            "task": {k: v.detach().cpu() for k, v in task_state.items()},
            "inputs_sha256": self._fingerprints,
            "optimizer": fit.optimizer.state_dict(),
            "scheduler": fit.scheduler.state_dict(),
            "rng": {**rng_state(), "mix": fit.mix_generator.get_state(),
                    "augment": self.augment_generator.get_state()},
            "best": {"score": result.best_score, "epoch": result.best_epoch,
                     "val_accuracy": result.best_val_accuracy,
                     "state": {k: v.detach().cpu() for k, v in fit.best_state.items()}},
            "budget": {"steps": result.steps},
            "history": json.loads(json.dumps(result.history)),  # plain floats, ints and strings
            "callbacks": self.callbacks.state_dict(),
        }
        if self.scaler.is_enabled():  # fp16: the loss scale and its growth tracker
            payload["scaler"] = self.scaler.state_dict()
        sampler_generator = _sampler_generator(fit.loader)
        if sampler_generator is not None:
            payload["rng"]["sampler"] = sampler_generator.get_state()
        atomic_torch_save(payload, self.run_dir / self.STATE_FILE)

    @staticmethod
    def _inputs_fingerprint(task, train: MultimodalDataset) -> dict[str, str]:
        """SHA-256 of what a run reads but does not train: the frozen teachers and the training set."""
        return {"teachers": _fingerprint(_split_teachers(task.state_dict())[1]), "data": train.fingerprint()}

    def _load_state(self, fit: Fit) -> None:
        """Restore what :meth:`save_state` wrote into ``fit`` (epochs done, best model state so far,
        history, budget) and the callbacks (their states; a state written before callbacks had
        any: early stopping's reference from the budget)."""
        task, result = fit.task, fit.result
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
            fit.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as err:
            raise CheckpointError(f"{path}: the training state does not match the model "
                                  f"({str(err).splitlines()[0]})") from None
        fit.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled() and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        set_rng_state(rng)
        fit.mix_generator.set_state(rng["mix"])
        if "augment" in rng:
            self.augment_generator.set_state(rng["augment"])
        sampler_generator = _sampler_generator(fit.loader)
        if sampler_generator is not None and "sampler" in rng:
            sampler_generator.set_state(rng["sampler"])
        best = state["best"]
        result.best_score, result.best_epoch, result.best_val_accuracy = best["score"], best["epoch"], best["val_accuracy"]
        result.history = list(state["history"])
        budget = state.get("budget")  # states written before it existed: every epoch ran the whole loader
        result.steps = int(budget["steps"]) if budget is not None else len(result.history) * len(fit.loader)
        callback_states = state.get("callbacks")
        if callback_states is None:  # written before the callbacks: early stopping's reference was the budget's
            reference = budget if budget is not None and "patience_epoch" in budget else \
                {"patience_score": result.best_score, "patience_epoch": result.best_epoch}
            callback_states = {"EarlyStopping": {"score": reference["patience_score"],
                                                 "epoch": reference["patience_epoch"]}}
        self.callbacks.load_state_dict(callback_states)
        fit.epoch, fit.resumed = int(state["epoch"]), True
        fit.best_state = {k: v.to(self.device) for k, v in best["state"].items()}


def _sampler_generator(loader) -> torch.Generator | None:
    """The generator that orders the training batches (a sampler's, or a batch sampler's)."""
    for sampler in (loader.sampler, loader.batch_sampler):
        generator = getattr(sampler, "generator", None)
        if generator is not None:
            return generator
    return None


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


