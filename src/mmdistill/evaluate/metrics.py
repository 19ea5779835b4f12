"""Evaluation: accuracy, macro-F1, expected calibration error, confusion matrix, agreement, latency."""
from __future__ import annotations

import time
from typing import Iterable, Sequence

import torch
from torch import nn

from ..data.batch import drop_modalities, to_device
from ..data.dataset import MultimodalDataset


@torch.no_grad()
def predict(model: nn.Module, dataset: MultimodalDataset, *, device="cpu", batch_size: int = 1024,
            drop: Iterable[str] = (), transform=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, K], labels [N]) of ``model`` on ``dataset`` with modalities ``drop`` absent.

    ``transform(batch) -> batch``, if given, is applied to each batch first (e.g. a corruption).
    """
    was_training = model.training
    model.eval()
    drop = list(drop)
    outputs, labels = [], []
    for batch in dataset.loader(batch_size):
        if drop:
            batch = drop_modalities(batch, drop)
        if transform is not None:
            batch = transform(batch)
        outputs.append(model(to_device(batch, device)).float().cpu())
        labels.append(batch["label"])
    model.train(was_training)
    return torch.cat(outputs), torch.cat(labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")


def macro_f1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 over the classes in the labels or the predictions."""
    pred = logits.argmax(1)
    scores = []
    for c in torch.unique(torch.cat([labels, pred])):
        tp = int(((pred == c) & (labels == c)).sum())
        fp = int(((pred == c) & (labels != c)).sum())
        fn = int(((pred != c) & (labels == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(sum(scores) / len(scores)) if scores else float("nan")


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over ``bins`` equal-width confidence bins
    (Guo et al. 2017, "On Calibration of Modern Neural Networks")."""
    probs = torch.softmax(logits.float(), dim=1)
    confidence, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += float(in_bin.float().mean()) * abs(float(correct[in_bin].mean()) - float(confidence[in_bin].mean()))
    return ece


def agreement(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """Fraction of samples on which two models predict the same class."""
    return float((logits_a.argmax(1) == logits_b.argmax(1)).float().mean())


@torch.no_grad()
def latency_ms(model: nn.Module, dataset: MultimodalDataset, *, device="cpu", samples: int = 50,
               warmup: int = 5) -> float:
    """Median wall time of one forward pass on a single sample, in milliseconds."""
    model.eval()
    times = []
    n = min(len(dataset), samples + warmup)
    for i in range(n):
        batch = to_device(dataset[[i]], device)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(batch)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return times[len(times) // 2] if times else float("nan")


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> list[list[int]]:
    """``C[i][j]`` = number of samples of true class ``i`` predicted as class ``j``."""
    k = int(num_classes if num_classes is not None else logits.shape[1])
    flat = labels.long() * k + logits.argmax(1)
    return torch.bincount(flat, minlength=k * k).reshape(k, k).tolist()


def per_class_accuracy(confusion: list[list[int]]) -> list[float | None]:
    """Recall of each true class (diagonal over row sum); None for a class with no samples."""
    return [row[i] / sum(row) if sum(row) else None for i, row in enumerate(confusion)]


def classification_report(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    return {"accuracy": accuracy(logits, labels), "macro_f1": macro_f1(logits, labels),
            "ece": expected_calibration_error(logits, labels), "samples": int(len(labels))}


def evaluate_model(model: nn.Module, dataset: MultimodalDataset, *, device="cpu", drop: Sequence[str] = (),
                   teacher: nn.Module | None = None, latency: bool = True, batch_size: int = 1024,
                   transform=None) -> dict:
    """Every metric of ``model`` on ``dataset``: accuracy, macro-F1, ECE, parameters, latency,
    and agreement with ``teacher`` (evaluated on the same batches, with the same drops). Label
    metrics use the labelled samples only (``unlabelled`` counts the others); agreement uses all.
    ``transform``: applied to each batch before the model sees it (e.g. a corruption)."""
    from ..models import count_parameters

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not hasattr(dataset, "loader") or not hasattr(dataset, "labels"):
        raise TypeError(f"dataset: expected a dataset such as data.test, got {type(dataset).__name__}")
    known = getattr(dataset, "specs", None)
    unknown = [m for m in drop if known is not None and m not in known]
    if unknown:
        raise ValueError(f"drop: the dataset has no modality {unknown[0]!r} (it has {', '.join(known)})")
    all_logits, all_labels = predict(model, dataset, device=device, batch_size=batch_size, drop=drop,
                                     transform=transform)
    labelled = all_labels >= 0  # label metrics on the labelled samples; agreement on every sample
    logits, labels = all_logits[labelled], all_labels[labelled]
    report = classification_report(logits, labels)
    if not labelled.all():
        report["unlabelled"] = int((~labelled).sum())
    report["confusion"] = confusion_matrix(logits, labels)
    report["per_class_accuracy"] = per_class_accuracy(report["confusion"])
    report["params"] = count_parameters(model)
    report["dropped"] = list(drop)
    if teacher is not None:
        teacher_logits, _ = predict(teacher, dataset, device=device, batch_size=batch_size, drop=drop)
        report["teacher_agreement"] = agreement(all_logits, teacher_logits)
    if latency:
        report["latency_ms"] = latency_ms(model, dataset, device=device)
    return report
