"""In-memory multimodal datasets: one tensor per modality, labels, and presence masks."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import ConfigError, DataError
from .batch import RESERVED_KEYS, UNLABELLED
from .kinds import DECLARABLE, KINDS, MODALITY_KINDS  # noqa: F401  (MODALITY_KINDS: the kinds' table, re-exported)


@dataclass(frozen=True)
class ModalitySpec:
    """What a model needs to know about a modality: its kind and per-sample shape."""

    name: str
    kind: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ModalitySpec":
        return cls(d["name"], d["kind"], tuple(d["shape"]))


def check_kind(where: str, modality: str, kind: str, shape: Sequence[int]) -> None:
    """Refuse a declared ``kinds`` entry that the samples' shape cannot be (the kind's ``axes`` in
    :data:`~mmdistill.data.kinds.KINDS`: an image or spectrogram is [C, H, W] or [H, W], a vector
    [D], a sequence [T, D])."""
    axes = KINDS[kind].axes if kind in DECLARABLE else None
    if axes is not None and len(shape) not in axes:
        raise DataError(f"{where}: kinds.{modality}: {kind} data has {' or '.join(map(str, axes))} axes per sample, "
                        f"but {modality!r} has shape {list(shape)}")


def guess_kind(shape: Sequence[int]) -> str:
    """image for [C,H,W] or [H,W], sequence for [T,D], vector for [D]."""
    if len(shape) == 1:
        return "vector"
    if len(shape) == 3 or (len(shape) == 2 and shape[0] == shape[1]):
        return "image"
    return "sequence"


def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the names, dtypes, shapes and bytes of ``state``'s tensors."""
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class BaseDataset(Dataset, abc.ABC):
    """What every dataset offers the engine, whether its samples are in memory or on disk.

    A subclass sets ``modalities`` (``{name: [N, ...]}``, tensors or anything indexable by a list
    of rows), ``labels`` (LongTensor [N], -1 unlabelled), ``present`` (``{name: BoolTensor [N]}``),
    ``specs``, ``num_classes`` and ``name``, and implements :meth:`subset`, :meth:`select` and
    :meth:`with_labels`. It then gets batching, loaders, the labelled views, the split a file
    gives (``val_mask``) and a fingerprint; a dataset whose samples stay on disk overrides
    :meth:`fingerprint`.
    """

    name: str
    labels: torch.Tensor
    modalities: Mapping
    present: Mapping[str, torch.Tensor]
    specs: dict[str, "ModalitySpec"]
    num_classes: int
    #: the recording (or other unit) each sample belongs to; whole groups go to one side of a split
    groups: torch.Tensor | None = None
    #: bool [N], the training samples a data file marks ``val``: :func:`~mmdistill.data.build_data`
    #: takes them as the validation set (:meth:`split_file_val`) instead of drawing one
    val_mask: np.ndarray | None = None

    @abc.abstractmethod
    def subset(self, indices, name: str | None = None) -> "BaseDataset":
        """The samples at ``indices`` (renamed ``name``), in that order."""

    @abc.abstractmethod
    def select(self, modalities: Sequence[str]) -> "BaseDataset":
        """The same samples restricted to ``modalities`` (for a student that sees fewer)."""

    @abc.abstractmethod
    def with_labels(self, labels: torch.Tensor) -> "BaseDataset":
        """The same samples with ``labels`` (e.g. some set to -1, unlabelled)."""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> torch.Tensor:
        """BoolTensor[N]: which samples carry a label."""
        return self.labels >= 0

    @property
    def num_labelled(self) -> int:
        return int(self.labelled.sum())

    def labelled_only(self, name: str | None = None) -> "BaseDataset":
        """The labelled samples alone (``self`` when every sample has a label)."""
        if self.num_labelled == len(self):
            return self
        return self.subset(torch.nonzero(self.labelled).flatten(), name)

    def split_file_val(self) -> tuple["BaseDataset", "BaseDataset"]:
        """(train, val) by ``val_mask``, the samples the data file marks ``val``."""
        return (self.subset(np.flatnonzero(~self.val_mask), self.name),
                self.subset(np.flatnonzero(self.val_mask), self.name.replace("/train", "/val")))

    def fingerprint(self) -> str:
        """SHA-256 of the samples, presence masks and labels (a resumed run refuses other data)."""
        data = {f"x.{k}": v for k, v in self.modalities.items()}
        data.update({f"present.{k}": v for k, v in self.present.items()}, label=self.labels)
        return tensor_digest(data)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            batch = self.__getitems__([int(index)])
            return {k: ({m: p[0] for m, p in v.items()} if k == "present" else v[0]) for k, v in batch.items()}
        return self.__getitems__(index)

    def __getitems__(self, indices) -> dict:
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {k: t[idx] for k, t in self.modalities.items()}
        batch["label"] = self.labels[idx]
        batch["labelled"] = batch["label"] >= 0
        batch["index"] = idx
        batch["present"] = {k: p[idx] for k, p in self.present.items()}
        return batch

    def loader(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
               sampler: Sampler | None = None, workers: int = 0, pin_memory: bool = False) -> DataLoader:
        """A DataLoader yielding batch dicts; pass ``sampler`` (e.g. a DistributedSampler) to shard.

        ``workers``: worker processes (0: the main process), each seeded by :func:`seed_worker`;
        they are started afresh every epoch, so the main process's random stream advances as
        with none (one draw per epoch, the workers' base seed) and results do not change with the
        count. ``pin_memory``: batches in page-locked memory, for asynchronous copies to a GPU."""
        if sampler is None and shuffle:
            generator = torch.Generator().manual_seed(seed)
            sampler = torch.utils.data.RandomSampler(self, generator=generator)
        return DataLoader(self, batch_size=batch_size, sampler=sampler, shuffle=False,
                          drop_last=drop_last, collate_fn=_identity, num_workers=workers,
                          worker_init_fn=seed_worker if workers else None, pin_memory=pin_memory)



class MultimodalDataset(BaseDataset):
    """Samples held in memory as ``{modality: Tensor[N, ...]}`` plus labels.

    A sample without a label has label -1 (:data:`~mmdistill.data.batch.UNLABELLED`; or pass
    ``labelled``, a bool [N] mask, False where the label is to be ignored). Unlabelled samples
    only ever train (cross-entropy skips them, distillation terms use them); batches carry
    ``labelled``, a bool [B] mask.

    Indexing with a list of indices returns a whole batch dict (see :mod:`mmdistill.data.batch`),
    which makes batching one tensor gather instead of N small copies.
    """

    def __init__(
        self,
        modalities: Mapping[str, torch.Tensor],
        labels: torch.Tensor,
        *,
        num_classes: int | None = None,
        kinds: Mapping[str, str] | None = None,
        present: Mapping[str, torch.Tensor] | None = None,
        groups: torch.Tensor | None = None,
        name: str = "dataset",
        labelled: torch.Tensor | None = None,
    ):
        if not modalities:
            raise DataError(f"{name}: a dataset needs at least one modality")
        self.name = name
        self.labels = torch.as_tensor(labels, dtype=torch.long).clone()
        n = len(self.labels)
        if labelled is not None:
            labelled = torch.as_tensor(labelled, dtype=torch.bool)
            if labelled.shape != (n,):
                raise DataError(f"{name}: the labelled mask has shape {list(labelled.shape)}, expected [{n}]")
            self.labels[~labelled] = UNLABELLED
        self.modalities: dict[str, torch.Tensor] = {}
        for key, tensor in modalities.items():
            if key in RESERVED_KEYS:
                raise DataError(f"{name}: {key!r} is reserved and cannot name a modality")
            tensor = torch.as_tensor(tensor, dtype=torch.float32)
            if len(tensor) != n:
                raise DataError(f"{name}: modality {key!r} has {len(tensor)} samples but there are {n} labels")
            bad = ~torch.isfinite(tensor.reshape(n, -1)).all(dim=1) if n else torch.zeros(0, dtype=torch.bool)
            if bad.any():
                raise DataError(f"{name}: modality {key!r} has NaN or infinite values in sample {int(bad.nonzero()[0])}")
            self.modalities[key] = tensor
        self.num_classes = int(num_classes if num_classes is not None else int(self.labels.max()) + 1 if n else 0)
        bad = (self.labels < UNLABELLED) | (self.labels >= self.num_classes)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise DataError(f"{name}: sample {i} has label {int(self.labels[i])} outside 0..{self.num_classes - 1} "
                            f"(-1: unlabelled)")
        kinds = dict(kinds or {})
        self.specs = {k: ModalitySpec(k, kinds.get(k) or guess_kind(t.shape[1:]), tuple(t.shape[1:]))
                      for k, t in self.modalities.items()}
        self.present = {k: torch.as_tensor(present[k], dtype=torch.bool) if present and k in present
                        else torch.ones(n, dtype=torch.bool) for k in self.modalities}
        self.groups = torch.as_tensor(groups) if groups is not None else None

    def with_labels(self, labels: torch.Tensor) -> "MultimodalDataset":
        """The same samples with ``labels`` (e.g. some set to -1, unlabelled)."""
        out = MultimodalDataset(self.modalities, labels, num_classes=self.num_classes,
                                kinds={k: s.kind for k, s in self.specs.items()}, present=self.present,
                                groups=self.groups, name=self.name)
        out.val_mask = self.val_mask
        return out

    def subset(self, indices, name: str | None = None) -> "MultimodalDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return MultimodalDataset(
            {k: t[idx] for k, t in self.modalities.items()}, self.labels[idx],
            num_classes=self.num_classes, kinds={k: s.kind for k, s in self.specs.items()},
            present={k: p[idx] for k, p in self.present.items()},
            groups=self.groups[idx] if self.groups is not None else None, name=name or self.name)

    def select(self, modalities: Sequence[str]) -> "MultimodalDataset":
        """The same samples restricted to ``modalities`` (for a student that sees fewer)."""
        missing = [m for m in modalities if m not in self.modalities]
        if missing:
            raise DataError(f"{self.name}: no modality {missing[0]!r} (has {', '.join(self.modalities)})")
        out = MultimodalDataset(
            {m: self.modalities[m] for m in modalities}, self.labels, num_classes=self.num_classes,
            kinds={m: self.specs[m].kind for m in modalities},
            present={m: self.present[m] for m in modalities}, groups=self.groups, name=self.name)
        out.val_mask = self.val_mask
        return out

def _identity(batch):
    return batch


def seed_worker(worker_id: int) -> None:
    """A DataLoader worker's numpy and ``random`` seeds, from the seed torch gave the worker (the
    loader's base seed, drawn from the run's seeded RNG, plus the worker's id)."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass
class DataSplits:
    """Train/validation/test datasets built from one data config, with their modality specs."""

    train: MultimodalDataset
    test: MultimodalDataset
    val: MultimodalDataset | None = None
    info: dict = field(default_factory=dict)

    @property
    def specs(self) -> dict[str, ModalitySpec]:
        return self.train.specs

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    def split(self, name: str, whose: str = "") -> MultimodalDataset:
        """The split called ``name`` (test, train, or val when there is one); else a ConfigError
        naming ``--split`` (``whose``, e.g. " for this checkpoint", follows "no such split")."""
        found = {"test": self.test, "val": self.val, "train": self.train}.get(name)
        if found is None:
            raise ConfigError(f"--split {name}: no such split{whose} (test, train"
                              f"{', val' if self.val is not None else ''})")
        return found


def split_validation(dataset: MultimodalDataset, fraction: float, seed: int) -> tuple[MultimodalDataset, MultimodalDataset | None]:
    """Hold out ``fraction`` of ``dataset`` for validation, stratified by label.

    When the dataset has ``groups`` (e.g. the recording that several AV pairs share), whole groups
    go to one side, so the validation set never sees a training recording. Only labelled samples
    are drawn; unlabelled ones always stay in training (also those of a validation group).
    """
    if fraction <= 0:
        return dataset, None
    rng = np.random.default_rng(seed)
    labels = dataset.labels.numpy()
    units = dataset.groups.numpy() if dataset.groups is not None else np.arange(len(dataset))
    val_units: list = []
    for c in np.unique(labels[labels >= 0]):
        cls_units = np.unique(units[labels == c])
        k = int(round(fraction * len(cls_units)))
        val_units.extend(rng.permutation(cls_units)[:k].tolist())
    is_val = np.isin(units, np.array(val_units)) & (labels >= 0)
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if len(val_idx) == 0:
        return dataset, None
    return dataset.subset(train_idx, f"{dataset.name}/train"), dataset.subset(val_idx, f"{dataset.name}/val")


def keep_label_fraction(dataset: MultimodalDataset, fraction: float, seed: int) -> MultimodalDataset:
    """``dataset`` with only ``fraction`` of its labels kept, the rest set unlabelled (-1).

    Stratified: each class keeps round(fraction * n_c) of its n_c labelled samples, at least one,
    drawn with ``seed``. Samples that were unlabelled stay so.
    """
    labels = dataset.labels.numpy()
    if fraction >= 1:
        return dataset
    rng = np.random.default_rng([seed, 0x1ABE1])  # a stream of its own, apart from the split's
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(idx))))
        keep[rng.permutation(idx)[:k]] = True
    return dataset.with_labels(torch.where(torch.from_numpy(keep), dataset.labels, UNLABELLED))


def join_unlabelled(train: MultimodalDataset, extra: MultimodalDataset, where: str) -> MultimodalDataset:
    """``train`` followed by every sample of ``extra`` as unlabelled (its labels ignored): a transfer set.

    ``extra`` must carry the same modalities as ``train``, with the same kinds and per-sample shapes.
    """
    for side, ds in (("the data", train), ("the transfer set", extra)):
        if not isinstance(ds, MultimodalDataset):  # e.g. npy_dir, whose samples stay on disk
            raise DataError(f"{where}: {side} ({type(ds).__name__}) cannot be joined in memory; store the "
                            f"unlabelled samples in the same dataset with label -1 instead")
    for m in train.modalities:
        if m not in extra.modalities:
            raise DataError(f"{where}: the transfer set has no modality {m!r} (it has {', '.join(extra.modalities)}); "
                            f"its modalities must match the data's ({', '.join(train.modalities)})")
    for m in extra.modalities:
        if m not in train.modalities:
            raise DataError(f"{where}: the transfer set has modality {m!r}, which the data lacks "
                            f"(the data has {', '.join(train.modalities)}); select matching ones with its options")
        a, b = train.specs[m], extra.specs[m]
        if (a.kind, a.shape) != (b.kind, b.shape):
            raise DataError(f"{where}: modality {m!r} is {b.kind} {list(b.shape)} in the transfer set but "
                            f"{a.kind} {list(a.shape)} in the data")
    n = len(extra)
    groups = None
    if train.groups is not None:
        start = int(train.groups.max()) + 1 if len(train) else 0
        groups = torch.cat([train.groups, start + torch.arange(n, dtype=train.groups.dtype)])
    return MultimodalDataset(
        {m: torch.cat([t, extra.modalities[m]]) for m, t in train.modalities.items()},
        torch.cat([train.labels, torch.full((n,), UNLABELLED, dtype=torch.long)]), num_classes=train.num_classes,
        kinds={k: s.kind for k, s in train.specs.items()},
        present={m: torch.cat([p, extra.present[m]]) for m, p in train.present.items()}, groups=groups,
        name=train.name)
