"""AV-Digits: spoken digits (FSDD) paired with handwritten digits (MNIST), AV-MNIST style.

* Audio: every FSDD recording as a ``[1, 32, 32]`` log-mel spectrogram.
* Image: ``pairs_per_recording`` MNIST images of the recording's class, drawn without
  replacement (cycling through a seeded permutation of the class's images of the same split).
* Splits: ``official`` (FSDD take index 0-4 test, 5-49 train) and ``unseen-speaker`` (speaker
  ``yweweler`` held out for test). Images: with the 10k subset, per class the first 80% train and
  the last 20% test; with full MNIST, its official split.
* Levels: ``clean``, and ``hard``, where images are rebuilt from the principal components that keep
  ``image_energy`` (25%) of the training images' energy, as AV-MNIST does, and white noise is mixed
  into the audio at ``audio_snr_db`` (0 dB), drawn afresh for each pair (each pair is its own noisy
  take of the recording). Each modality alone is then clearly weaker than both.
* Both modalities are standardised with the training split's mean and standard deviation.
"""
from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from ..options import PositiveInt
from .dataset import MultimodalDataset
from .fsdd import describe_fsdd_audio, list_recordings, log_mel_features, test_mask
from .mnist import describe_mnist_digit, load_mnist
from .registry import register_dataset
from .source import DatasetOptions
from .transforms import LogMelParams, pca_degrade


def _pair_images(labels: np.ndarray, image_labels: np.ndarray, per_recording: int, rng) -> np.ndarray:
    """[R, per_recording] image indices, each of the recording's class, spread evenly."""
    pairs = np.empty((len(labels), per_recording), dtype=np.int64)
    for c in np.unique(labels):
        pool = rng.permutation(np.flatnonzero(image_labels == c))
        recs = np.flatnonzero(labels == c)
        need = len(recs) * per_recording
        order = np.concatenate([pool] * (need // len(pool) + 1))[:need] if len(pool) else None
        if order is None:
            raise ValueError(f"no images of class {c}")
        pairs[recs] = order.reshape(len(recs), per_recording)
    return pairs


def load_av_digits(root=None, *, split: Literal["official", "unseen-speaker"] = "official",
                   level: Literal["clean", "hard"] = "hard", pairs_per_recording: int = 4, seed: int = 0,
                   image_energy: float = 0.25, audio_snr_db: float = 0.0,
                   mnist_source: Literal["auto", "idx", "json10k"] = "json10k"):
    """(train, test, info) datasets with modalities ``image`` [1,28,28] and ``audio`` [1,32,32]."""
    recordings = list_recordings(root)
    is_test = test_mask(recordings, split)
    hard = level == "hard"
    labels = np.array([r.digit for r in recordings])
    train_img, train_img_y, test_img, test_img_y, mnist_used = load_mnist(root, mnist_source)
    info = {"dataset": "av_digits", "split": split, "level": level, "mnist": mnist_used,
            "pairs_per_recording": pairs_per_recording}
    if hard:
        (train_img, test_img), k, kept = pca_degrade(train_img, [test_img], image_energy)
        info.update(pca_components=k, image_energy_kept=round(kept, 4), audio_snr_db=audio_snr_db)
    rng = np.random.default_rng(seed)
    parts = []
    for name, mask, images, image_labels in (("train", ~is_test, train_img, train_img_y),
                                             ("test", is_test, test_img, test_img_y)):
        rec_idx = np.flatnonzero(mask)
        pairs = _pair_images(labels[rec_idx], image_labels, pairs_per_recording, rng)
        parts.append((name, rec_idx, np.repeat(rec_idx, pairs_per_recording), images[pairs.reshape(-1)]))
    if hard:
        # every pair is its own noisy take of the recording: the noise is drawn per pair, so a
        # model cannot memorise a recording's noise across its pairs
        rows = np.concatenate([p[2] for p in parts])
        audio = log_mel_features([recordings[j] for j in rows], LogMelParams(), snr_db=audio_snr_db, noise_seed=seed)
        audio_parts = [audio[: len(parts[0][2])], audio[len(parts[0][2]):]]
    else:
        audio = log_mel_features(recordings, LogMelParams())
        audio_parts = [audio[torch.from_numpy(p[2])] for p in parts]
    image_mean, image_std = float(train_img.mean()), float(train_img.std())
    audio_mean, audio_std = float(audio_parts[0].mean()), float(audio_parts[0].std())
    info["standardise"] = {"image": {"mean": image_mean, "std": image_std}, "audio": {"mean": audio_mean, "std": audio_std}}
    out = []
    for (name, rec_idx, rec_of_pair, images), aud in zip(parts, audio_parts):
        img = torch.from_numpy((images - image_mean) / image_std).unsqueeze(1)
        out.append(MultimodalDataset({"image": img, "audio": (aud - audio_mean) / audio_std},
                                     torch.from_numpy(labels[rec_of_pair]), num_classes=10,
                                     kinds={"image": "image", "audio": "audio"},
                                     groups=torch.from_numpy(rec_of_pair), name=f"av_digits/{name}"))
        info[f"{name}_recordings"] = int(len(rec_idx))
    return out[0], out[1], info


class AVDigitsOptions(DatasetOptions):
    split: Literal["official", "unseen-speaker"] = "official"
    level: Literal["clean", "hard"] = "hard"
    pairs_per_recording: PositiveInt = 4
    image_energy: Annotated[float, Field(gt=0, le=1)] = 0.25
    audio_snr_db: float = 0.0
    # json10k: the mnist10k subset every published number uses (mnist10k/, else derived from the
    # official files); idx / auto: full MNIST when its files are in the data root
    mnist_source: Literal["auto", "idx", "json10k"] = "json10k"
    pairing_seed: int = 0

    @classmethod
    def describe(cls, modality, spec, info, options):
        hard = info.get("level") == "hard"
        if modality == "audio":
            return describe_fsdd_audio(info.get("audio_snr_db") if hard else info.get("snr_db"))
        if modality == "image":
            text = describe_mnist_digit(flatten=False)
            if hard:
                text += (f"; training data was rebuilt from the {info.get('pca_components')} leading principal "
                         f"components of the training images ({info.get('image_energy_kept')} of their energy)")
            return {"description": text}
        return None


@register_dataset("av_digits")
def build_av_digits(root, options: AVDigitsOptions, seed: int):
    opts = options.model_dump()
    return load_av_digits(root, seed=opts.pop("pairing_seed"), **opts)
