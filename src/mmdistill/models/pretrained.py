"""Pretrained encoders shipped inside an installed package: ``model: {pretrained: resemblyzer}``.

``resemblyzer`` is the GE2E speaker encoder of the ``resemblyzer`` wheel (Wan et al. 2018,
"Generalized End-to-End Loss for Speaker Verification", arXiv:1710.10467; the package by
Resemble AI, Apache-2.0): a 3-layer LSTM (256 hidden) over 40-band mel frames, a linear layer,
ReLU and L2 normalisation: a 256-d embedding, 1,423,616 parameters, trained on thousands of
speakers. It reads the ``ge2e`` modality (:mod:`mmdistill.data.ge2e`, e.g. FSDD's ``ge2e:``
option or a manifest column with ``transform: ge2e``).

The weights are read from the installed package's ``pretrained.pt`` with ``torch.load(...,
weights_only=True)``; the file is found through the package's metadata, without importing the
package (whose ``__init__`` imports ``webrtcvad``, a C extension not needed here). Install it
with ``pip install --no-deps resemblyzer==0.1.4`` (the Makefile's set-up does).

The model is :class:`PretrainedEncoderClassifier`: ``encoder`` (the frozen embedding, feature
point ``encoder``, both the modality's ``embedding`` and the ``fused`` vector the head reads) and
``head`` (a linear layer to the classes, the only trained part unless ``train_encoder``). As a
teacher it is frozen whole; ``mmdistill train`` on it fits a linear probe. Its provenance
(package, version, file, SHA-256, licence) is ``model.provenance``, which checkpoints and
exports record.

An utterance longer than one partial window (160 frames, 1.6 s) is embedded as the package's
``embed_utterance`` does: windows of 160 frames at ``rate`` windows per second (the last one
kept if it is covered to ``min_coverage``, zero-padded), each embedded, their mean L2-normalised.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import math
from pathlib import Path
from typing import Literal, Mapping

import pydantic
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data.batch import presence
from ..errors import ConfigError
from ..options import Strict
from .kinds import MODEL_KINDS
from .points import FeaturePoint

INSTALL = 'pip install --no-deps "resemblyzer==0.1.4"'
#: the known weights files: sha256 -> the package version that ships it
KNOWN_SHA256 = {"39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e": "0.1.4"}
PARTIAL_FRAMES = 160  # the encoder's window: 1.6 s of 10 ms frames
HOP_LENGTH, SAMPLE_RATE = 160, 16000


class PretrainedModelConfig(Strict):
    """``pretrained``: which packaged encoder (``resemblyzer``); ``modality``: the data modality it
    reads (its own front end, ``ge2e``); ``train_encoder``: also train the encoder (default: only
    the head, a linear probe); ``rate``/``min_coverage``: the partial windows of utterances longer
    than 1.6 s, as the package's ``embed_utterance``."""

    pretrained: Literal["resemblyzer"]
    modality: str = "ge2e"
    train_encoder: bool = False
    rate: float = Field(1.3, gt=0)
    min_coverage: float = Field(0.75, gt=0, le=1)

    @pydantic.field_validator("rate")
    @classmethod
    def _rate(cls, value):
        step = round(SAMPLE_RATE / value / HOP_LENGTH)
        if not 0 < step <= PARTIAL_FRAMES:
            raise ValueError(f"windows of {PARTIAL_FRAMES} frames at {value} per second leave gaps or do not "
                             f"move; give a rate between {SAMPLE_RATE / HOP_LENGTH / PARTIAL_FRAMES:.3f} and 100")
        return value


def package_file(package: str, relative: str) -> tuple[Path, importlib.metadata.Distribution]:
    """The installed file ``relative`` of distribution ``package``, found through its metadata
    (the package is not imported); a ConfigError saying how to install it when absent."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"model.pretrained: the {package} package is not installed; {INSTALL}") from None
    listed = [f for f in (dist.files or []) if str(f).replace("\\", "/") == relative]
    path = Path(dist.locate_file(listed[0] if listed else relative))
    if not path.is_file():
        raise ConfigError(f"model.pretrained: {package} {dist.version} has no {relative} ({path}); reinstall it: "
                          f"{INSTALL}")
    return path, dist


def _licence(dist: importlib.metadata.Distribution) -> str:
    meta = dist.metadata
    licence = meta.get("License-Expression") or meta.get("License") or ""
    if licence in ("", "UNKNOWN"):
        classifiers = [c for c in (meta.get_all("Classifier") or []) if c.startswith("License ::")]
        licence = classifiers[0].split(" :: ")[-1] if classifiers else "unknown"
    return licence


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_resemblyzer() -> tuple[dict[str, torch.Tensor], dict]:
    """(the encoder's state dict, its provenance) from the installed ``resemblyzer`` package."""
    path, dist = package_file("resemblyzer", "resemblyzer/pretrained.pt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state = payload["model_state"]
    except Exception as err:
        raise ConfigError(f"model.pretrained: {path} is not a readable weights-only checkpoint "
                          f"({(str(err).splitlines() or [''])[0]})") from None
    digest = sha256_of(path)
    provenance = {"package": "resemblyzer", "version": dist.version, "file": "resemblyzer/pretrained.pt",
                  "sha256": digest, "licence": _licence(dist),
                  "model": "GE2E speaker encoder (Wan et al. 2018, arXiv:1710.10467)",
                  "source": "https://github.com/resemble-ai/Resemblyzer",
                  "known_file": digest in KNOWN_SHA256}
    return {k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}, provenance


def partial_windows(frames: int, rate: float = 1.3, min_coverage: float = 0.75) -> list[int]:
    """Start frames of the 160-frame windows of an utterance of ``(frames - 1) * 160`` samples,
    as resemblyzer's ``VoiceEncoder.compute_partial_slices``."""
    n_samples = max(0, frames - 1) * HOP_LENGTH
    n_frames = int(math.ceil((n_samples + 1) / HOP_LENGTH))
    step = int(round((SAMPLE_RATE / rate) / HOP_LENGTH))
    starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step))
    coverage = (n_samples - starts[-1] * HOP_LENGTH) / (PARTIAL_FRAMES * HOP_LENGTH)
    if coverage < min_coverage and len(starts) > 1:
        starts = starts[:-1]
    return starts


class GE2EEncoder(nn.Module):
    """[B, 40, frames] mel power frames -> [B, 256] L2-normalised speaker embedding.

    Per window: LSTM(40 -> 256, 3 layers), the last layer's final hidden state, Linear(256, 256),
    ReLU, L2 normalisation; the windows' mean, L2-normalised again (one window: unchanged)."""

    def __init__(self, rate: float = 1.3, min_coverage: float = 0.75):
        super().__init__()
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        self.rate, self.min_coverage = rate, min_coverage
        self.out_dim = 256

    def embed_windows(self, mels: torch.Tensor) -> torch.Tensor:
        """[B, 160, 40] (time first) -> [B, 256]: the package's ``VoiceEncoder.forward``."""
        _, (hidden, _) = self.lstm(mels)
        raw = F.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        starts = partial_windows(frames, self.rate, self.min_coverage)
        need = starts[-1] + PARTIAL_FRAMES
        if need > frames:
            x = F.pad(x, (0, need - frames))
        x = x.transpose(1, 2)  # [B, time, 40]
        if len(starts) == 1:
            return self.embed_windows(x[:, starts[0]:starts[0] + PARTIAL_FRAMES])
        windows = torch.stack([x[:, s:s + PARTIAL_FRAMES] for s in starts], dim=1)  # [B, W, 160, 40]
        b, w = windows.shape[:2]
        mean = self.embed_windows(windows.reshape(b * w, PARTIAL_FRAMES, -1)).reshape(b, w, -1).mean(1)
        return mean / mean.norm(dim=1, keepdim=True).clamp_min(1e-12)


class PretrainedEncoderClassifier(nn.Module):
    """``forward(batch) -> logits``: the pretrained encoder on one modality, then a linear head.

    A sample that lacks the modality gets a zero embedding (the head's bias alone), as a
    multimodal model treats a missing modality."""

    def __init__(self, encoder: nn.Module, modality: str, shape: tuple[int, ...], num_classes: int,
                 provenance: dict):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, num_classes)
        self.modality = modality
        self.modalities = [modality]
        self.input_shapes = {modality: tuple(shape)}
        self.provenance = dict(provenance)

    def embed(self, batch: Mapping) -> torch.Tensor:
        """[B, 256] the encoder's embedding (zeros where the modality is absent)."""
        x = batch[self.modality]
        embedding = self.encoder(x)
        return embedding * presence(batch, self.modality).to(embedding.device).unsqueeze(1).to(embedding.dtype)

    def forward(self, batch: Mapping) -> torch.Tensor:
        return self.head(self.embed(batch))

    def feature_points(self) -> list[FeaturePoint]:
        """The embedding: the modality's ``embedding`` point and the ``fused`` vector the head reads,
        so losses on either kind (``encoders`` or ``fusion``) find it."""
        return [FeaturePoint("encoder", "embedding", self.modality), FeaturePoint("encoder", "fused")]


@MODEL_KINDS.register("pretrained")
def build_pretrained_model(cfg: PretrainedModelConfig, specs, num_classes: int) -> PretrainedEncoderClassifier:
    """The ``pretrained`` model kind (:func:`mmdistill.models.kinds.build` validates and seeds)."""
    if cfg.modality not in specs:
        raise ConfigError(f"model.modality: the data has no modality {cfg.modality!r} (it has {', '.join(specs)}); "
                          f"the resemblyzer encoder reads its own front end (FSDD option ge2e:, or a manifest "
                          f"column with transform: ge2e)")
    spec = specs[cfg.modality]
    if len(spec.shape) != 2 or spec.shape[0] != 40:
        raise ConfigError(f"model.modality: {cfg.modality!r} has shape {list(spec.shape)}; the resemblyzer encoder "
                          f"reads [40, frames] GE2E mel frames (transform: ge2e)")
    state, provenance = load_resemblyzer()
    encoder = GE2EEncoder(cfg.rate, cfg.min_coverage)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"model.pretrained: resemblyzer {provenance['version']}'s weights do not fit the GE2E "
                          f"encoder ({str(err).splitlines()[0]})") from None
    encoder.requires_grad_(cfg.train_encoder)
    return PretrainedEncoderClassifier(encoder, cfg.modality, spec.shape, num_classes, provenance)
