"""Extra destinations for the engine's per-epoch metrics (``train.log``), beside ``metrics.jsonl``.

``tensorboard``: one scalar per numeric metric per epoch in ``RUN_DIR/tensorboard``, grouped as
``loss/<term>``, ``accuracy/<split>`` and ``other/<key>`` (``epoch`` is the step).
"""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import ConfigError


def _tag(key: str) -> str:
    if key == "train_loss":
        return "loss/total"
    if key.endswith("_accuracy"):
        return f"accuracy/{key.removesuffix('_accuracy')}"
    if key.startswith("train_"):
        return f"loss/{key.removeprefix('train_')}"
    return f"other/{key}"


class TensorBoardSink:
    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError(f"train.log: tensorboard cannot be used ({err}); "
                              "pip install 'mmdistill[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def write(self, record: dict) -> None:
        step = int(record["epoch"])
        for key, value in record.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key != "epoch" and numeric and math.isfinite(value):
                self.writer.add_scalar(_tag(key), value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MetricSinks:
    """The sinks ``names`` asks for, writing under ``run_dir`` (none without a run directory)."""

    def __init__(self, names, run_dir: Path | None):
        self.sinks = []
        if run_dir is not None and "tensorboard" in names:
            self.sinks.append(TensorBoardSink(Path(run_dir) / "tensorboard"))

    def write(self, record: dict) -> None:
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
