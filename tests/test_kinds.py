"""The modality-kind table: every rule that depends on a kind reads its row."""
import typing

import pytest
import torch

from mmdistill.data.augment import AUGMENT_KINDS, AugmentConfig
from mmdistill.data.augment import CUTMIX_KINDS
from mmdistill.data.dataset import check_kind
from mmdistill.data.kinds import DECLARABLE, KINDS, MODALITY_KINDS, augment_kinds, kinds_with
from mmdistill.data.npz import Kind
from mmdistill.distill.engine import TIME_KINDS
from mmdistill.errors import DataError
from mmdistill.models.encoders import ENCODERS
from mmdistill.models.hf import INPUTS

#: one sample shape of each kind
SHAPES = {"image": (1, 8, 8), "audio": (1, 8, 12), "vector": (5,), "sequence": (6, 4), "text": (2, 16),
          "waveform": (200,)}


def test_every_kind_has_a_row_and_an_encoder_that_reads_it():
    assert set(SHAPES) == set(MODALITY_KINDS)
    for kind, row in KINDS.items():
        encoder = ENCODERS.get(row.encoder)(SHAPES[kind])
        x = torch.randint(0, 2, (3, *SHAPES[kind])).float() if kind == "text" else torch.randn(3, *SHAPES[kind])
        assert encoder(x).shape == (3, encoder.out_dim), kind
        if row.axes is not None:
            assert len(SHAPES[kind]) in row.axes


def test_the_consumers_read_the_table():
    augment_types = {t for member in typing.get_args(typing.get_args(AugmentConfig)[0])
                     for t in typing.get_args(member.model_fields["type"].annotation)}
    assert set(AUGMENT_KINDS) == augment_types  # every augmentation has its kinds, from the rows
    assert {a for row in KINDS.values() for a in row.augments} <= augment_types
    assert AUGMENT_KINDS["translate"] == augment_kinds("translate") == ("image",)
    assert AUGMENT_KINDS["time_mask"] == ("audio",)
    assert TIME_KINDS == kinds_with(time_axis=True) == ("audio", "sequence", "waveform")
    assert CUTMIX_KINDS == {"image": "box", "audio": "time", "sequence": "time", "waveform": "time"}
    assert INPUTS == {"image": "pixel_values", "text": "input_ids", "waveform": "input_values"}
    assert typing.get_args(Kind) == DECLARABLE == ("image", "audio", "vector", "sequence")


def test_check_kind_uses_the_rows_axes():
    check_kind("f", "x", "sequence", (6, 4))
    check_kind("f", "x", "waveform", (1, 2, 3, 4))  # not declarable: its loader makes it, no check
    with pytest.raises(DataError, match=r"kinds.x: vector data has 1 axes per sample, but 'x' has shape \[6, 4\]"):
        check_kind("f", "x", "vector", (6, 4))
