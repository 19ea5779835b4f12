"""A small synthetic audio-visual classification task, generated from a seed: dataset ``synthetic``.

Each modality identifies only a *pair* of classes, and the two modalities pair them differently,
so neither alone can beat 50% accuracy while both together identify the class:

* ``image`` ``[1, 28, 28]``: class ``c`` draws pattern ``c // 2`` (classes ``2k`` and ``2k+1`` look
  alike): a blob at a pattern-specific position on a circle around the centre and a stroke through
  the centre at a pattern-specific angle, jittered in position, width and brightness.
* ``audio`` ``[1, 32, 32]`` (a log-mel-like time-frequency map): class ``c`` draws pattern
  ``c mod ceil(K / 2)`` (classes ``j`` and ``j + ceil(K/2)`` sound alike): a tone in a
  pattern-specific mel band with a harmonic above it, pulsing at a pattern-specific rate, with a
  random onset and length.

``2k`` and ``2k+1`` always differ mod ``ceil(K/2)``, so the two patterns determine the class. Both
modalities get white Gaussian noise of standard deviation ``noise`` (patterns peak at about 1).
Classes are balanced (sizes differ by at most one) and everything is deterministic given the seed:
train draws from ``default_rng([seed, 0])``, test from ``default_rng([seed, 1])``.
"""
from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from ..options import PositiveInt
from .dataset import MultimodalDataset
from .registry import register_dataset
from .source import DatasetOptions


class SyntheticOptions(DatasetOptions):

    num_classes: Annotated[int, Field(ge=3, le=20)] = 10
    train_size: PositiveInt = 2000
    test_size: PositiveInt = 500
    noise: Annotated[float, Field(ge=0)] = 0.6


def pattern_count(num_classes: int) -> int:
    return math.ceil(num_classes / 2)


def _images(groups: np.ndarray, num_groups: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    n = len(groups)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    theta = 2 * np.pi * groups / num_groups
    shift = rng.uniform(-1.5, 1.5, size=(n, 2)).astype(np.float32)
    cy, cx = 13.5 + shift[:, 0], 13.5 + shift[:, 1]
    # the blob, on a circle of radius 8
    by, bx = cy + 8 * np.sin(theta), cx + 8 * np.cos(theta)
    sigma = rng.uniform(1.6, 2.4, size=n).astype(np.float32)
    d2 = (yy[None] - by[:, None, None]) ** 2 + (xx[None] - bx[:, None, None]) ** 2
    blob = np.exp(-d2 / (2 * sigma[:, None, None] ** 2))
    # the stroke through the centre, at angle pi * g / G (+ a little jitter), 18 px long
    phi = np.pi * groups / num_groups + rng.uniform(-0.08, 0.08, size=n)
    uy, ux = np.sin(phi)[:, None, None], np.cos(phi)[:, None, None]
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    across = np.abs(dx * uy - dy * ux)
    along = np.abs(dx * ux + dy * uy)
    width = rng.uniform(0.7, 1.2, size=n)[:, None, None]
    stroke = np.exp(-(across**2) / (2 * width**2)) * (along <= 9)
    brightness = rng.uniform(0.8, 1.2, size=(n, 1, 1))
    images = brightness * np.maximum(blob, 0.8 * stroke)
    images = images + noise * rng.standard_normal(images.shape)
    return images[:, None].astype(np.float32)


def _audio(groups: np.ndarray, num_groups: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    n = len(groups)
    bands = np.arange(32, dtype=np.float32)[None, :, None]
    frames = np.arange(32, dtype=np.float32)[None, None, :]
    # a tone in band 3..19 (by pattern) and its harmonic 9 bands above; onset, length and pitch jitter
    base = 3 + 16 * groups / max(num_groups - 1, 1) + rng.uniform(-0.4, 0.4, size=n)
    tone = np.exp(-((bands - base[:, None, None]) ** 2) / 2.0)
    harmonic = 0.6 * np.exp(-((bands - base[:, None, None] - 9) ** 2) / 2.0)
    onset = rng.uniform(1, 7, size=n)[:, None, None]
    length = rng.uniform(16, 24, size=n)[:, None, None]
    envelope = 1 / (1 + np.exp(-(frames - onset) * 2)) * 1 / (1 + np.exp((frames - onset - length) * 2))
    rate = 1 + groups % 3  # pulses per 32 frames: 1, 2 or 3
    phase = rng.uniform(0, 2 * np.pi, size=n)[:, None, None]
    pulse = 0.7 + 0.3 * np.cos(2 * np.pi * rate[:, None, None] * frames / 32 + phase)
    loudness = rng.uniform(0.8, 1.2, size=(n, 1, 1))
    spec = loudness * (tone + harmonic) * envelope * pulse
    spec = spec + noise * rng.standard_normal(spec.shape)
    return spec[:, None].astype(np.float32)


def make_synthetic(size: int, num_classes: int, noise: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``{"image": [N,1,28,28], "audio": [N,1,32,32], "label": [N]}`` with balanced classes."""
    labels = rng.permutation(np.arange(size) % num_classes)
    half = pattern_count(num_classes)
    image = _images(labels // 2, half, noise, rng)
    audio = _audio(labels % half, half, noise, rng)
    return {"image": image, "audio": audio, "label": labels.astype(np.int64)}


@register_dataset("synthetic")
def build_synthetic(root, options: SyntheticOptions, seed: int):
    """Generated on the fly; ``root`` is not read."""
    out = []
    for part, size, stream in (("train", options.train_size, 0), ("test", options.test_size, 1)):
        data = make_synthetic(size, options.num_classes, options.noise, np.random.default_rng([seed, stream]))
        modalities = {m: torch.from_numpy(data[m]) for m in ("image", "audio")}
        out.append(MultimodalDataset(modalities, torch.from_numpy(data["label"]), num_classes=options.num_classes,
                                     kinds={"image": "image", "audio": "audio"}, name=f"synthetic/{part}"))
    info = {"dataset": "synthetic", "synthetic": True, "seed": seed, "num_classes": options.num_classes,
            "noise": options.noise, "train": options.train_size, "test": options.test_size,
            "design": "image identifies the class pair {2k, 2k+1}; audio identifies {j, j + ceil(K/2)}"}
    return out[0], out[1], info
