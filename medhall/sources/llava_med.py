"""LLaVA-Med adapters: PMC figure-caption records and instruction (conversation) records.

Caption records (the PMC-15M subset LLaVA-Med aligns on) look like::

    {"pair_id": "PMC123_F1", "pmid": "123", "fig_id": "F1", "fig_label": "Figure 1",
     "fig_caption": "...", "in_text_mention": [...],
     "domain": {"chest_xray": false, "mri": false, "ct_scan": true, "histology": false, "gross": false}}

Instruction records look like::

    {"id": "...", "image": "....jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat ...?"}, {"from": "gpt", "value": "..."}]}
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

# LLaVA-Med's ``domain`` flags -> (modality, body part) as the source states them.
DOMAIN_FLAGS: dict[str, tuple[str, str | None]] = {
    "chest_xray": ("chest x-ray", "chest"),
    "mri": ("MRI", None),
    "ct_scan": ("CT", None),
    "histology": ("histology", None),
    "gross": ("photograph", None),
}


def domain_hint(domain: Any) -> tuple[str | None, str | None]:
    """Modality and body part from a ``domain`` dict when exactly one flag is set."""
    if not isinstance(domain, dict):
        return None, None
    on = [k for k, v in domain.items() if v is True and k in DOMAIN_FLAGS]
    if len(on) != 1:
        return None, None
    return DOMAIN_FLAGS[on[0]]


class LlavaMedCaptions:
    """PMC figure-caption records (JSONL or a JSON list): one image and its caption each.

    ``image_ref`` is the record's ``image`` key when present, else ``"<pair_id>.jpg"`` (how
    LLaVA-Med names its images). ``fig_caption`` is the caption; a blank one is rejected as
    ``empty_caption``. ``domain`` flags give the modality (and "chest" for chest_xray) when
    exactly one is set; explicit ``modality`` / ``body_part`` keys (medhall's own corpora
    carry them) win over the flags. ``pmid``, ``fig_id``, ``fig_label``, ``domain``,
    ``in_text_mention`` and ``findings`` go into ``meta``.
    """

    name = "llava_med_captions"
    images_optional = False

    def read(self, path: Path, **options: Any) -> Iterator[Item]:
        return guarded(self.convert, iter_json_rows(Path(path)))

    def convert(self, row: Row) -> Item:
        d = row.data
        pair_id = id_or_none(d.get("pair_id"))
        image_ref = text_or_none(d.get("image")) or (f"{pair_id}.jpg" if pair_id else None)
        if image_ref is None:
            return missing(row, "pair_id")
        if "fig_caption" not in d:
            return missing(row, "fig_caption", record_id=pair_id)
        caption = text_or_none(d.get("fig_caption"))
        if caption is None:
            return Rejected(
                row.ref, "empty_caption", "fig_caption is empty", record_id=pair_id, raw=raw_of(row)
            )
        modality, body_part = domain_hint(d.get("domain"))
        # explicit labels (medhall's own corpora carry them) beat the domain flags
        modality = text_or_none(d.get("modality")) or modality
        body_part = text_or_none(d.get("body_part")) or body_part
        meta = {
            k: d[k]
            for k in ("pmid", "fig_id", "fig_label", "domain", "in_text_mention", "findings")
            if d.get(k) is not None
        }
        return SourceRecord(
            record_ref=row.ref,
            source_id=pair_id,
            image_ref=image_ref,
            caption=caption,
            modality=modality,
            body_part=body_part,
            meta=meta,
            raw=record_raw(row),
        )


class LlavaMedInstruct:
    """LLaVA-Med instruction records: ``id``, ``image``, ``conversations``.

    Consecutive human -> gpt turns become QA pairs (``<image>`` token removed); kind and
    category are unknown (None). The caption is the record's ``caption`` / ``fig_caption``
    if it has one, else None. A record with neither a usable QA pair nor a caption is
    rejected (``missing_field``: conversations).
    """

    name = "llava_med_instruct"
    images_optional = False

    def read(self, path: Path, **options: Any) -> Iterator[Item]:
        return guarded(self.convert, iter_json_rows(Path(path)))

    def convert(self, row: Row) -> Item:
        d = row.data
        source_id = id_or_none(d.get("id"))
        image_ref = text_or_none(d.get("image"))
        if image_ref is None:
            return missing(row, "image", record_id=source_id)
        qa, stats = conversation_qa(d.get("conversations"), source_id=source_id)
        qa = [q for q in qa if q.question or q.answer]
        caption = text_or_none(d.get("caption")) or text_or_none(d.get("fig_caption"))
        if not qa and caption is None:
            return Rejected(
                row.ref,
                "missing_field",
                "no usable human/gpt turn in 'conversations' and no caption",
                record_id=source_id,
                raw=raw_of(row),
            )
        meta = {k: v for k, v in stats.items() if v}
        return SourceRecord(
            record_ref=row.ref,
            source_id=source_id,
            image_ref=image_ref,
            caption=caption,
            modality=text_or_none(d.get("modality")),
            body_part=text_or_none(d.get("body_part")),
            qa=qa,
            meta=meta,
            raw=record_raw(row),
        )
