"""Registration of the built-in real datasets: AV-Digits, MNIST and FSDD."""
from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from ..options import PositiveInt
from .av_digits import load_av_digits
from .dataset import MultimodalDataset
from ..errors import DataError
from .fsdd import ge2e_fsdd, list_recordings, log_mel_features, test_mask, waveforms
from .ge2e import GE2EParams, describe_ge2e
from .mnist import load_mnist
from .registry import register_dataset
from .source import DatasetOptions
from .transforms import LogMelParams, describe_log_mel


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _fsdd_log_mel(snr_db) -> dict:
    """The built-in spoken-digit spectrogram (FSDD's, AV-Digits' ``audio``)."""
    params = LogMelParams().to_dict()
    text = "FSDD spoken digit: " + describe_log_mel(params)
    if snr_db is not None:
        text += f"; training data had white noise mixed in at {snr_db} dB SNR before the spectrogram"
    return {"description": text, "log_mel": params}


def _mnist_digit(flatten: bool) -> str:
    return "MNIST digit, 28x28 grayscale in [0, 1]" + (", flattened row-major -> [784]" if flatten else " -> [1, 28, 28]")


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
            return _fsdd_log_mel(info.get("audio_snr_db") if hard else info.get("snr_db"))
        if modality == "image":
            text = _mnist_digit(flatten=False)
            if hard:
                text += (f"; training data was rebuilt from the {info.get('pca_components')} leading principal "
                         f"components of the training images ({info.get('image_energy_kept')} of their energy)")
            return {"description": text}
        return None


@register_dataset("av_digits", AVDigitsOptions)
def build_av_digits(root, options: AVDigitsOptions, seed: int):
    opts = options.model_dump()
    return load_av_digits(root, seed=opts.pop("pairing_seed"), **opts)


class MNISTOptions(DatasetOptions):
    source: Literal["auto", "idx", "json10k"] = "auto"
    train_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.8
    flatten: bool = False

    @classmethod
    def describe(cls, modality, spec, info, options):
        return {"description": _mnist_digit(bool(options.get("flatten")))}


@register_dataset("mnist", MNISTOptions)
def build_mnist(root, options: MNISTOptions, seed: int):
    """MNIST images in [0, 1] as modality ``image`` ([1,28,28], or [784] with ``flatten``)."""
    x_train, y_train, x_test, y_test, used = load_mnist(root, options.source, options.train_fraction)
    shape = (-1, 784) if options.flatten else (-1, 1, 28, 28)
    kind = "vector" if options.flatten else "image"
    out = [MultimodalDataset({"image": torch.from_numpy(x).reshape(shape)}, torch.from_numpy(y), num_classes=10,
                             kinds={"image": kind}, name=f"mnist/{part}")
           for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test))]
    return out[0], out[1], {"dataset": "mnist", "source": used, "train": len(y_train), "test": len(y_test)}


class WaveformOptions(_Options):
    """A derived ``waveform`` modality: each recording's raw audio resampled to ``sample_rate``,
    cut or zero-padded to ``seconds``, standardised per recording unless ``normalize`` is false."""

    seconds: PositiveFloat = 1.0
    sample_rate: PositiveInt = 16000
    normalize: bool = True


class GE2EOptions(_Options):
    """A derived ``ge2e`` modality: the front end of the pretrained GE2E speaker encoder
    (:mod:`mmdistill.data.ge2e`: 16 kHz, 40 mel bands, 25 ms windows every 10 ms), each recording
    cut or zero-padded to ``seconds``."""

    seconds: PositiveFloat = 1.6


class FSDDOptions(DatasetOptions):
    split: Literal["official", "unseen-speaker"] = "official"
    snr_db: float | None = None
    # what the label is: the spoken ``digit`` (10 classes) or the ``speaker`` (6, sorted by name)
    label: Literal["digit", "speaker"] = "digit"
    # also a ``waveform`` modality of the same recordings (e.g. for a wav2vec2 teacher)
    waveform: WaveformOptions | None = None
    # also a ``ge2e`` modality of the same recordings (for the pretrained speaker encoder, model kind ``pretrained``)
    ge2e: GE2EOptions | None = None

    @classmethod
    def describe(cls, modality, spec, info, options):
        if modality == "audio":
            return _fsdd_log_mel(info.get("snr_db"))
        if modality == "ge2e" and info.get("ge2e"):
            return {"description": describe_ge2e(info["ge2e"], spec.shape), "ge2e": info["ge2e"]}
        return None


@register_dataset("fsdd", FSDDOptions)
def build_fsdd(root, options: FSDDOptions, seed: int):
    """Spoken digits alone, as modality ``audio`` ([1, 32, 32] standardised log-mel), and with
    ``waveform`` also as modality ``waveform`` ([samples]), with ``ge2e`` as modality ``ge2e``
    ([40, frames]), from the same recordings. Labels: the digit, or with ``label: speaker`` the speaker."""
    recordings = list_recordings(root)
    audio = log_mel_features(recordings, snr_db=options.snr_db)
    speakers = sorted({r.speaker for r in recordings})
    if options.label == "speaker":
        labels = torch.tensor([speakers.index(r.speaker) for r in recordings])
        if options.split == "unseen-speaker":
            raise DataError("data.split: unseen-speaker holds out a speaker, which label: speaker cannot predict; "
                            "use split: official")
    else:
        labels = torch.tensor([r.digit for r in recordings])
    is_test = torch.from_numpy(test_mask(recordings, options.split))
    mean, std = audio[~is_test].mean(), audio[~is_test].std()
    tensors, kinds = {"audio": (audio - mean) / std}, {"audio": "audio"}
    info = {"dataset": "fsdd", "split": options.split, "snr_db": options.snr_db,
            "standardise": {"audio": {"mean": float(mean), "std": float(std)}}}
    if options.waveform is not None:
        w = options.waveform
        tensors["waveform"] = waveforms(recordings, w.sample_rate, max(1, round(w.seconds * w.sample_rate)),
                                        normalize=w.normalize, snr_db=options.snr_db)
        kinds["waveform"] = "waveform"
        info["waveform"] = w.model_dump()
    if options.ge2e is not None:
        tensors["ge2e"] = ge2e_fsdd(recordings, GE2EParams(seconds=options.ge2e.seconds), snr_db=options.snr_db)
        kinds["ge2e"] = "sequence"
        info["ge2e"] = GE2EParams(seconds=options.ge2e.seconds).to_dict()
    if options.label == "speaker":
        info.update(label="speaker", classes=speakers)
    num_classes = len(speakers) if options.label == "speaker" else 10
    out = [MultimodalDataset({k: t[m] for k, t in tensors.items()}, labels[m], num_classes=num_classes, kinds=kinds,
                             groups=torch.from_numpy(np.flatnonzero(m.numpy())), name=f"fsdd/{part}")
           for part, m in (("train", ~is_test), ("test", is_test))]
    return out[0], out[1], info
