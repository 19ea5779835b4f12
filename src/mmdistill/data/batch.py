"""The batch format: a plain dict of tensors.

A batch maps each modality name to a tensor whose first dimension is the batch, plus::

    "label":   LongTensor[B]            class labels; -1 for an unlabelled sample
    "labelled": BoolTensor[B]           which samples carry a label (label >= 0)
    "index":   LongTensor[B]            dataset indices of the samples (for memory banks, caches)
    "view_index": LongTensor[B]         under ``train.view_cache``: which seeded view of each sample
    "present": {modality: BoolTensor[B]} which samples carry each modality

A modality that is absent from a sample keeps a zero tensor in its slot and ``False`` in
``present``; a modality absent from the whole batch may also be left out of the dict. Models
must read presence through :func:`presence`, never by looking at the values.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

RESERVED_KEYS = frozenset({"label", "labelled", "index", "present", "label_mix", "mix_lambda", "view_index"})

#: the label of a sample that has none (see :func:`labelled`)
UNLABELLED = -1

Batch = dict


def modality_names(batch: Mapping) -> list[str]:
    """The modalities carried by ``batch`` (every key but the reserved ones)."""
    return [k for k in batch if k not in RESERVED_KEYS]


def batch_size(batch: Mapping) -> int:
    if "label" in batch:
        return int(batch["label"].shape[0])
    for name in modality_names(batch):
        return int(batch[name].shape[0])
    raise ValueError("cannot tell the size of a batch without label or modalities")


def presence(batch: Mapping, name: str) -> torch.Tensor:
    """BoolTensor[B]: which samples of ``batch`` carry modality ``name``."""
    present = batch.get("present", {})
    if name in present:
        return present[name]
    size = batch_size(batch)
    device = next((v.device for k, v in batch.items() if isinstance(v, torch.Tensor)), None)
    return torch.full((size,), name in batch, dtype=torch.bool, device=device)


def labelled(batch: Mapping) -> torch.Tensor:
    """BoolTensor[B]: which samples of ``batch`` carry a label (``batch["labelled"]``, else label >= 0)."""
    if "labelled" in batch:
        return batch["labelled"]
    return batch["label"] >= 0


def drop_modalities(batch: Mapping, names: Iterable[str]) -> dict:
    """A copy of ``batch`` with ``names`` absent from every sample (zeroed, presence False)."""
    names = set(names)
    out = dict(batch)
    present = dict(batch.get("present", {}))
    for name in names:
        if name in out:
            out[name] = torch.zeros_like(out[name])
            present[name] = torch.zeros(out[name].shape[0], dtype=torch.bool, device=out[name].device)
    out["present"] = present
    return out


def to_device(batch: Mapping, device: torch.device | str, non_blocking: bool = False) -> dict:
    """Move every tensor of ``batch`` (the presence dict included) to ``device``."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=non_blocking)
        elif isinstance(value, Mapping):
            out[key] = {k: v.to(device, non_blocking=non_blocking) for k, v in value.items()}
        else:
            out[key] = value
    return out


def collate(samples: list[Mapping]) -> dict:
    """Stack a list of per-sample dicts (tensors without the batch dimension) into a batch."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    out: dict = {}
    for key in samples[0]:
        if key == "present":
            out["present"] = {m: torch.tensor([bool(s["present"][m]) for s in samples])
                              for m in samples[0]["present"]}
        else:
            out[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    return out
