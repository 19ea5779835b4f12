"""Data: modality-aware datasets, the batch format, loaders of real data, and transforms."""
from __future__ import annotations

import torch

from .batch import collate, drop_modalities, modality_names, presence, to_device
from .dataset import DataSplits, ModalitySpec, MultimodalDataset, join_unlabelled, keep_label_fraction, split_validation
from ..errors import DataError
from .registry import DATASETS, parse_options, register_dataset
from .root import data_root, find_path, path_options, replace_paths
from . import av_digits, fsdd, mnist  # noqa: F401  (registers av_digits, fsdd, mnist)
from . import npz, manifest, synthetic  # noqa: F401  (registers npz, manifest, synthetic)
from . import npy_dir  # noqa: F401  (registers npy_dir)

__all__ = ["DATASETS", "DataSplits", "ModalitySpec", "MultimodalDataset", "build_data", "collate",
           "data_root", "drop_modalities", "join_unlabelled", "keep_label_fraction", "modality_names", "presence",
           "register_dataset", "split_validation", "to_device", "validate_data_options"]


def validate_data_options(cfg) -> None:
    """Check a :class:`~mmdistill.config.DataConfig` (and its transfer set) against its dataset's options model."""
    parse_options(cfg.name, cfg.options)
    if getattr(cfg, "unlabelled", None) is not None:
        parse_options(cfg.unlabelled.name, cfg.unlabelled.options, prefix="data.unlabelled")


def check_classes(where: str, train: MultimodalDataset, test: MultimodalDataset) -> None:
    """Refuse data a classifier cannot meaningfully learn: fewer than 2 classes among the training
    labels (accuracy would be 1.0 whatever the model does), or more classes than samples."""
    import torch

    seen = torch.unique(train.labels[train.labels >= 0])
    if len(seen) < 2:
        if not len(seen):
            raise DataError(f"{where}: no training sample has a label; a classifier needs labelled samples "
                            "of at least 2 classes")
        raise DataError(f"{where}: every training sample has label {int(seen[0])}; a classifier needs at least 2 "
                        "classes")
    unseen = sorted(set(torch.unique(test.labels[test.labels >= 0]).tolist()) - set(seen.tolist()))
    if unseen:
        raise DataError(f"{where}: class {unseen[0]} has test samples but no training sample; the model could "
                        "never learn it (check the split)")
    if len(test) == 0:
        raise DataError(f"{where}: no test sample (a class needs at least 2 samples for one to be held out for "
                        "test); add samples or give a split")
    total = len(train) + len(test)
    if train.num_classes > total:
        raise DataError(f"{where}: {train.num_classes} classes for {total} samples; labels must be class "
                        f"indices 0..K-1")


def check_present(where: str, train) -> None:
    """Refuse a modality that no training sample carries (its presence mask all False): the model
    would never see it."""
    for m, mask in (getattr(train, "present", None) or {}).items():
        if len(mask) and not bool(mask.any()):
            raise DataError(f"{where}: modality {m!r} is absent from every training sample (its presence mask, "
                            f"e.g. present_{m}, is all False); drop the modality or mark where it is present")


def locate_paths(cfg, options, root, prefix: str = "data"):
    """``options`` (dataset ``cfg.name``'s validated options) with every file or folder they name
    (the options model's ``PATHS``) found and made absolute: beside the config file the section
    came from (``cfg.config_dir``), then under the data root ``root``; a :class:`DataError` naming
    each absolute path tried when it is in neither."""
    patterns = getattr(type(options), "PATHS", {})
    if not patterns:
        return options
    raw = options.model_dump()
    found = {}
    for pattern, kind in patterns.items():
        for keys, value in path_options(raw, [pattern]):
            path = str(find_path(value, root, getattr(cfg, "config_dir", None), folder=kind == "folder",
                                 what=f"{prefix}.{'.'.join(keys)}"))
            if path != value:
                found[keys] = path
    return type(options).model_validate(replace_paths(raw, found)) if found else options


def build_data(cfg, *, seed: int = 0, val_fraction: float = 0.0, standardise: dict | None = None,
               built: tuple | None = None) -> DataSplits:
    """Build the train/val/test splits a data config names (validation held out of train).

    Validation holds labelled samples only; then ``cfg.label_fraction`` of the training labels are
    kept and ``cfg.unlabelled``'s samples join the training split. A dataset with a
    ``standardize`` option is then standardised with the training split's statistics
    (:mod:`mmdistill.data.standardize`); ``standardise``: the statistics a trained model recorded
    (``info["standardise"]``), used instead of recomputing them. ``built``: the dataset builder's
    ``(train, test, info)`` for ``cfg``'s name and options, when already built (e.g. once for
    several seeds of a builder that does not use the seed)."""
    import math

    from .standardize import standardize_splits

    if not hasattr(cfg, "name") or not hasattr(cfg, "options"):  # (data never imports the config module)
        raise TypeError(f"cfg: expected a DataConfig (mmdistill.DataConfig(name=..., ...)), got {type(cfg).__name__}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not math.isfinite(val_fraction) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction: expected a number in [0, 1), got {val_fraction!r}")
    options = parse_options(cfg.name, cfg.options)
    if built is None:
        root = data_root(cfg.root)
        built = DATASETS.get(cfg.name)(root, locate_paths(cfg, options, root), seed)
    train, test, info = built
    where = f"data {cfg.name}" + (f" ({info['path']})" if info.get("path") else "")
    check_classes(where, train, test)
    if train.val_mask is not None:  # the data file marks the validation samples (a split of val)
        train, val = train.split_file_val()
    else:
        before = set(torch.unique(train.labels[train.labels >= 0]).tolist())
        train, val = split_validation(train, val_fraction, seed)
        lost = sorted(before - set(torch.unique(train.labels[train.labels >= 0]).tolist()))
        if lost:  # validation took every training sample of a class
            left = "no labelled training sample" if len(lost) == len(before) else f"class {lost[0]} with no training sample"
            raise DataError(f"{where}: val_fraction {val_fraction} (train.val_fraction) leaves {left}; lower it")
    check_present(where, train)
    for split, dataset in (("test", test), ("validation", val)):  # builders refuse these naming the file's sample
        if dataset is not None and not dataset.labelled.all():
            raise DataError(f"{where}: {split} sample {int((~dataset.labelled).nonzero()[0])} is unlabelled; "
                            "unlabelled samples can only be training samples")
    label_fraction = getattr(cfg, "label_fraction", None)
    if label_fraction is not None and label_fraction < 1:
        train = keep_label_fraction(train, label_fraction, seed)
    extra = {}
    if label_fraction is not None:
        extra["label_fraction"] = label_fraction
    transfer = getattr(cfg, "unlabelled", None)
    if transfer is not None:
        t_root = data_root(transfer.root if transfer.root is not None else cfg.root)
        t_options = parse_options(transfer.name, transfer.options, prefix="data.unlabelled")
        t_train, t_test, t_info = DATASETS.get(transfer.name)(
            t_root, locate_paths(transfer, t_options, t_root, "data.unlabelled"), seed)
        joined = join_unlabelled(train, t_train, "data.unlabelled")
        if len(t_test):
            joined = join_unlabelled(joined, t_test, "data.unlabelled")
        extra["transfer_set"] = {"samples": len(joined) - len(train), "dataset": t_info}
        train = joined
    if train.num_labelled < len(train):
        extra["train_labelled"] = train.num_labelled
        extra["train_unlabelled"] = len(train) - train.num_labelled
    info = {**info, "train_samples": len(train), "val_samples": len(val) if val else 0, "test_samples": len(test),
            **extra}
    data = DataSplits(train=train, test=test, val=val, info=info)
    stats = standardize_splits(data, getattr(options, "standardize", False), standardise)
    if stats:
        data.info["standardise"] = {**info.get("standardise", {}), **stats}
    return data
