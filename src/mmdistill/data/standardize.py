"""Standardise feature modalities with the training split's statistics (``data.standardize``).

Datasets whose options carry ``standardize`` (``npz``, ``manifest``) get, after the validation
split is held out, x' = (x - mean) / std per modality, with mean and std taken over the present
samples of the *training* split only, and applied to train, validation and test alike:

* ``auto`` (the default): feature vectors only (kind ``vector``, 1-D per sample), per feature;
* ``true``: vectors per feature, and every other modality with one scalar mean and std (as the
  built-in AV-Digits data are), unless its loader standardised it already (manifest audio) or it
  holds token ids (kind ``text``);
* ``false``: none.

A feature that is constant on the training split keeps std 1 (it is only centred). The statistics
go to the data info (``info["standardise"][modality] = {"mean", "std", "per"}``), hence to every
checkpoint (``meta.data_info``) and export (``model.json``), so evaluate, export and predict apply
the training run's statistics, not ones recomputed from whatever data they are given.
"""
from __future__ import annotations

from typing import Literal, Mapping

import torch

from ..errors import DataError
from .dataset import DataSplits
from .kinds import KINDS

Standardize = Literal["auto"] | bool


def _rule(kind: str) -> str:
    """How ``standardize`` treats ``kind`` (:data:`~mmdistill.data.kinds.KINDS` ``standardise``;
    a kind outside the table: one mean and std, under ``true`` only)."""
    return KINDS[kind].standardise if kind in KINDS else "modality"


def _which(data: DataSplits, mode: Standardize, done: Mapping) -> list[str]:
    if mode is False:
        return []
    return [m for m, spec in data.specs.items()
            if m not in done and _rule(spec.kind) != "never" and (_rule(spec.kind) == "feature" or mode is True)]


def _stats(x: torch.Tensor, per_feature: bool) -> dict:
    x = x.double()
    if per_feature:
        mean, std = x.mean(0), x.std(0, unbiased=False)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        return {"per": "feature", "mean": mean.tolist(), "std": std.tolist()}
    mean, std = float(x.mean()), float(x.std(unbiased=False))
    return {"per": "modality", "mean": mean, "std": std if std > 1e-8 else 1.0}


def standardize_splits(data: DataSplits, mode: Standardize, stored: Mapping | None = None) -> dict:
    """Standardise ``data``'s splits in place; returns ``{modality: stats}`` of what was done.

    ``stored``: statistics recorded by the run that trained a model (a checkpoint's or an
    export's ``standardise``); a modality found there uses them instead of new ones."""
    done = data.info.get("standardise", {})
    stored = stored or {}
    out = {}
    for m in _which(data, mode, done):
        spec = data.specs[m]
        stats = stored.get(m)
        if not stats or "per" not in stats:
            present = data.train.present[m]
            ref = data.train.modalities[m][present]
            if not len(ref):
                continue
            stats = _stats(ref, per_feature=_rule(spec.kind) == "feature" and len(spec.shape) == 1)
        mean = torch.as_tensor(stats["mean"], dtype=torch.float32)
        std = torch.as_tensor(stats["std"], dtype=torch.float32)
        if mean.dim() and tuple(mean.shape) != tuple(spec.shape):
            raise DataError(f"modality {m!r}: the recorded standardisation statistics have {list(mean.shape)} "
                            f"features, the data {list(spec.shape)}")
        for split in (data.train, data.val, data.test):
            if split is None:
                continue
            x, present = split.modalities[m], split.present[m]
            # absent samples stay zero (the model's "missing" input)
            split.modalities[m] = torch.where(present.view(-1, *[1] * (x.dim() - 1)), (x - mean) / std,
                                              torch.zeros_like(x))
        out[m] = stats
    return out
