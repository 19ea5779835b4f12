"""What the engine optimises: supervised training of one model, or distillation into a student.

Both are a :class:`Task`, the contract the engine drives; teacher training and distillation
therefore share one loop.
"""
from __future__ import annotations

import contextlib
from collections import Counter

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..data.batch import to_device
from ..losses import DistillationLoss
from ..losses.labels import label_loss
from ..errors import ConfigError
from . import distributed
from .adapters import Adapter
from .cache import TeacherCache
from .ensemble import TeacherEnsemble
from .hooks import OUTPUT, FeatureCapture


class Task(nn.Module):
    """What :class:`~mmdistill.distill.engine.Trainer` trains: ``model`` (what is trained and
    evaluated) and ``training_step``; every other hook has a no-op default.

    The engine calls, in order: :meth:`setup`, the teacher-output cache hooks
    (:meth:`cache_teacher_outputs`, :meth:`cache_view_outputs`), :meth:`trainable_parameters` (for
    the optimiser), :meth:`step_modules` (for ``train.compile``), then per step
    :meth:`training_step`, per epoch :meth:`epoch_stats` (and :meth:`validation_loss` when
    :attr:`label_free`), and :meth:`teardown` when the fit ends or fails.
    """

    model: nn.Module
    #: True when the objective reads no label, so validation accuracy says nothing: the engine then
    #: selects the best epoch by :meth:`validation_loss`
    label_free: bool = False

    def setup(self, batch, num_samples: int, labels: torch.Tensor | None = None) -> None:
        """Called once before the optimiser is built, with a first training batch, to create
        shape-dependent parameters; ``labels`` are the training set's."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def training_step(self, batch, progress: float = 0.0, teacher_batch=None):
        """``(logits, {term: weighted loss})`` for ``batch``; the engine minimises the sum of the terms.
        ``progress``: the fraction of training done; ``teacher_batch``: what teachers see, by
        ``train.augment_teacher`` (see :func:`mmdistill.data.augment.training_inputs`)."""
        raise NotImplementedError

    def epoch_stats(self) -> dict[str, float]:
        """Extra numbers for the epoch's record (``metrics.jsonl``), read once per epoch."""
        return {}

    def validation_loss(self, dataset, *, batch_size: int, device) -> float:
        """The objective on ``dataset``, for a :attr:`label_free` task's model selection."""
        raise NotImplementedError(f"{type(self).__name__} is label-free but has no validation_loss")

    def step_modules(self) -> list[nn.Module]:
        """The modules whose forward runs every training step (what ``train.compile`` compiles)."""
        return [self.model]

    def cache_teacher_outputs(self, dataset, *, batch_size: int, device, storage: str = "memory",
                              dtype: str = "float32", folder=None) -> None:
        """Called when the teachers see ``dataset``'s own samples unaltered (``train.cache_teacher``):
        compute their outputs once and serve them by sample index. No teachers: nothing to do."""

    def cache_view_outputs(self, dataset, views, *, batch_size: int, device, storage: str = "mmap",
                           dtype: str = "float16", topk: int | None = None, folder=None) -> int | None:
        """``train.view_cache``: compute the teachers' outputs on each seeded view once; returns the
        bytes held (None: no teachers, nothing cached)."""
        return None

    def teardown(self) -> None:
        """End of a fit, successful or not: release what the fit set up (hooks, caches)."""


class SupervisedTask(Task):
    """Cross-entropy training of ``model``: loss = CE(model(x), y)."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def training_step(self, batch, progress: float = 0.0, teacher_batch=None):
        logits = self.model(batch)
        return logits, {"ce": label_loss(logits, batch, self.label_smoothing)}


@dataclass
class Term:
    """One weighted distillation term comparing ``student_path`` with ``teacher_path``."""

    name: str
    loss: DistillationLoss
    weight: float = 1.0
    student_path: str = OUTPUT
    teacher_path: str = OUTPUT
    teacher: int | None = None  # index of the teacher it reads; None: the only one, or the ensemble
    warmup: float = 0.0  # fraction of training over which the weight ramps linearly from 0

    def weight_at(self, progress: float) -> float:
        if self.warmup > 0 and progress < self.warmup:
            return self.weight * progress / self.warmup
        return self.weight


def term_keys(terms: Sequence[Term], teacher_names: Sequence[str]) -> list[str]:
    """How logs and reports name each term: by the loss, and, where several terms share a loss, by
    what it reads: ``nst[audio]`` for ``encoders.audio.*``, ``kd[teacher1]`` for one teacher's logits
    among several, the module paths (``student<-teacher`` when they differ) otherwise; terms that
    read the same thing are numbered (``kd#1``, ``kd#2``), never named by a bare position."""
    def reads(term: Term) -> str:
        path = term.student_path if term.student_path == term.teacher_path else f"{term.student_path}<-{term.teacher_path}"
        parts = path.split(".")
        what = parts[1] if len(parts) >= 2 and parts[0] == "encoders" and term.student_path == term.teacher_path \
            else ("" if path == OUTPUT else path)
        teacher = "" if term.teacher is None or len(teacher_names) < 2 else teacher_names[term.teacher]
        return ":".join(x for x in (teacher, what) if x) or (
            "ensemble" if term.teacher is None and len(teacher_names) > 1 else "logits")

    counts = Counter(t.name for t in terms)
    keys = [t.name if counts[t.name] == 1 else f"{t.name}[{reads(t)}]" for t in terms]
    seen = Counter(keys)  # two terms reading the same thing (e.g. two kd temperatures): number them
    index = Counter()
    for i, key in enumerate(keys):
        if seen[key] > 1:
            index[key] += 1
            keys[i] = f"{key}#{index[key]}"
    return keys


class DistillationTask(Task):
    """total = gamma * CE(student(x), y) + sum_i weight_i * term_i(student, teacher).

    Teachers are frozen and kept in eval mode whatever ``train()`` is called with. When a feature
    term compares features of different shapes and its loss needs equal shapes, an
    :class:`~mmdistill.distill.adapters.Adapter` is created in :meth:`setup`; adapters and the
    losses' own parameters are the task's ``extra`` parameters, trained with the student but not
    part of it.

    With several teachers, a logit term whose ``teacher`` is None compares the student with the
    teachers' per-sample fusion by ``ensemble`` (a :class:`~mmdistill.distill.ensemble.TeacherEnsemble`,
    default: plain average); feature terms name their teacher. The mean weight of each teacher
    over the epoch is reported by :meth:`epoch_stats`.

    ``precomputed_outputs``: the teachers' outputs on every training sample, computed outside the
    task (e.g. once for several students; :meth:`compute_teacher_outputs` makes them):
    ``[{path: [N, ...]}]`` per teacher, row ``i`` for sample ``i`` of the training set, with the
    logits (``OUTPUT``) and every feature the terms read. They fill the teacher cache instead of a
    pass of the teachers, so they serve where the engine builds the cache (``train.cache_teacher``
    and teachers that see the stored samples unaltered); elsewhere the teachers run every step.
    """

    def __init__(self, student: nn.Module, teachers: nn.Module | Sequence[nn.Module], terms: Sequence[Term],
                 gamma: float = 1.0, *, teacher_names: Sequence[str] | None = None,
                 ensemble: TeacherEnsemble | None = None,
                 precomputed_outputs: Sequence[dict[str, torch.Tensor]] | None = None):
        super().__init__()
        self.model = student
        teachers = [teachers] if isinstance(teachers, nn.Module) else list(teachers)
        if not teachers:
            raise ConfigError("distill: at least one teacher is needed")
        self.teachers = nn.ModuleList(teachers)
        for teacher in self.teachers:
            teacher.requires_grad_(False)
            teacher.eval()
        self.teacher_names = list(teacher_names or [f"teacher{i}" for i in range(len(teachers))])
        self.ensemble = ensemble or TeacherEnsemble(self.teacher_names, "average")
        self.terms = list(terms)
        several = len(self.teachers) > 1
        for i, term in enumerate(self.terms):
            if term.teacher is None and not several:
                term.teacher = 0
            elif term.teacher is None and (term.teacher_path != OUTPUT or term.student_path != OUTPUT):
                raise ConfigError(f"distill.terms[{i}].source: with several teachers a feature term names the "
                                  f"teacher it reads ({', '.join(self.teacher_names)})")
            elif term.teacher is not None and not 0 <= term.teacher < len(self.teachers):
                raise ConfigError(f"distill.terms[{i}].source: no teacher number {term.teacher}")
        self.losses = nn.ModuleList(t.loss for t in self.terms)
        self.term_keys = term_keys(self.terms, self.teacher_names)
        self.adapters = nn.ModuleDict()
        self.gamma = gamma
        self.precomputed_outputs = None if precomputed_outputs is None else list(precomputed_outputs)
        if self.precomputed_outputs is not None and len(self.precomputed_outputs) != len(self.teachers):
            raise ConfigError(f"precomputed_outputs: {len(self.precomputed_outputs)} entries for "
                              f"{len(self.teachers)} teachers; give one {{path: tensor}} per teacher")
        self._cache = None  # a TeacherCache while a fit uses one
        self._view_cache = None  # a views.ViewCache while a fit uses one
        self._val_outputs = None  # (dataset, per-batch teacher outputs) of validation_loss, for the fit
        self._weight_sums = torch.zeros(len(self.teachers), dtype=torch.float64)
        self._weight_count = 0
        uses_ensemble = any(t.teacher is None for t in self.terms)
        self._student_capture = FeatureCapture(student, [t.student_path for t in self.terms], "student")
        self._teacher_captures = [
            FeatureCapture(teacher, [t.teacher_path for t in self.terms if t.teacher == i]
                           + ([OUTPUT] if uses_ensemble else []), self.teacher_names[i])
            for i, teacher in enumerate(self.teachers)]

    def train(self, mode: bool = True):
        super().train(mode)
        for teacher in self.teachers:
            teacher.eval()
        return self

    @torch.no_grad()
    def teacher_outputs(self, batch) -> list[dict[str, torch.Tensor]]:
        """``[{path: tensor}]`` per teacher, from the cache when one is built (see :meth:`cache_teacher_outputs`)."""
        if self._view_cache is not None:
            return self._view_cache.read(batch["index"], batch["view_index"], batch["index"].device)
        if self._cache is not None:
            return self._cache.read(batch["index"], batch["index"].device)
        return self._run_teachers(batch)

    def _run_teachers(self, batch) -> list[dict[str, torch.Tensor]]:
        return [capture.run(teacher, batch) for teacher, capture in zip(self.teachers, self._teacher_captures)]

    @torch.no_grad()
    def cache_teacher_outputs(self, dataset, *, batch_size: int, device, storage: str = "memory",
                              dtype: str = "float32", folder=None) -> None:
        """Serve every frozen teacher's outputs on ``dataset`` by sample index: the
        :attr:`precomputed_outputs` when given, else a pass of the teachers over it.

        Valid only while the teachers see the dataset's own samples, unaltered: the engine builds
        the cache only when they do (no mixup or cutmix; ``train.augment`` only with
        ``augment_teacher: clean``; ``consistent`` only without augmentation, modality dropout and
        time shifts), for this run, and drops it at the end, so it can never be stale (teachers are
        frozen and in eval mode). It holds the logits and every hooked feature the terms read,
        in memory or in memory-mapped files under ``folder`` (see :mod:`mmdistill.distill.cache`).
        """
        self.clear_cache()
        cache = TeacherCache(len(dataset), storage=storage, dtype=dtype, folder=folder)
        try:
            if self.precomputed_outputs is not None:
                rows = {len(v) for out in self.precomputed_outputs for v in out.values()}
                if rows != {len(dataset)}:
                    raise ConfigError(f"precomputed_outputs: {', '.join(map(str, sorted(rows)))} rows for a "
                                      f"training set of {len(dataset)} samples; give one row per sample")
                cache.write(torch.arange(len(dataset)), self.precomputed_outputs)
            else:
                self._pass_teachers(dataset, cache, batch_size=batch_size, device=device)
        except BaseException:
            cache.close()
            raise
        self._cache = cache

    @torch.no_grad()
    def compute_teacher_outputs(self, dataset, *, batch_size: int, device) -> list[dict[str, torch.Tensor]]:
        """Every teacher's outputs on every sample of ``dataset``, in memory: ``[{path: [N, ...]}]`` per
        teacher (the logits and the features the terms read), what ``precomputed_outputs`` takes."""
        cache = TeacherCache(len(dataset))
        self._pass_teachers(dataset, cache, batch_size=batch_size, device=device)
        return cache.arrays

    def _pass_teachers(self, dataset, cache: TeacherCache, *, batch_size: int, device) -> None:
        """Write the teachers' outputs on ``dataset`` into ``cache``. Under torchrun each rank runs the
        teachers over its shard of the samples and the shards are all-gathered (see
        :mod:`.distributed`) before they are written."""
        shard = distributed.shard_indices(len(dataset))
        if shard is None:
            for batch in dataset.loader(batch_size):
                cache.write(batch["index"], self._run_teachers(to_device(batch, device)))
            return
        outputs: list[dict[str, list]] = [dict() for _ in self.teachers]  # each rank computes its shard
        for batch in dataset.loader(batch_size, sampler=shard):
            for store, out in zip(outputs, self._run_teachers(to_device(batch, device))):
                for path, value in out.items():
                    store.setdefault(path, []).append(value)
        gathered = [{path: distributed.gather_shards(torch.cat(values), len(dataset))
                     for path, values in store.items()} for store in outputs]
        cache.write(torch.arange(len(dataset)), gathered)  # every rank's cache gets all rows

    @torch.no_grad()
    def cache_view_outputs(self, dataset, views, *, batch_size: int, device, storage: str = "mmap",
                           dtype: str = "float16", topk: int | None = None, folder=None) -> int:
        """Run every frozen teacher once on each of the K views of each sample this process trains
        on (all of them; under torchrun its fixed shard, see :mod:`mmdistill.distill.views`) and
        serve the outputs by (sample, view) for the rest of the fit; returns the bytes held."""
        from .views import ViewCache

        self.clear_cache()
        shard = distributed.shard_indices(len(dataset))
        owned = torch.arange(len(dataset)) if shard is None else torch.tensor(shard, dtype=torch.long)
        cache = ViewCache(owned, len(dataset), views.count, storage=storage, dtype=dtype, topk=topk, folder=folder)
        try:
            for batch in dataset.loader(batch_size, sampler=owned.tolist()):
                for k in range(views.count):
                    chosen = torch.full((len(batch["index"]),), k, dtype=torch.long)
                    _, teacher = views.make(batch, chosen)
                    cache.write(batch["index"], chosen, self._run_teachers(to_device(teacher, device)))
        except BaseException:
            cache.close()
            raise
        self._view_cache = cache
        return cache.nbytes()

    def clear_cache(self) -> None:
        if self._cache is not None:
            self._cache.close()
        self._cache = None
        if self._view_cache is not None:
            self._view_cache.close()
        self._view_cache = None
        self._val_outputs = None

    @property
    def label_free(self) -> bool:
        """True when the objective reads neither a label nor the student's logits: ``gamma == 0``
        and feature terms only (e.g. a student learning a pretrained encoder's embedding). The
        student's head is then untrained, so its validation accuracy says nothing, and the engine
        selects the best epoch by :meth:`validation_loss` instead."""
        return not self.gamma and all(t.student_path != OUTPUT and t.teacher_path != OUTPUT
                                      and not getattr(t.loss, "needs_labels", False) for t in self.terms)

    @torch.no_grad()
    def validation_loss(self, dataset, *, batch_size: int, device) -> float:
        """The weighted sum of the terms (at their full weight) on ``dataset``, averaged over its
        samples, with the student, adapters and losses in eval mode. The teachers' outputs on it
        are computed at the first call of a fit and kept until the fit ends (they are frozen)."""
        was_training = self.training
        self.eval()
        try:
            if self._val_outputs is None or self._val_outputs[0] is not dataset:
                outputs = [self._run_teachers(to_device(batch, device)) for batch in dataset.loader(batch_size)]
                self._val_outputs = (dataset, outputs)
            total, count = 0.0, 0
            for batch, teachers in zip(dataset.loader(batch_size), self._val_outputs[1]):
                batch = to_device(batch, device)
                student = self._student_capture.run(self.model, batch)
                value = 0.0
                for i, term in enumerate(self.terms):
                    s = student[term.student_path]
                    if str(i) in self.adapters:
                        s = self.adapters[str(i)](s)
                    value += term.weight * term.loss(s, teachers[term.teacher][term.teacher_path], index=None)
                n = len(batch["label"])
                total, count = total + float(value) * n, count + n
        finally:
            self.train(was_training)
        return total / max(count, 1)

    def step_modules(self) -> list[nn.Module]:
        """The student, and the teachers unless their outputs come from a cache."""
        cached = self._cache is not None or self._view_cache is not None
        return [self.model] + ([] if cached else list(self.teachers))

    def _captures(self) -> list[FeatureCapture]:
        return [self._student_capture, *self._teacher_captures]

    def teardown(self) -> None:
        """End of a fit, successful or not: unregister every forward hook and drop the teacher cache.

        The hooks are registered by the first :meth:`training_step` (setup and the cache register
        them per forward only), so after teardown the models carry none of this task's hooks.
        """
        for capture in self._captures():
            capture.remove()
        self.clear_cache()

    def setup(self, batch, num_samples: int, labels: torch.Tensor | None = None) -> None:
        """Create adapters and bind the losses; ``labels`` (the training set's) go to losses with
        ``needs_labels``."""
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            student = self._student_capture.run(self.model, batch)
        self.model.train(was_training)
        teachers = self.teacher_outputs(batch)
        device = next(self.model.parameters()).device
        for i, term in enumerate(self.terms):
            s = student[term.student_path]
            t = teachers[0][OUTPUT] if term.teacher is None else teachers[term.teacher][term.teacher_path]
            if getattr(term.loss, "needs_adapter", False) and s.shape[1:] != t.shape[1:]:
                with _memory_named(f"distill.terms[{i}]", f"the adapter of loss {term.name!r}"):
                    self.adapters[str(i)] = Adapter(s.shape, t.shape).to(device)
                with torch.no_grad():
                    s = self.adapters[str(i)](s)
            extra = {"labels": labels} if getattr(term.loss, "needs_labels", False) else {}
            if extra and labels is None:
                raise ConfigError(f"distill.terms[{i}]: loss {term.name!r} needs the training labels")
            needs_label = extra or getattr(term.loss, "needs_target", False)
            if needs_label and labels is not None and bool((labels < 0).any()):
                raise ConfigError(f"distill.terms[{i}]: loss {term.name!r} needs every training sample's label, but "
                                  f"{int((labels < 0).sum())} are unlabelled; use a loss without labels (e.g. kd)")
            with _memory_named(f"distill.terms[{i}]", f"loss {term.name!r} with these options"):
                term.loss.bind(s.shape, t.shape, num_samples, **extra)
                term.loss.to(device)

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters()) + list(self.losses.parameters())

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad] + self.extra_parameters()

    def training_step(self, batch, progress: float = 0.0, teacher_batch=None):
        """``teacher_batch``: what the teachers see, when it differs from the student's ``batch``
        (e.g. under modality dropout with ``augment_teacher: same`` the teachers see every sample
        whole; with ``clean`` the unaugmented input; see :func:`mmdistill.data.augment.training_inputs`)."""
        teacher_batch = batch if teacher_batch is None else teacher_batch
        for capture in self._captures():  # until teardown (see there)
            capture.attach()
        teachers = self.teacher_outputs(teacher_batch)
        student = self._student_capture.run(self.model, batch)
        logits = student[OUTPUT]
        losses = {}
        if self.gamma:
            losses["ce"] = self.gamma * label_loss(logits, batch)
        stacked = weights = None
        if any(t.teacher is None for t in self.terms):
            stacked = torch.stack([out[OUTPUT].detach().float() for out in teachers])
            weights = self.ensemble.weights(stacked, teacher_batch)
            if self._weight_sums.device != weights.device:  # summed where they are: no host sync per step
                dtype = torch.float32 if weights.device.type == "mps" else torch.float64
                self._weight_sums = self._weight_sums.to(weights.device, dtype)
            self._weight_sums += weights.detach().sum(0)
            self._weight_count += weights.shape[0]
        for i, term in enumerate(self.terms):
            s = student[term.student_path]
            if str(i) in self.adapters:
                s = self.adapters[str(i)](s)
            if term.teacher is None:
                target = term.loss.mix_teachers(stacked, weights)
            else:
                target = teachers[term.teacher][term.teacher_path].detach()
            value = term.loss(s, target, target=batch["label"], index=batch.get("index"))
            losses[self.term_keys[i]] = term.weight_at(progress) * value
        return logits, losses

    def epoch_stats(self) -> dict[str, float]:
        """Mean per-sample weight of each teacher since the last call (empty without an ensemble)."""
        if distributed.active():  # every rank's samples
            self._weight_sums = distributed.all_reduce_sum(self._weight_sums)
            self._weight_count = int(distributed.all_reduce_sum(torch.tensor([self._weight_count]))[0])
        if not self._weight_count:
            return {}
        means = self._weight_sums.cpu().double() / self._weight_count
        self._weight_sums.zero_()
        self._weight_count = 0
        return {f"teacher_weight_{name}": float(m) for name, m in zip(self.teacher_names, means)}

    @torch.no_grad()
    def sample_weights(self, dataset, *, batch_size: int = 1024, device="cpu") -> torch.Tensor:
        """[N, K] ensemble weight of each teacher on each sample of ``dataset`` (unaugmented)."""
        out = []
        for batch in dataset.loader(batch_size):
            batch = to_device(batch, device)
            logits = [teacher(batch).float() for teacher in self.teachers]
            out.append(self.ensemble.weights(logits, batch).cpu())
        return torch.cat(out)


@contextlib.contextmanager
def _memory_named(key: str, what: str):
    """Turn an allocation the machine cannot serve (a loss's heads or banks sized by its options,
    e.g. crd ``feat_dim: 1e9``) into a ConfigError naming ``key``, instead of a traceback."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError) as err:
        raise ConfigError(f"{key}: {what} needs more memory than this machine has ({_first_line(err)})") from None
    except RuntimeError as err:
        if "allocate" not in str(err):
            raise
        raise ConfigError(f"{key}: {what} needs more memory than this machine has ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1].split("DefaultCPUAllocator: ")[-1] if text else type(err).__name__
