"""Separate labelled and transfer batches (``train.labelled_batch_size``).

Distilling with few labels and many unlabelled samples, one batch drawn from the whole training
set holds few labelled samples, so the cross-entropy term sees few labels per step. Here each
step's batch is instead

    [ B_l labelled samples | B samples drawn from the whole training set, labels hidden ]

and the task computes CE on the labelled part (the only members with a label) and the
distillation terms on every member: total = CE(labelled batch) + KD(labelled + transfer batch).
An epoch is one pass of the transfer batches over the training set (ceil(N / B) steps); the
labelled part cycles through a fresh permutation of the labelled samples each epoch, as often as
the epoch needs. Every draw comes from one generator (seeded by the run seed), which the engine
saves with the training state, so ``--resume`` continues the same batches.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Sampler

from ..data.dataset import MultimodalDataset
from ..errors import DataError


class TransferBatchSampler(Sampler):
    """Batches of indices: ``labelled_batch`` labelled ones, then ``batch`` from every sample."""

    def __init__(self, labelled: torch.Tensor, batch: int, labelled_batch: int, *, seed: int = 0):
        self.labelled = torch.nonzero(labelled).flatten()
        if len(self.labelled) == 0:
            raise DataError("train.labelled_batch_size: the training set has no labelled sample to draw from")
        self.n, self.batch, self.labelled_batch = len(labelled), batch, labelled_batch
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch)

    def __iter__(self):
        transfer = torch.randperm(self.n, generator=self.generator)
        need = len(self) * self.labelled_batch
        cycles = math.ceil(need / len(self.labelled))
        order = torch.cat([self.labelled[torch.randperm(len(self.labelled), generator=self.generator)]
                           for _ in range(cycles)])
        for step in range(len(self)):
            lab = order[step * self.labelled_batch:(step + 1) * self.labelled_batch]
            yield torch.cat([lab, transfer[step * self.batch:(step + 1) * self.batch]]).tolist()


def transfer_loader(dataset: MultimodalDataset, batch: int, labelled_batch: int, *, seed: int) -> DataLoader:
    """The training loader of :class:`TransferBatchSampler`'s batches, transfer part unlabelled."""
    sampler = TransferBatchSampler(dataset.labelled, batch, labelled_batch, seed=seed)

    def hide_transfer_labels(items: dict) -> dict:
        items["label"] = items["label"].clone()
        items["label"][labelled_batch:] = -1
        items["labelled"] = items["label"] >= 0
        return items

    return DataLoader(dataset, batch_sampler=sampler, collate_fn=hide_transfer_labels)
