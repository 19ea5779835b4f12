"""What a data source declares beside its builder: :class:`DatasetOptions`.

A dataset is registered as an options model plus a builder
(:func:`~mmdistill.data.registry.register_dataset`). Deriving the options model from
:class:`DatasetOptions` lets the source also say which options name files (``PATHS``, found
beside the config file, then under the data root) and how a raw sample becomes each modality
(:meth:`DatasetOptions.describe`, written to an export's ``model.json``), so no other module
needs to know the source by name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Mapping

from ..options import Strict

if TYPE_CHECKING:
    from .dataset import ModalitySpec


class DatasetOptions(Strict):
    """A data source's options (unknown keys refused), and what it declares about its data."""

    #: options naming a file or folder (dotted, ``*`` any key): ``{"path": "file"}``
    PATHS: ClassVar[dict[str, str]] = {}

    @classmethod
    def describe(cls, modality: str, spec: "ModalitySpec", info: Mapping, options: Mapping) -> dict | None:
        """What a deployer must do to a raw sample to get ``modality``: ``{"description": text}``
        plus any parameters (``log_mel``, ``ge2e``), from the builder's ``info`` and the config's
        ``options``; None: the array is used as the dataset stores it."""
        return None
