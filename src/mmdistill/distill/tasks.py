"""What the engine optimises: supervised training of one model, or distillation into a student.

A task exposes ``model`` (what is trained and evaluated), ``setup(batch, num_samples, labels=None)``
(called once before the optimiser is built, to create shape-dependent parameters; ``labels`` are the
training set's), ``trainable_parameters()``, ``training_step(batch, progress) -> (logits, {term:
weighted loss})`` and ``teardown()`` (called when a fit ends or fails, to release what the fit set
up: forward hooks, the teacher cache); the engine minimises the sum of the terms. Teacher training
and distillation therefore share one loop.
``training_step`` also receives ``teacher_batch``, what the teachers see by ``train.augment_teacher``
(see :func:`mmdistill.data.augment.training_inputs`).
"""
from __future__ import annotations

import contextlib
from collections import Counter

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..losses import DistillationLoss
from ..losses.labels import label_loss
from ..errors import ConfigError
from . import distributed
from .adapters import Adapter
from .ensemble import TeacherEnsemble
from .hooks import OUTPUT, FeatureCapture


class SupervisedTask(nn.Module):
    """Cross-entropy training of ``model``: loss = CE(model(x), y)."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def setup(self, batch, num_samples: int, labels: torch.Tensor | None = None) -> None:
        pass

    def teardown(self) -> None:
        pass

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

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


class DistillationTask(nn.Module):
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
    """

    def __init__(self, student: nn.Module, teachers: nn.Module | Sequence[nn.Module], terms: Sequence[Term],
                 gamma: float = 1.0, *, teacher_names: Sequence[str] | None = None,
                 ensemble: TeacherEnsemble | None = None):
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
        return [capture.run(teacher, batch) for teacher, capture in zip(self.teachers, self._teacher_captures)]

    @torch.no_grad()
    def cache_teacher_outputs(self, dataset, *, batch_size: int, device, storage: str = "memory",
                              dtype: str = "float32", folder=None) -> None:
        """Run every frozen teacher once over ``dataset`` and serve its outputs by sample index.

        Valid only while the teachers see the dataset's own samples, unaltered: the engine builds
        the cache only when they do (no mixup or cutmix; ``train.augment`` only with
        ``augment_teacher: clean``; ``consistent`` only without augmentation, modality dropout and
        time shifts), for this run, and drops it at the end, so it can never be stale (teachers are
        frozen and in eval mode). It holds the logits and every hooked feature the terms read,
        in memory or in memory-mapped files under ``folder`` (see :mod:`mmdistill.distill.cache`).
        Under torchrun each rank runs the teachers over its shard of the samples and the shards
        are all-gathered (see :mod:`.distributed`) before they are written to the cache.
        """
        from ..data.batch import to_device
        from .cache import TeacherCache

        self.clear_cache()
        cache = TeacherCache(len(dataset), storage=storage, dtype=dtype, folder=folder)
        try:
            shard = distributed.shard_indices(len(dataset))
            if shard is None:
                for batch in dataset.loader(batch_size):
                    cache.write(batch["index"], self.teacher_outputs(to_device(batch, device)))
            else:  # each rank computes its shard; every rank's cache gets all rows
                outputs: list[dict[str, list]] = [dict() for _ in self.teachers]
                for batch in dataset.loader(batch_size, sampler=shard):
                    for store, out in zip(outputs, self.teacher_outputs(to_device(batch, device))):
                        for path, value in out.items():
                            store.setdefault(path, []).append(value)
                gathered = [{path: distributed.gather_shards(torch.cat(values), len(dataset))
                             for path, values in store.items()} for store in outputs]
                cache.write(torch.arange(len(dataset)), gathered)
        except BaseException:
            cache.close()
            raise
        self._cache = cache

    @torch.no_grad()
    def cache_view_outputs(self, dataset, views, *, batch_size: int, device, storage: str = "mmap",
                           dtype: str = "float16", topk: int | None = None, folder=None) -> None:
        """Run every frozen teacher once on each of the K views of each sample this process trains
        on (all of them; under torchrun its fixed shard, see :mod:`mmdistill.distill.views`) and
        serve the outputs by (sample, view) for the rest of the fit."""
        from ..data.batch import to_device
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
                    cache.write(batch["index"], chosen, self.teacher_outputs(to_device(teacher, device)))
        except BaseException:
            cache.close()
            raise
        self._view_cache = cache

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
        from ..data.batch import to_device

        was_training = self.training
        self.eval()
        try:
            if self._val_outputs is None or self._val_outputs[0] is not dataset:
                outputs = [[capture.run(teacher, to_device(batch, device))
                            for teacher, capture in zip(self.teachers, self._teacher_captures)]
                           for batch in dataset.loader(batch_size)]
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
        from ..data.batch import to_device

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
