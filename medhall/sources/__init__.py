"""Ingest adapters: one per corpus format, all yielding :class:`~medhall.sources.base.SourceRecord`
or :class:`~medhall.sources.base.Rejected` (see :mod:`medhall.sources.base`).

``get_adapter("pubmedvision")`` returns a ready adapter; options go to its constructor
(``get_adapter("generic", mapping={"image": "path"})``, ``get_adapter("medhalltune", kind="negative")``).
"""

from __future__ import annotations

from typing import Any

from medhall.sources.base import QA, Adapter, Item, Rejected, SourceRecord
from medhall.sources.generic import Generic
from medhall.sources.llava_med import LlavaMedCaptions, LlavaMedInstruct
from medhall.sources.medhalltune import MedHallTuneRelease
from medhall.sources.pubmedvision import PubMedVision

ADAPTERS: dict[str, type] = {
    cls.name: cls
    for cls in (LlavaMedCaptions, LlavaMedInstruct, PubMedVision, MedHallTuneRelease, Generic)
}


def get_adapter(name: str, **options: Any) -> Adapter:
    """The adapter called ``name``, built with ``options``; a ValueError lists the known names."""
    try:
        cls = ADAPTERS[name]
    except KeyError:
        raise ValueError(
            f"unknown source adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}"
        ) from None
    return cls(**options)


__all__ = [
    "ADAPTERS",
    "QA",
    "Adapter",
    "Generic",
    "Item",
    "LlavaMedCaptions",
    "LlavaMedInstruct",
    "MedHallTuneRelease",
    "PubMedVision",
    "Rejected",
    "SourceRecord",
    "get_adapter",
]
