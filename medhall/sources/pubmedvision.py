"""PubMedVision adapter (JSON list or JSONL).

Records look like::

    {"id": "...", "image": ["images/pmc_1.jpg", "images/pmc_2.jpg"],
     "conversations": [{"from": "human", "value": "<image>\\n<image>\\nDescribe ..."},
                       {"from": "gpt", "value": "..."}],
     "modality": "Computed Tomography", "body_part": "Chest"}

Multi-image records: one :class:`SourceRecord` per image. The record's QA pairs are attached
to the **first** image only (a question about several images is one question; copying it to
every image would make near-duplicate pairs whose images could land in different splits).
Every image of the record shares ``group = id`` and its ``meta`` lists ``record_id``,
``image_index`` and ``siblings`` (all the record's image refs in order), so later stages can
keep a group together. A single-image record has ``source_id = id``; the images of a
multi-image record have ``source_id = "id#k"`` (k = 0, 1, ...). ``modality`` and
``body_part`` are kept as the source says them (normalised by the pipeline). PubMedVision has
no figure caption: ``caption`` is the record's ``caption`` field if present, else None.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medhall.sources.base import Item, Rejected, SourceRecord
from medhall.sources.reading import (
    Row,
    conversation_qa,
    guarded,
    id_or_none,
    iter_json_rows,
    missing,
    raw_of,
    record_raw,
    text_or_none,
)


def _image_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [s for s in (text_or_none(v) for v in value) if s]


class PubMedVision:
    """PubMedVision records: ``image`` (a list of paths), ``conversations``, ``modality``, ``body_part``."""

    name = "pubmedvision"
    images_optional = False

    def read(self, path: Path, **options: Any) -> Iterator[Item]:
        return guarded(self.convert, iter_json_rows(Path(path)))

    def convert(self, row: Row) -> Item | list[Item]:
        d = row.data
        record_id = id_or_none(d.get("id"))
        images = _image_list(d.get("image", d.get("images")))
        if not images:
            return missing(row, "image", record_id=record_id)
        qa, stats = conversation_qa(d.get("conversations"), source_id=record_id)
        qa = [q for q in qa if q.question or q.answer]
        caption = text_or_none(d.get("caption"))
        if not qa and caption is None:
            return Rejected(
                row.ref,
                "missing_field",
                "no usable human/gpt turn in 'conversations' and no caption",
                record_id=record_id,
                raw=raw_of(row),
            )
        multi = len(images) > 1
        out: list[Item] = []
        for k, ref in enumerate(images):
            meta: dict[str, Any] = {k2: v for k2, v in stats.items() if v}
            if multi:
                meta.update(record_id=record_id, image_index=k, siblings=images)
            out.append(
                SourceRecord(
                    record_ref=f"{row.ref}/{k}" if multi else row.ref,
                    source_id=(f"{record_id}#{k}" if record_id else None) if multi else record_id,
                    image_ref=ref,
                    caption=caption if k == 0 else None,
                    modality=text_or_none(d.get("modality")),
                    body_part=text_or_none(d.get("body_part")),
                    qa=qa if k == 0 else [],
                    meta=meta,
                    raw=record_raw(row),
                    group=(record_id or row.ref) if multi else None,
                )
            )
        return out
