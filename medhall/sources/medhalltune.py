"""MedHallTune release adapter: the public validation files (JSONL).

Three layouts, all read the same way (one :class:`SourceRecord` per line):

- ``positive_qa.jsonl`` / ``negative_qa.jsonl``: ``question_id, image, question`` (question
  ends with ``"\\n<image>"``; no answer, no caption);
- ``val_*_qa-filtered.jsonl``: ``question_id, image, text, gpt4_answer, fig_caption``;
- ``llava-med-prediction-*-GPT4o-eval-filtered.jsonl``: the val fields plus ``question``,
  ``answer`` (a model's answer) and ``result`` (the judge's output). Only the QA fields are
  read here: a model's answer is not ground truth, it belongs to the evaluation stage.

``image_ref = image``; ``caption = fig_caption`` (None in the bare files); one QA with the
question (``text`` or ``question``, ``<image>`` removed), ``answer = gpt4_answer`` (None when
absent), ``source_qa_id = str(question_id)`` and ``kind`` from the file name ("positive" or
the release's "postive" -> positive, "negative" -> negative) unless the ``kind`` option says.
The images live on the hub, not in the release: ``images_optional`` is True, so a missing
image is flagged (``image_status = "missing"``), not quarantined.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medhall.sources.base import QA, Item, SourceRecord
from medhall.sources.reading import (
    Row,
    guarded,
    id_or_none,
    iter_json_rows,
    missing,
    normalise_kind,
    record_raw,
    strip_image_token,
    text_or_none,
)


def kind_from_filename(path: Path) -> str | None:
    """negative / positive from a release file name (the release spells it "postive" once)."""
    name = Path(path).name.lower()
    if "negative" in name:
        return "negative"
    if "positive" in name or "postive" in name:
        return "positive"
    return None


class MedHallTuneRelease:
    """The MedHallTune release JSONL files (bare, val, and prediction layouts)."""

    name = "medhalltune"
    images_optional = True

    def __init__(self, kind: str | None = None) -> None:
        """``kind``: force positive / negative for every file instead of reading the file name."""
        self.kind = normalise_kind(kind) if kind is not None else None
        if kind is not None and self.kind is None:
            raise ValueError(f"kind must be positive or negative, got {kind!r}")

    def read(self, path: Path, **options: Any) -> Iterator[Item]:
        path = Path(path)
        kind = (
            normalise_kind(options["kind"])
            if options.get("kind")
            else self.kind or kind_from_filename(path)
        )
        return guarded(lambda row: self.convert(row, kind), iter_json_rows(path))

    def convert(self, row: Row, kind: str | None) -> Item:
        d = row.data
        qid = id_or_none(d.get("question_id"))
        image_ref = text_or_none(d.get("image"))
        if image_ref is None:
            return missing(row, "image", record_id=qid)
        raw_q = d.get("text") if isinstance(d.get("text"), str) else d.get("question")
        question = strip_image_token(raw_q) if isinstance(raw_q, str) else ""
        if not question:
            return missing(row, "text" if "text" in d else "question", record_id=qid)
        qa = QA(
            question=question,
            answer=text_or_none(d.get("gpt4_answer")),
            kind=kind,
            source_qa_id=qid,
        )
        return SourceRecord(
            record_ref=row.ref,
            source_id=qid,
            image_ref=image_ref,
            caption=text_or_none(d.get("fig_caption")),
            qa=[qa],
            raw=record_raw(row),
        )
