"""timm networks as teachers or students: ``model: {timm: NAME, checkpoint: PATH?, modality: image}``.

``timm.create_model(NAME, pretrained=False, num_classes=..., in_chans=...)`` builds the network
(``in_chans`` from the modality's shape unless given; ``kwargs`` are passed on, e.g. ``img_size``
for a ViT); ``checkpoint`` optionally loads local weights (``.safetensors``, or a ``torch.save``
file read weights-only), dropping a classifier whose class count differs. Nothing is downloaded.
Needs the optional extra: ``pip install "mmdistill[timm]"``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pydantic
import torch
from pydantic import BaseModel, ConfigDict

from ..options import PositiveInt
from torch import nn

from ..data.batch import presence
from ..errors import ConfigError
from .kinds import MODEL_KINDS
from .points import FeaturePoint

EXTRA = 'pip install "mmdistill[timm]"'


class TimmModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    timm: str
    modality: str = "image"
    checkpoint: str | None = None
    in_chans: PositiveInt | None = None
    kwargs: dict[str, Any] = {}

    @pydantic.field_validator("checkpoint")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:  # recorded absolute: checkpoints reload from anywhere
        return str(Path(value).expanduser().resolve()) if value and Path(value).expanduser().is_file() else value


class TimmClassifier(nn.Module):
    """``forward(batch) -> logits`` of a timm network on one image-like modality.

    The network runs as ``forward_features`` -> ``forward_head(pre_logits=True)`` (through the
    identity ``embedding``, a feature point) -> its classifier, which is its own ``forward``; a
    network for which that split does not hold runs its plain ``forward`` and declares no
    embedding point.
    """

    def __init__(self, backbone: nn.Module, modality: str, shape: tuple[int, ...]):
        super().__init__()
        self.backbone = backbone
        self.modality = modality
        self.modalities = [modality]
        self.input_shapes = {modality: tuple(shape)}
        self.embedding = nn.Identity()
        self.split_head = True
        self._points: list[FeaturePoint] = []

    def _input(self, batch: Mapping) -> torch.Tensor:
        x = batch[self.modality]
        return x.unsqueeze(1) if x.dim() == 3 else x

    def forward(self, batch: Mapping) -> torch.Tensor:
        x = self._input(batch)
        if not self.split_head:
            return self.backbone(x)
        emb = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        emb = self.embedding(emb * presence(batch, self.modality).to(emb.device).unsqueeze(1).to(emb.dtype))
        return self.backbone.get_classifier()(emb)

    def feature_points(self) -> list[FeaturePoint]:
        """The last stage's output (``map`` for a CNN, ``hidden`` for a transformer) and the
        pooled embedding."""
        return list(self._points)

    @torch.no_grad()
    def _probe(self, name: str) -> None:
        """Run one zero sample in eval mode: checks the input fits, whether the head splits, and
        what the last stage outputs."""
        was_training = self.training
        self.eval()
        x = torch.zeros(1, *self.input_shapes[self.modality])
        batch = {self.modality: x, "present": {self.modality: torch.ones(1, dtype=torch.bool)}}
        last = _last_stage(self.backbone)
        seen = {}
        handle = None
        if last is not None:
            handle = self.backbone.get_submodule(last).register_forward_hook(
                lambda m, i, o: seen.setdefault("out", o[0] if isinstance(o, (tuple, list)) else o))
        try:
            plain = self.backbone(self._input(batch))
            split = self.forward(batch)
            self.split_head = plain.shape == split.shape and torch.allclose(plain, split, atol=1e-5)
        except Exception as err:
            first = (str(err).splitlines() or [""])[0]
            raise ConfigError(f"model.timm: {name} cannot take the {self.modality!r} input of shape "
                              f"{list(self.input_shapes[self.modality])} ({first}); see model.kwargs (e.g. img_size)") from None
        finally:
            if handle is not None:
                handle.remove()
            self.train(was_training)
        out = seen.get("out")
        if last is not None and isinstance(out, torch.Tensor):
            kind = "map" if out.dim() == 4 else "hidden"
            self._points.append(FeaturePoint(f"backbone.{last}", kind, self.modality))
        if self.split_head:
            self._points.append(FeaturePoint("embedding", "embedding", self.modality))


def _last_stage(backbone: nn.Module) -> str | None:
    info = getattr(backbone, "feature_info", None)
    if not info:
        return None
    module = info[-1].get("module") if isinstance(info[-1], dict) else None
    try:
        return module if module and backbone.get_submodule(module) is not None else None
    except AttributeError:
        return None


def load_weights(backbone: nn.Module, path: str) -> None:
    """Load a local checkpoint into ``backbone``; a classifier of another shape is left as built."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"model.checkpoint: no such file {path}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        first = (str(err).splitlines() or [""])[0]
        raise ConfigError(f"model.checkpoint: {path} is not a readable weights-only checkpoint ({first})") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.checkpoint: {path} holds no state dict of tensors")
    own = backbone.state_dict()
    classifier = getattr(backbone, "default_cfg", {}).get("classifier") or ""
    heads = tuple(c + "." for c in ([classifier] if isinstance(classifier, str) else classifier) if c)
    dropped = [k for k, v in state.items() if k.startswith(heads) and k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in dropped}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in dropped]
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has an unknown key {unexpected[0]!r}"
        raise ConfigError(f"model.checkpoint: {path} does not fit the model (it {what})")


@MODEL_KINDS.register("timm")
def build_timm_model(cfg: TimmModelConfig, specs, num_classes: int) -> TimmClassifier:
    """Build a :class:`TimmClassifier` from validated TimmModelConfig options (the ``timm`` model kind;
    :func:`mmdistill.models.kinds.build` validates and seeds)."""
    if cfg.modality not in specs:
        raise ConfigError(f"model.modality: the data has no modality {cfg.modality!r} (it has {', '.join(specs)})")
    shape = tuple(specs[cfg.modality].shape)
    if len(shape) not in (2, 3):
        raise ConfigError(f"model.modality: {cfg.modality!r} has shape {list(shape)}; timm models read "
                          "[C, H, W] or [H, W] inputs")
    in_chans = cfg.in_chans or (1 if len(shape) == 2 else shape[0])
    if (1 if len(shape) == 2 else shape[0]) != in_chans:
        raise ConfigError(f"model.in_chans: {in_chans}, but {cfg.modality!r} has {shape[0]} channels")
    try:
        import timm
    except Exception as err:  # ImportError, or a torchvision that does not match torch
        first = (str(err).splitlines() or [""])[-1]
        raise ConfigError(f"model.timm: timm cannot be imported ({first}); {EXTRA}") from None
    try:
        backbone = timm.create_model(cfg.timm, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                     **cfg.kwargs)
    except RuntimeError as err:  # timm: "Unknown model (...)"
        raise ConfigError(f"model.timm: {(str(err).splitlines() or [''])[0]}") from None
    except TypeError as err:
        raise ConfigError(f"model.kwargs: {cfg.timm} does not take them ({err})") from None
    if cfg.checkpoint:
        load_weights(backbone, cfg.checkpoint)
    model = TimmClassifier(backbone, cfg.modality, shape)
    model._probe(cfg.timm)
    return model
