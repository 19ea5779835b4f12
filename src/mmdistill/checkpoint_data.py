"""The data a checkpoint was trained on: what a run records in a checkpoint's ``meta``
(:func:`data_meta`), and the data rebuilt from it (:func:`checkpoint_data`), which ``evaluate``,
``export`` and the output guard use alike. Also the check of a checkpoint's model against data
(:func:`check_checkpoint_data`), for a teacher as for an evaluated model.
"""
from __future__ import annotations

from pathlib import Path

import pydantic
from torch import nn

from .config import DataConfig, RunConfig, format_validation_error
from .data import build_data
from .data.dataset import DataSplits, ModalitySpec
from .errors import CheckpointError


def data_meta(cfg: RunConfig, data: DataSplits) -> dict:
    """What a checkpoint of a run of ``cfg`` on ``data`` records so its data can be rebuilt."""
    return {"seed": cfg.seed, "data": cfg.data.model_dump(), "data_info": data.info,
            "val_fraction": cfg.train.val_fraction}


def recorded_data_config(checkpoint: str | Path, payload: dict, data_root: str | None = None) -> DataConfig:
    """The data config a checkpoint records (``meta.data``), ``data_root`` replacing its root."""
    meta = payload.get("meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("data"), dict) or "name" not in meta["data"]:
        raise CheckpointError(f"{checkpoint}: records no data config (meta.data), so its data cannot be rebuilt")
    try:
        return DataConfig.model_validate({**meta["data"], **({"root": data_root} if data_root else {})})
    except pydantic.ValidationError as err:
        raise CheckpointError(f"{checkpoint}: its recorded data config is invalid "
                              f"({format_validation_error(err, 'data')})") from None


def check_checkpoint_data(where: str, what: str, modalities, specs: dict[str, ModalitySpec], num_classes: int,
                          data: DataSplits, data_name: str) -> None:
    """A checkpoint's class count and the shape of each modality its model reads against ``data``
    (``what`` names the model in messages: "the teacher", "the model")."""
    for m in modalities:
        if m not in data.specs:
            raise CheckpointError(f"{where}: {what} needs modality {m!r}, which data {data_name!r} lacks "
                                  f"(it has {', '.join(data.specs)})")
        if m in specs and tuple(specs[m].shape) != tuple(data.specs[m].shape):
            raise CheckpointError(f"{where}: {what} was trained on modality {m!r} of shape {list(specs[m].shape)}, "
                                  f"but data {data_name!r} gives {list(data.specs[m].shape)}")
    if int(num_classes) != data.num_classes:
        raise CheckpointError(f"{where}: {what} has {num_classes} classes but data {data_name!r} has "
                              f"{data.num_classes}")


def checkpoint_data(checkpoint: str | Path, model: nn.Module, payload: dict,
                    data_root: str | None = None) -> tuple[DataConfig, DataSplits]:
    """(data config, data) a checkpoint was trained on, rebuilt from its metadata (``data_root``
    replaces the recorded root) and checked against the model it holds."""
    data_cfg = recorded_data_config(checkpoint, payload, data_root)
    meta = payload["meta"]
    # the training run's standardisation statistics, not ones recomputed from the data found now
    stored = (meta.get("data_info") or {}).get("standardise")
    data = build_data(data_cfg, seed=meta.get("seed", 0), val_fraction=meta.get("val_fraction", 0.0),
                      standardise=stored if isinstance(stored, dict) else None)
    check_checkpoint_data(str(checkpoint), "the model", model.modalities, payload["specs"], payload["num_classes"],
                          data, data_cfg.name)
    return data_cfg, data
