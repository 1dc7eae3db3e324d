"""What an ingest adapter yields.

An adapter reads one corpus format and yields, per source record, either a
:class:`SourceRecord` (an image with its caption, and any question-answer pairs the source
already has) or a :class:`Rejected` (the record could not be read, with a reason code). It
never raises on bad input and never drops a record silently. Image checking, dedup and
modality inference happen after the adapter, in :mod:`medhall.ingest`, the same for every
source.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

RAW_LIMIT = 4096


def clip_raw(raw: str | bytes | None) -> str | None:
    """The raw record as text, truncated to :data:`RAW_LIMIT` characters for the quarantine."""
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return raw if len(raw) <= RAW_LIMIT else raw[:RAW_LIMIT] + "…[truncated]"


@dataclass
class QA:
    """A question-answer pair the source already has."""

    question: str
    answer: str | None = None
    kind: str | None = None  # positive | negative
    category: str | None = None
    source_qa_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceRecord:
    """One image reference with its caption (and QA pairs, for instruction corpora)."""

    record_ref: str  # where it was: "file.jsonl:17", "file.json#3"
    source_id: str | None  # the record's id in the source
    image_ref: str  # the image path as the source wrote it
    caption: str | None
    modality: str | None = None  # as the source states it (normalised later)
    body_part: str | None = None
    qa: list[QA] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    raw: str | None = None  # raw text of the record, for a later quarantine
    #: Id of the multi-image source record this image belongs to (e.g. a PubMedVision record
    #: with several images): the images of one group are ingested together; only the first
    #: carries the QA pairs, so a caption-less sibling is not an "empty caption" record.
    group: str | None = None


@dataclass
class Rejected:
    """A record that could not be read at all."""

    record_ref: str
    reason: str  # malformed_json, missing_field, undecodable, empty_caption, bad_value, ...
    detail: str
    record_id: str | None = None
    raw: str | None = None


Item = SourceRecord | Rejected


class Adapter(Protocol):
    """An ingest adapter: a name and a reader."""

    name: str
    #: True when the source's images usually live elsewhere (e.g. the MedHallTune release,
    #: whose images are on the hub): a missing image is flagged, not quarantined.
    images_optional: bool

    def read(self, path: Path, **options: Any) -> Iterator[Item]: ...
