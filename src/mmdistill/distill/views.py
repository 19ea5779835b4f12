"""The augmented-view teacher cache (``train.view_cache``): consistent teaching for the price of a read.

Consistent teaching (Beyer et al., CVPR 2022) runs the teacher on exactly the augmented input the
student sees, which costs a teacher forward per step. Following FKD (Shen & Xing, ECCV 2022) and
dataset reinforcement (Faghri et al., ICCV 2023), the teachers' outputs are instead computed once
for K augmented *views* of every training sample, and stored with what regenerates each view:

- view k of sample i is the training pipeline (:func:`mmdistill.data.augment.training_inputs`:
  ``augment``, ``modality_dropout``, ``time_shift``) applied to sample i with every random draw
  taken from its own ``torch.Generator().manual_seed(view_seed(i, k))`` (a batch of views is
  computed at once, each sample drawing from its own stream), so the view is a function of
  (i, k, the seed) and nothing else: not of the batch it lands in, the epoch, or the process;
- in epoch e each sample draws one of its K views from a generator seeded by (seed, e), so a
  resumed run draws what the uninterrupted one drew;
- the student sees the regenerated view; the loss reads the teachers' outputs for (i, k) from the
  cache (what the teachers saw is the view under ``augment_teacher: consistent``, the view before
  modality dropout and time shifts under ``same``).

Storage: :class:`ViewCache`, rows ``position(i) * K + k`` of :class:`~mmdistill.distill.cache.TeacherCache`
arrays (``memory`` or ``mmap``; float32 or float16), optionally only the top-k teacher logits per
row, with the mean of the others filling the rest back in. Under torchrun each rank owns a fixed
shard of the samples (i = r mod W), trains on its own shard only (:class:`~mmdistill.distill.distributed.OwnedShardSampler`)
and so builds and holds only that shard's rows.

Mixup and CutMix pair samples within a batch, which a per-sample view cannot hold: the config refuses them
with a view cache (``cache: false`` runs the teachers on the same views online: the reference).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import StrictBool

from ..data.augment import PerSample, training_inputs
from ..errors import ConfigError
from ..options import PositiveInt, Strict
from .cache import TeacherCache
from .hooks import OUTPUT


class ViewCacheConfig(Strict):
    """``train.view_cache``: teacher outputs for ``views`` seeded augmented views of every training
    sample, computed once before training (see :mod:`mmdistill.distill.views`)."""

    views: PositiveInt = 8  # K views per sample; each epoch a sample draws one of them (seeded)
    dtype: Literal["float32", "float16"] = "float16"  # storage of the teacher outputs
    # keep only the k largest teacher logits per view (plus the mean of the others, which fills them
    # back in); None: all. Features the loss terms read are stored whole
    topk: PositiveInt | None = None
    storage: Literal["memory", "mmap"] = "mmap"  # mmap: np.memmap files, deleted when the fit ends
    seed: int | None = None  # seed of the views (None: the run's seed)
    # false: the teachers run on each regenerated view instead (the same views, no cache; the reference)
    cache: StrictBool = True


#: view seeds are base + i * K + k with base = (seed mod 2^23 + 1) * 2^40; epoch e's draw of views
#: uses base - 1 - e, below every view seed of the run
_STRIDE = 1 << 40


class Views:
    """The K seeded views of every sample of a training set under ``cfg`` (a TrainConfig with
    ``view_cache`` set). ``kinds``: modality -> kind."""

    def __init__(self, cfg, kinds: dict[str, str], num_samples: int, seed: int):
        self.cfg, self.kinds, self.num_samples = cfg, kinds, num_samples
        self.count = cfg.view_cache.views
        view_seed = cfg.view_cache.seed if cfg.view_cache.seed is not None else seed
        self.base = (view_seed % (1 << 23) + 1) * _STRIDE
        self._epoch, self._table = None, None

    def view_seed(self, index: int, view: int) -> int:
        """The seed from which view ``view`` of sample ``index`` is regenerated."""
        return self.base + index * self.count + view

    def choice(self, epoch: int) -> torch.Tensor:
        """[N] the view each sample sees in epoch ``epoch`` (0-based), uniform over the K views."""
        if self._epoch != epoch:
            generator = torch.Generator().manual_seed(self.base - 1 - epoch)
            self._table = torch.randint(self.count, (self.num_samples,), generator=generator)
            self._epoch = epoch
        return self._table

    def make(self, batch: dict, views: torch.Tensor) -> tuple[dict, dict]:
        """(student input, teacher input) of each sample's view ``views[b]``, carrying ``view_index``:
        the training pipeline on the whole batch, every draw of sample b from its own generator
        (:class:`~mmdistill.data.augment.PerSample`), so each sample's result is the one it gets alone."""
        views = views.cpu()
        seeds = [self.view_seed(i, k) for i, k in zip(batch["index"].cpu().tolist(), views.tolist())]
        rng = PerSample(seeds)
        student, teacher = training_inputs(batch, self.cfg, self.kinds, rng, rng)
        student, teacher = dict(student), dict(teacher)
        views = views.to(batch["index"].device)
        student["view_index"] = teacher["view_index"] = views
        return student, teacher

    def epoch_views(self, batch: dict, epoch: int) -> tuple[dict, dict]:
        """:meth:`make` with each sample's view for epoch ``epoch``."""
        return self.make(batch, self.choice(epoch)[batch["index"].cpu()])


class ViewCache:
    """Teacher outputs for K views of the samples ``owned`` (sorted dataset indices), row
    ``position(i) * K + k``. ``topk``: of a teacher's logits ([B, C]) keep the k largest values,
    their classes and the mean of the other C - k, which :meth:`read` puts back in their place
    (exact for k = C - 1 up to rounding; otherwise the targets' tail is flattened to its mean)."""

    def __init__(self, owned: torch.Tensor, num_samples: int, views: int, *, storage: str, dtype: str,
                 topk: int | None, folder=None):
        self.owned, self.count, self.topk = owned, views, topk
        self.position = torch.full((num_samples,), -1, dtype=torch.long)
        self.position[owned] = torch.arange(len(owned))
        rows = len(owned) * views
        self.values = TeacherCache(rows, storage=storage, dtype=dtype, folder=folder)
        self.classes = TeacherCache(rows, storage=storage, dtype="float32", folder=folder) if topk else None
        self.num_classes: dict[int, int] = {}

    def rows(self, index: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        position = self.position[index.cpu()]
        if bool((position < 0).any()):
            missing = int(index.cpu()[position < 0][0])
            raise RuntimeError(f"view cache: sample {missing} is not in this process's shard")
        return position * self.count + views.cpu()

    def nbytes(self) -> int:
        return self.values.nbytes() + (self.classes.nbytes() if self.classes else 0)

    def write(self, index: torch.Tensor, views: torch.Tensor, outputs: list[dict[str, torch.Tensor]]) -> None:
        rows = self.rows(index, views)
        if not self.topk:
            self.values.write(rows, outputs)
            return
        kept, classes = [], []
        for teacher, out in enumerate(outputs):
            out = dict(out)
            logits = out.pop(OUTPUT, None)
            picked = {}
            if logits is not None:
                c = logits.shape[1]
                if logits.dim() != 2 or self.topk >= c:
                    raise ConfigError(f"train.view_cache.topk: {self.topk} must be less than teacher {teacher}'s "
                                      f"{c} logits")
                self.num_classes[teacher] = c
                values, which = logits.float().topk(self.topk, dim=1)
                out[OUTPUT] = values
                out[OUTPUT + ".rest"] = ((logits.float().sum(1) - values.sum(1)) / (c - self.topk)).unsqueeze(1)
                picked[OUTPUT] = which.float()
            kept.append(out)
            classes.append(picked)
        self.values.write(rows, kept)
        self.classes.write(rows, classes)

    def read(self, index: torch.Tensor, views: torch.Tensor, device) -> list[dict[str, torch.Tensor]]:
        rows = self.rows(index, views)
        out = self.values.read(rows, device)
        if not self.topk:
            return out
        classes = self.classes.read(rows, device)
        for teacher, (store, picked) in enumerate(zip(out, classes)):
            if OUTPUT in picked:
                rest = store.pop(OUTPUT + ".rest")
                full = rest.expand(rest.shape[0], self.num_classes[teacher]).clone()
                store[OUTPUT] = full.scatter_(1, picked[OUTPUT].long(), store[OUTPUT])
        return out

    def close(self) -> None:
        self.values.close()
        if self.classes is not None:
            self.classes.close()
