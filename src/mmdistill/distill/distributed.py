"""Data-parallel runs under ``torchrun``: one process per device, PyTorch's DistributedDataParallel;
and the device a process runs on (:func:`resolve_device`, :func:`device_for`).

``torchrun --nproc_per_node=N -m mmdistill distill CONFIG --out DIR`` starts N processes with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; with ``WORLD_SIZE > 1`` a run joins a process group
(gloo on CPU, nccl on CUDA with device ``cuda:LOCAL_RANK``) for its whole length (:func:`launch`).

What each rank does:

- ``train.batch_size`` is the *global* batch: each rank takes ``batch_size / WORLD_SIZE`` samples
  per step (an error when it does not divide), so one YAML gives the same optimisation on any
  number of processes.
- :class:`ShardSampler` (a ``DistributedSampler``) shuffles with the 1-process run's permutation of
  each epoch and gives rank r the positions r, r + W, ...: the per-rank batches of step k are,
  together, exactly the 1-process run's k-th batch. No sample is padded or repeated; each rank's
  loss is weighted by its share of the global batch, so the all-reduced gradient is the gradient
  of the global batch's mean loss.
- The trained modules (the student, adapters and the losses' own parameters; the teachers are
  left out) are wrapped in DDP (:func:`wrap`); frozen teachers stay plain eval modules.
- The teacher cache: each rank runs the teachers over its strided shard, then the shards are
  all-gathered (:func:`gather_shards`): the teacher work is split W ways.
- Epoch metrics are all-reduced as exact sums (:func:`reduce_epoch`); validation is sharded without
  padding and its correct counts summed (:func:`accuracy_on`).
- Rank 0 alone writes the run directory, checkpoints, logs and progress bars; the other ranks
  read ``state.pt`` to resume (the run directory must then be on a file system every node sees).

From Python under torchrun, run :func:`mmdistill.api.train` / ``distill`` inside
``with session(device):`` (the config-driven runs of :mod:`mmdistill.runs` do it themselves).
The trained modules must use every parameter in every step (DDP runs with
``find_unused_parameters=False``); the built-in models do, absent modalities included.

A user error found before training (config, data, checkpoints, run directory) is raised on every
rank (:func:`agreed`); a rank that fails later makes the others fail within
``MMDISTILL_DIST_TIMEOUT`` seconds (default 900) at the latest, and torchrun stops the job.

When the weights equal a 1-process run's (within float rounding): plain models and per-sample
losses (CE, KD, feature losses), with or without the teacher cache. They differ when the
computation depends on the batch rather than the sample: BatchNorm (per-rank batch statistics;
running statistics are rank 0's, broadcast by DDP at each step), losses over pairs or sets of
samples of a batch (RKD, PKT, SP, CC, CRD's memory banks hold rank 0's updates only), and random
draws per sample (dropout layers, modality dropout, time shift, mixup, ``train.augment``: every
rank draws from the same seeded streams, so rank r's samples get other draws than in a 1-process
run). PyTorch's SyncBatchNorm needs CUDA, so there is no synchronised BatchNorm option on CPU.
With ``train.view_cache`` each rank trains on a fixed shard of the samples (:class:`OwnedShardSampler`)
so that it caches only their views; the batches, and so the weights, then differ from a 1-process run's.
"""
from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, RandomSampler

from ..errors import ConfigError, MMDistillError

TIMEOUT_ENV = "MMDISTILL_DIST_TIMEOUT"


class DistributedError(MMDistillError):
    """Another process of a torchrun job stopped (its own error is printed by that process)."""


def _env_int(name: str, default: int) -> int:
    """An integer environment variable; ``default`` when unset or not an integer (which
    :func:`check_environment` reports before a run starts)."""
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def check_environment() -> None:
    """The launcher's variables, before a run starts: ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``
    integers in range, and with ``WORLD_SIZE`` > 1 the rest of what torchrun sets (``RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``), so a stray ``WORLD_SIZE=2`` is one line, not a silent
    single-process run or a rendezvous traceback."""
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        raw = os.environ.get(name)
        if raw is None:
            continue
        try:
            values[name] = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: must be an integer (set by torchrun)") from None
        if values[name] < (1 if name == "WORLD_SIZE" else 0):
            raise ConfigError(f"{name}={raw}: out of range (set by torchrun)")
    size = values.get("WORLD_SIZE", 1)
    if size > 1:
        missing = [n for n in ("RANK", "MASTER_ADDR", "MASTER_PORT") if n not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE={size} but {', '.join(missing)} not set: start several processes with "
                              f"torchrun (torchrun --nproc_per_node={size} -m mmdistill ...), or unset WORLD_SIZE")
    if "RANK" in values and values["RANK"] >= size:
        raise ConfigError(f"RANK={values['RANK']}: must be less than WORLD_SIZE={size}")


def launched() -> bool:
    """True when started by torchrun (or any launcher setting ``RANK``) with more than one process."""
    return "RANK" in os.environ and _env_int("WORLD_SIZE", 1) > 1


def active() -> bool:
    """True inside :func:`launch`'s process group (more than one process)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return _env_int("RANK", 0) if launched() else 0


def world_size() -> int:
    return _env_int("WORLD_SIZE", 1) if launched() else 1


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; asking for ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def device_for(device: torch.device) -> torch.device:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; anything else is kept."""
    device = torch.device(device)
    if launched() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV, "900")
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: must be a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: must be a positive, finite number of seconds")
    return timedelta(seconds=seconds)


@contextmanager
def session(device: torch.device):
    """The process group of a torchrun job for the ``with`` block; yields this rank's device.

    A no-op outside torchrun, and when a process group already exists (its owner destroys it).
    Errors of the communication layer (a peer process died) become :class:`DistributedError`.
    """
    device = device_for(device)
    if not launched() or dist.is_initialized():
        yield device
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=_timeout(), **({"device_id": device} if device.type == "cuda" else {}))
    try:
        yield device
        # every rank leaves together, once rank 0 has evaluated and written: a rank that tore the
        # group down while a peer still used it could abort at exit ("terminate called without an
        # active exception"), because DDP keeps gloo's threads and connections alive past
        # destroy_process_group
        dist.barrier()
    except (dist.DistError, RuntimeError) as err:
        if isinstance(err, dist.DistError) or _peer_failure(err):
            first = re.sub(r"^\[[^\]]*\]\s*", "", (str(err).strip().splitlines() or [type(err).__name__])[0])
            raise DistributedError(f"another process of the torchrun job stopped or timed out (its own error "
                                   f"says why): {first[:120]}") from None
        raise
    finally:
        dist.destroy_process_group()


def _peer_failure(err: BaseException) -> bool:
    text = str(err)
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "Timed out",
                                   "gloo", "Gloo", "NCCL", "Broken pipe"))


def launch(fn):
    """Decorate ``fn(cfg, ...)`` to run inside :func:`session` for ``cfg.device``."""
    import functools

    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        check_environment()
        if not launched():
            return fn(cfg, *args, **kwargs)
        with session(resolve_device(cfg.device)):
            return fn(cfg, *args, **kwargs)

    return wrapper


@contextmanager
def agreed():
    """Run the block on every rank; when it raises a user error (or OSError) on any rank, every
    rank raises that rank's error, so no rank waits for one that has given up. Also a barrier."""
    error = None
    try:
        yield
    except (MMDistillError, OSError) as err:
        error = err
    if not active():
        if error is not None:
            raise error
        return
    errors: list = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    if error is not None:
        if errors[0] is not None and dist.get_rank() != 0:
            error.reported_elsewhere = True  # rank 0 prints its own
        raise error
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        first.reported_elsewhere = True  # rank 0 (or the failing rank) prints it
        raise first


class FollowerRunDir:
    """What a rank other than 0 holds in place of a :class:`~mmdistill.rundir.RunDir`: its path, nothing written."""

    def __init__(self, path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False


def run_dir(make, path):
    """``make()`` (the RunDir) on rank 0, a :class:`FollowerRunDir` elsewhere."""
    return make() if is_main() else FollowerRunDir(path)


# --- data ----------------------------------------------------------------------------------
class ShardSampler(DistributedSampler):
    """Rank ``rank``'s share of the 1-process run's shuffled batches, with no padding.

    Epoch e's order is the one ``RandomSampler(generator=Generator().manual_seed(seed))`` yields in
    its e-th epoch, as in the 1-process run (``set_epoch(e)`` replays the stream from the seed when
    needed), the same on every rank. With the global batch B = b * W, rank r takes positions r, r + W, ..., so
    its k-th batch of b holds the positions of [kB, (k+1)B) that are = r mod W: together the ranks'
    batches are the 1-process batch k. When the last global batch has fewer than W samples, a rank
    with none gets one (the batch's first) with loss weight 0 (:meth:`loss_scale`), so every rank
    runs the same number of steps.
    """

    def __init__(self, dataset, batch_size: int, *, seed: int, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        if batch_size % num_replicas:
            raise ConfigError(f"train.batch_size: {batch_size} is the global batch and must divide by the "
                              f"{num_replicas} processes of the torchrun job")
        self.size = len(dataset)
        self.global_batch = batch_size
        self.batch_size = batch_size // num_replicas
        self.steps = math.ceil(self.size / batch_size)
        self.generator = torch.Generator().manual_seed(seed)  # saved and restored with the training state
        self._drawn = 0
        self._perm: torch.Tensor | None = None
        self.num_samples = len(range(rank, self.size, num_replicas)) + int(self.empty(self.steps - 1))
        self.total_size = self.size

    def _global(self, step: int) -> int:
        return min(self.global_batch, self.size - step * self.global_batch)

    def count(self, step: int) -> int:
        """This rank's number of real samples in step ``step``."""
        return len(range(self.rank, max(self._global(step), 0), self.num_replicas))

    def empty(self, step: int) -> bool:
        return self.steps > 0 and self.count(step) == 0

    def loss_scale(self, step: int) -> float:
        """n_r * W / n: DDP averages gradients over W ranks, this makes it the global batch's mean."""
        return self.count(step) * self.num_replicas / self._global(step)

    def _permutation(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s order: what the 1-process run's RandomSampler yields in that epoch (drawn
        through a RandomSampler on the same generator, so it is whatever that sampler draws)."""
        if self._perm is not None and epoch == self._drawn - 1:
            return self._perm
        stream = RandomSampler(range(self.size), generator=self.generator)
        if epoch != self._drawn:  # not the next draw of the stream: replay it from the seed
            self.generator.manual_seed(self.seed)
            for _ in range(epoch):
                for _ in stream:
                    pass
            self._drawn = epoch
        self._perm = torch.tensor(list(stream), dtype=torch.long)
        self._drawn += 1
        return self._perm

    def __iter__(self):
        perm = self._permutation(self.epoch)
        indices = perm[self.rank::self.num_replicas].tolist()
        if self.empty(self.steps - 1):
            indices.append(int(perm[(self.steps - 1) * self.global_batch]))
        return iter(indices)

    def __len__(self) -> int:
        return self.num_samples


class OwnedShardSampler(ShardSampler):
    """:class:`ShardSampler` whose rank r only ever draws the samples it owns, i = r mod W (each
    epoch in a seeded shuffle of them), so that what it caches per sample (``train.view_cache``)
    is only its shard. The global batches differ from the 1-process run's; the batch sizes, the
    last batches and their loss weights are ShardSampler's."""

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.empty(self.size, dtype=torch.long)
        for r in range(self.num_replicas):  # every rank draws every shard's order, the same on all
            owned = torch.arange(r, self.size, self.num_replicas)
            perm[r::self.num_replicas] = owned[torch.randperm(len(owned), generator=generator)]
        return perm

    def __iter__(self):
        perm = self._permutation(self.epoch)
        indices = perm[self.rank::self.num_replicas].tolist()
        if self.empty(self.steps - 1):  # the weight-0 step: one of this rank's own samples
            indices.append(indices[0])
        return iter(indices)


def train_loader(dataset, batch_size: int, *, seed: int, owned: bool = False, **options):
    """The training loader of this rank: global ``batch_size`` split over the ranks
    (:class:`ShardSampler`; ``owned``: :class:`OwnedShardSampler`); ``options``: the loader's
    others (workers, pin_memory)."""
    kind = OwnedShardSampler if owned else ShardSampler
    sampler = kind(dataset, batch_size, seed=seed, num_replicas=dist.get_world_size(), rank=dist.get_rank())
    return dataset.loader(sampler.batch_size, sampler=sampler, **options)


def shard_indices(n: int) -> list[int] | None:
    """Positions rank r handles in a sharded pass over n samples (r, r + W, ...); None outside DDP."""
    if not active():
        return None
    return list(range(dist.get_rank(), n, dist.get_world_size()))


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_shards(local: torch.Tensor, n: int) -> torch.Tensor:
    """The rows of all ranks' :func:`shard_indices` passes, back in dataset order ([n, ...])."""
    if not active():
        return local
    world, me = dist.get_world_size(), dist.get_rank()
    rows = math.ceil(n / world)
    padded = local.new_zeros((rows, *local.shape[1:]))
    padded[: len(local)] = local
    device = _comm_device()
    parts = [torch.empty_like(padded, device=device) for _ in range(world)]
    dist.all_gather(parts, padded.to(device))
    out = local.new_empty((n, *local.shape[1:]))
    for r, part in enumerate(parts):
        count = len(range(r, n, world))
        out[r::world] = part[:count].to(local.device)
    assert len(range(me, n, world)) == len(local)
    return out


# --- training ------------------------------------------------------------------------------
class _Step(nn.Module):
    """The task's training step as a module's forward, for DDP to wrap."""

    def __init__(self, task: nn.Module):
        super().__init__()
        self.task = task

    def forward(self, batch, progress: float, teacher_batch=None):
        return self.task.training_step(batch, progress, teacher_batch=teacher_batch)


def wrap(task: nn.Module, device: torch.device):
    """``task.training_step``, through DistributedDataParallel under torchrun.

    DDP holds the task's trained parameters (student, adapters, losses); the frozen teachers'
    weights and buffers are left out of its synchronisation.
    """
    if not active():
        return task.training_step
    from torch.nn.parallel import DistributedDataParallel

    step = _Step(task)
    frozen = [f"task.{name}" for name, _ in [*task.named_parameters(), *task.named_buffers()]
              if name.startswith("teachers.")]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step, frozen)
    device = torch.device(device)
    return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over all ranks (float64 on the way), on ``values``' device."""
    if not active():
        return values
    buffer = values.detach().to(_comm_device(), torch.float64).clone()
    dist.all_reduce(buffer)
    return buffer.to(values.device, values.dtype)


def reduce_epoch(sums: dict[str, float], correct: int, seen: int) -> tuple[dict[str, float], int, int]:
    """An epoch's per-rank metric sums, summed over all ranks."""
    if not active():
        return sums, correct, seen
    keys = list(sums)  # the same insertion order on every rank
    total = all_reduce_sum(torch.tensor([sums[k] for k in keys] + [correct, seen], dtype=torch.float64))
    values = total.tolist()
    return dict(zip(keys, values[: len(keys)])), int(round(values[-2])), int(round(values[-1]))


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (e.g. BatchNorm running statistics) on every rank."""
    if not active():
        return
    device = _comm_device()
    for buffer in model.buffers():
        moved = buffer.detach().to(device)
        dist.broadcast(moved, 0)
        buffer.data.copy_(moved.to(buffer.device))


@torch.no_grad()
def accuracy_on(model: nn.Module, dataset, *, device, batch_size: int) -> float:
    """Accuracy of ``model`` on ``dataset``; under DDP each rank predicts its shard (no padding) and
    the correct counts are summed, so the result equals the 1-process one."""
    from ..evaluate.metrics import accuracy, predict

    if not active():
        logits, labels = predict(model, dataset, device=device, batch_size=batch_size)
        return accuracy(logits, labels)
    sync_buffers(model)
    was_training = model.training
    model.eval()
    from ..data.batch import to_device

    correct = 0
    for batch in dataset.loader(batch_size, sampler=shard_indices(len(dataset))):
        logits = model(to_device(batch, device)).float().cpu()
        correct += int((logits.argmax(1) == batch["label"]).sum())
    model.train(was_training)
    n = len(dataset)
    total = int(all_reduce_sum(torch.tensor([correct], dtype=torch.float64))[0])
    # float32 like metrics.accuracy's mean of 0/1 values, so the value is the 1-process one
    return float(torch.tensor(float(total), dtype=torch.float32) / n) if n else float("nan")
