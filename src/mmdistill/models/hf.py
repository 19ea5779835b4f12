"""Hugging Face transformers models as teachers or students: ``model: {hf: PATH_OR_NAME, ...}``.

``transformers.AutoModel.from_pretrained(hf, local_files_only=True, trust_remote_code=False)`` loads
the backbone from a local directory (``save_pretrained``) or the Hugging Face cache; nothing is
downloaded, and no modelling code shipped with the model (``auto_map``) is run. The kind of
the data modality ``modality`` picks the backbone's inputs:

* ``text`` (``[2, L]`` ids; mask, see :mod:`mmdistill.data.text`): ``input_ids``, ``attention_mask``;
* ``waveform`` (``[samples]``, e.g. wav2vec2): ``input_values``;
* ``image`` (``[C, H, W]``): ``pixel_values``.

The last hidden state is pooled (``cls``: the first token; ``mean``: the mean over tokens, padding
excluded) and a linear head gives the logits. Needs the optional extra: ``pip install "mmdistill[hf]"``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping

import pydantic
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..data.batch import presence
from ..data.kinds import KINDS
from ..errors import ConfigError
from .kinds import MODEL_KINDS
from .points import FeaturePoint

EXTRA = 'pip install "mmdistill[hf]"'
#: the keyword a transformers model takes each kind it reads as (:data:`mmdistill.data.kinds.KINDS`)
INPUTS = {k: row.hf_input for k, row in KINDS.items() if row.hf_input}


class HFModelConfig(BaseModel):
    """``hf``: a local directory or a model name in the Hugging Face cache; ``modality``: the data
    modality it reads; ``hidden_layers``: which encoder layers are declared as ``hidden`` feature
    points (indices into the layer list, negative from the end)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    hf: str
    modality: str
    pooling: Literal["cls", "mean"] = "cls"
    hidden_layers: list[int] = [-1]

    @pydantic.field_validator("hf")
    @classmethod
    def _absolute(cls, value: str) -> str:  # a local directory is recorded absolute: checkpoints reload from anywhere
        path = Path(value).expanduser()
        return str(path.resolve()) if path.is_dir() else value


class Pooling(nn.Module):
    """[B, T, H] hidden states -> [B, H]: the first token (``cls``) or the masked mean (``mean``);
    [B, C, H, W] maps (convolutional backbones) -> their spatial mean."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if hidden.dim() == 4:
            return hidden.mean(dim=(2, 3))
        if self.mode == "cls":
            return hidden[:, 0]
        if mask is None or mask.shape[1] != hidden.shape[1]:
            return hidden.mean(1)
        m = mask.to(hidden.dtype).unsqueeze(2)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


class HFClassifier(nn.Module):
    """``forward(batch) -> logits``: the backbone on one modality, pooled, a linear head.

    Samples that lack the modality get a zero embedding (the head's bias alone), as a
    :class:`~mmdistill.models.multimodal.MultimodalModel` treats a missing modality.
    """

    def __init__(self, backbone: nn.Module, modality: str, kind: str, shape: tuple[int, ...], num_classes: int,
                 pooling: str = "cls", hidden_layers: list[int] = (-1,)):
        super().__init__()
        self.backbone = backbone
        self.modality, self.kind = modality, kind
        self.modalities = [modality]
        self.input_shapes = {modality: tuple(shape)}
        self.pool = Pooling(pooling)
        self.head = nn.Linear(hidden_size(backbone), num_classes)
        layers = encoder_layers(backbone)
        self._hidden_paths = []
        if layers is not None:
            name, count = layers
            for i in hidden_layers:
                if not -count <= i < count:
                    raise ConfigError(f"model.hidden_layers: layer {i} is out of range (the model has {count} layers)")
                self._hidden_paths.append(f"backbone.{name}.{i % count}")

    def forward(self, batch: Mapping) -> torch.Tensor:
        x = batch[self.modality]
        mask, extra = None, {}
        if self.kind == "text":  # ids outside the vocabulary (an export's random example input) are clamped
            mask = (x[:, 1] > 0.5).long()
            x, extra = x[:, 0].long().clamp(0, self.backbone.config.vocab_size - 1), {"attention_mask": mask}
        elif self.kind == "waveform":
            x = x.reshape(x.shape[0], -1)
        out = self.backbone(**{INPUTS[self.kind]: x}, **extra)
        embedding = self.pool(out.last_hidden_state, mask)
        embedding = embedding * presence(batch, self.modality).to(embedding.device).unsqueeze(1).to(embedding.dtype)
        return self.head(embedding)

    def feature_points(self) -> list[FeaturePoint]:
        """The requested encoder layers' hidden states (``hidden``) and the pooled embedding."""
        return [FeaturePoint(p, "hidden", self.modality) for p in self._hidden_paths] + [
            FeaturePoint("pool", "embedding", self.modality)]


def hidden_size(backbone: nn.Module) -> int:
    config = backbone.config
    size = getattr(config, "hidden_size", None)
    if size is None and getattr(config, "hidden_sizes", None):
        size = config.hidden_sizes[-1]
    if size is None:
        raise ConfigError(f"model.hf: cannot tell the hidden size of {type(backbone).__name__} (no config.hidden_size)")
    return int(size)


def encoder_layers(backbone: nn.Module) -> tuple[str, int] | None:
    """(module path, length) of the backbone's list of ``num_hidden_layers`` encoder layers: a
    ModuleList of that length, preferably under an ``encoder`` (wav2vec2's convolutional feature
    extractor may have as many layers), else the last one."""
    count = getattr(backbone.config, "num_hidden_layers", None)
    found = [name for name, module in backbone.named_modules()
             if isinstance(module, nn.ModuleList) and count and len(module) == count]
    if not found:
        return None
    preferred = [name for name in found if "encoder" in name.split(".")]
    return (preferred or found)[-1], count


@MODEL_KINDS.register("hf")
def build_hf_model(cfg: HFModelConfig, specs, num_classes: int) -> HFClassifier:
    """Build a :class:`HFClassifier` from validated HFModelConfig options (the ``hf`` model kind;
    :func:`mmdistill.models.kinds.build` validates and seeds)."""
    if cfg.modality not in specs:
        raise ConfigError(f"model.modality: the data has no modality {cfg.modality!r} (it has {', '.join(specs)})")
    spec = specs[cfg.modality]
    if spec.kind not in INPUTS:
        hint = " (declare a waveform modality: transform: waveform)" if spec.kind == "audio" else ""
        raise ConfigError(f"model.modality: {cfg.modality!r} is {spec.kind} data; hf models read "
                          f"{', '.join(INPUTS)} modalities{hint}")
    try:
        from transformers import AutoModel
    except ImportError:
        raise ConfigError(f"model.hf: transformers is not installed; {EXTRA}") from None
    from transformers.utils import logging as hf_logging

    source = Path(cfg.hf).expanduser()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in a run's output
    try:
        backbone = AutoModel.from_pretrained(str(source) if source.is_dir() else cfg.hf, local_files_only=True,
                                             trust_remote_code=False)
    except Exception as err:  # OSError (not found), ValueError (unknown architecture), ...
        first = (str(err).splitlines() or [""])[0]
        raise ConfigError(f"model.hf: cannot load {cfg.hf!r} from a local directory or the Hugging Face cache "
                          f"({first})") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return HFClassifier(backbone, cfg.modality, spec.kind, spec.shape, num_classes, cfg.pooling, cfg.hidden_layers)
