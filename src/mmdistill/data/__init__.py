"""Data: modality-aware datasets, the batch format, loaders of real data, and transforms."""
from __future__ import annotations

from .batch import collate, drop_modalities, modality_names, presence, to_device
from .dataset import DataSplits, ModalitySpec, MultimodalDataset, split_validation
from ..errors import DataError
from .registry import DATASETS, parse_options, register_dataset
from .root import data_root
from . import builtin  # noqa: F401  (registers av_digits, mnist, fsdd)
from . import npz, manifest, synthetic  # noqa: F401  (registers npz, manifest, synthetic)
from . import npy_dir  # noqa: F401  (registers npy_dir)

__all__ = ["DATASETS", "DataSplits", "ModalitySpec", "MultimodalDataset", "build_data", "collate",
           "data_root", "drop_modalities", "modality_names", "presence", "register_dataset",
           "split_validation", "to_device", "validate_data_options"]


def validate_data_options(cfg) -> None:
    """Check a :class:`~mmdistill.config.DataConfig` against its dataset's options model."""
    parse_options(cfg.name, cfg.options)


def check_classes(where: str, train: MultimodalDataset, test: MultimodalDataset) -> None:
    """Refuse data a classifier cannot meaningfully learn: fewer than 2 classes among the training
    labels (accuracy would be 1.0 whatever the model does), or more classes than samples."""
    import torch

    seen = torch.unique(train.labels)
    if len(seen) < 2:
        only = f"label {int(seen[0])}" if len(seen) else "no samples"
        raise DataError(f"{where}: every training sample has {only}; a classifier needs at least 2 classes")
    total = len(train) + len(test)
    if train.num_classes > total:
        raise DataError(f"{where}: {train.num_classes} classes for {total} samples; labels must be class "
                        f"indices 0..K-1")


def build_data(cfg, *, seed: int = 0, val_fraction: float = 0.0, standardise: dict | None = None) -> DataSplits:
    """Build the train/val/test splits a data config names (validation held out of train).

    A dataset with a ``standardize`` option is then standardised with the training split's
    statistics (:mod:`mmdistill.data.standardize`); ``standardise``: the statistics a trained
    model recorded (``info["standardise"]``), used instead of recomputing them."""
    from .standardize import standardize_splits

    entry = DATASETS.get(cfg.name)
    options = parse_options(cfg.name, cfg.options)
    train, test, info = entry.builder(data_root(cfg.root), options, seed)
    check_classes(f"data {cfg.name}" + (f" ({info['path']})" if info.get("path") else ""), train, test)
    if getattr(train, "val_mask", None) is not None:  # npy_dir: split.npy names the validation samples
        train, val = train.split_file_val()
    else:
        train, val = split_validation(train, val_fraction, seed)
    info = {**info, "train_samples": len(train), "val_samples": len(val) if val else 0, "test_samples": len(test)}
    data = DataSplits(train=train, test=test, val=val, info=info)
    mode = getattr(options, "standardize", False)
    stats = standardize_splits(data, mode, standardise)
    if stats:
        data.info["standardise"] = {**info.get("standardise", {}), **stats}
    return data
