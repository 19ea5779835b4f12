"""Modality kinds: one table of what each kind of modality is and what it allows.

A modality's kind (``ModalitySpec.kind``) says what its samples are. Every rule that depends on
the kind reads this table: which per-sample shapes a declared kind may have, which ``train``
augmentations, time shifts and CutMix cuts apply, how ``standardize`` treats it, the keyword a
Hugging Face model takes it as, and which encoder suits it. Adding a kind is one row here (plus
an encoder for it when no existing one fits).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ModalityKind:
    """One modality kind and what it allows.

    ``axes``: the per-sample axis counts a dataset's ``kinds:`` option may declare it for (None:
    not declarable, a loader makes it); ``time_axis``: its last axis is time, so
    ``train.time_shift`` applies; ``cutmix``: how CutMix cuts it (a ``box`` in the last two axes,
    a ``time`` band of the last axis; None: it cannot); ``augments``: the ``train.augment`` types
    that apply; ``standardise``: under ``data.standardize`` ``auto``/``true`` (``feature``: per
    feature under both; ``modality``: one mean and std, under ``true`` only; ``never``);
    ``hf_input``: the keyword a transformers model takes it as (None: hf models cannot read it);
    ``encoder``: the built-in encoder type that suits it."""

    name: str
    description: str
    axes: tuple[int, ...] | None = None
    time_axis: bool = False
    cutmix: Literal["box", "time"] | None = None
    augments: tuple[str, ...] = ()
    standardise: Literal["feature", "modality", "never"] = "modality"
    hf_input: str | None = None
    encoder: str = "mlp"


KINDS: dict[str, ModalityKind] = {k.name: k for k in (
    ModalityKind("image", "[C, H, W] or [H, W] pixels", axes=(2, 3), cutmix="box", augments=("translate",),
                 hf_input="pixel_values", encoder="conv"),
    ModalityKind("audio", "[C, F, T] or [F, T] spectrogram, time last", axes=(2, 3), time_axis=True, cutmix="time",
                 augments=("time_mask", "freq_mask", "time_shift"), encoder="conv"),
    ModalityKind("vector", "[D] feature vector", axes=(1,), standardise="feature"),
    ModalityKind("sequence", "[T, D] sequence of feature vectors (e.g. GE2E log-mel frames)", axes=(2,),
                 time_axis=True, cutmix="time"),
    ModalityKind("text", "[2, L] token ids (row 0) and attention mask (row 1), see mmdistill.data.text",
                 standardise="never", hf_input="input_ids", encoder="text"),
    ModalityKind("waveform", "[samples] raw audio at a fixed length (e.g. for a wav2vec2 teacher)", time_axis=True,
                 cutmix="time", hf_input="input_values"),
)}

#: every kind's name, in table order
MODALITY_KINDS = tuple(KINDS)
#: the kinds a dataset's ``kinds:`` option may declare (the others are made by loaders)
DECLARABLE = tuple(k for k, row in KINDS.items() if row.axes is not None)


def kinds_with(**where) -> tuple[str, ...]:
    """The kinds whose fields equal ``where`` (``kinds_with(time_axis=True)``)."""
    return tuple(k for k, row in KINDS.items() if all(getattr(row, f) == v for f, v in where.items()))


def augment_kinds(augment: str) -> tuple[str, ...]:
    """The kinds the ``train.augment`` type ``augment`` applies to."""
    return tuple(k for k, row in KINDS.items() if augment in row.augments)
