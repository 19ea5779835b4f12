"""Fusing the knowledge of several teachers: per-sample teacher weights.

A strategy maps the teachers' logits ``z`` [K, B, C] (and the labels) to weights ``w`` [B, K]
with ``w_bk >= 0`` and ``sum_k w_bk = 1``. A logit term then compares the student with the
weighted teachers through its loss's :meth:`~mmdistill.losses.DistillationLoss.mix_teachers`,
which for KD is exact: ``sum_k w_k KL(p_k || q) = KL(sum_k w_k p_k || q) + const`` (the constant
does not depend on the student), so distilling towards the mixture of the teachers' softened
distributions is the same as weighting each teacher's KD loss per sample, as CA-MKD does.

* ``average``: w_bk = 1 / K (ensemble averaging, e.g. Fukuda et al. 2017).
* ``fixed``: w_bk = c_k / sum_j c_j with user-given constants c_k.
* ``confidence``: CA-MKD (Zhang, Chen and Wang, "Confidence-Aware Multi-Teacher Knowledge
  Distillation", ICASSP 2022, arXiv:2201.00007): with l_bk = CE(z_bk, y_b) each teacher's
  cross-entropy against the label, w_bk = (1 - softmax_k(l_b)_k) / (K - 1), so a teacher that is
  confidently right on a sample gets more weight on it.
* ``entropy``: w_bk = softmax_k(-H(softmax(z_bk)) / tau), trusting the less uncertain teacher on
  each sample (in the spirit of Kwon et al., "Adaptive Knowledge Distillation Based on Entropy",
  ICASSP 2020).

A strategy is registered with its options model and selected by ``distill.ensemble.strategy``;
``fn(logits, batch, options)`` receives the options as a dict (``weights`` as a list in teacher
order).
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from pydantic import PositiveFloat

from ..losses.labels import label_loss
from ..options import Strict
from ..registry import Registry

#: strategy name -> fn(logits [K, B, C], batch, options) -> weights [B, K]
STRATEGIES: Registry = Registry("teacher ensemble strategy", group="strategies", key="strategy", default="average",
                               options_arg=2)


class EnsembleConfig(Strict):
    """How the logits of several teachers are fused per sample (the built-in strategies' options)."""

    strategy: Literal["average", "fixed", "confidence", "entropy"] = "average"
    weights: dict[str, PositiveFloat] | None = None  # ``fixed``: teacher name -> weight (normalised)
    temperature: PositiveFloat = 1.0  # ``entropy``: softmax(-H / temperature) over teachers


@STRATEGIES.register("average", options=EnsembleConfig)
def average(logits: torch.Tensor, batch: Mapping, options: Mapping) -> torch.Tensor:
    k, b = logits.shape[:2]
    return logits.new_full((b, k), 1.0 / k)


@STRATEGIES.register("fixed", options=EnsembleConfig)
def fixed(logits: torch.Tensor, batch: Mapping, options: Mapping) -> torch.Tensor:
    c = torch.as_tensor(options["weights"], dtype=logits.dtype, device=logits.device)
    return (c / c.sum()).expand(logits.shape[1], -1)


@STRATEGIES.register("confidence", options=EnsembleConfig)
def confidence(logits: torch.Tensor, batch: Mapping, options: Mapping) -> torch.Tensor:
    k = logits.shape[0]
    if k == 1:
        return logits.new_ones(logits.shape[1], 1)
    ce = torch.stack([label_loss(z, batch, reduction="none") for z in logits], dim=1)  # [B, K]
    return (1 - torch.softmax(ce, dim=1)) / (k - 1)


@STRATEGIES.register("entropy", options=EnsembleConfig)
def entropy(logits: torch.Tensor, batch: Mapping, options: Mapping) -> torch.Tensor:
    log_p = F.log_softmax(logits, dim=2)
    h = -(log_p.exp() * log_p).sum(dim=2).T  # [B, K]
    return torch.softmax(-h / options.get("temperature", 1.0), dim=1)


class TeacherEnsemble:
    """Per-sample weights over named teachers by one of :data:`STRATEGIES`."""

    def __init__(self, names: Sequence[str], strategy: str = "average", *, weights: Mapping[str, float] | None = None,
                 temperature: float = 1.0, options: Mapping[str, Any] | None = None):
        self.names = list(names)
        self.strategy = strategy
        self._fn: Callable = STRATEGIES.get(strategy)
        self.options = {**(options or {}), "temperature": temperature}
        if strategy == "fixed":
            if weights is None or any(n not in weights for n in self.names):
                raise ValueError(f"strategy fixed needs a weight for every teacher ({', '.join(self.names)})")
            self.options["weights"] = [float(weights[n]) for n in self.names]

    def weights(self, logits: torch.Tensor | Sequence[torch.Tensor], batch: Mapping) -> torch.Tensor:
        """[B, K] weights for the teachers' logits: a [K, B, C] tensor or one [B, C] tensor per teacher."""
        stacked = logits if torch.is_tensor(logits) else torch.stack(list(logits))
        return self._fn(stacked.float(), batch, self.options)
