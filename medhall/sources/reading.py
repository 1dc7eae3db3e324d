"""Reading helpers shared by every adapter: JSON / JSONL records and turning rows into items.

One place knows how a corpus file becomes ``(record_ref, dict, raw)`` rows:

- ``*.jsonl`` (and anything that is not a JSON document) is read line by line. A blank line
  is skipped; a line that is not UTF-8 becomes ``Rejected("undecodable")``; a line that does
  not parse becomes ``Rejected("malformed_json")`` with the parser's message; a line that
  parses to something other than an object becomes ``Rejected("bad_value")``.
- ``*.json`` whose first non-blank byte is ``[`` is one JSON list of records. A list that does
  not parse (or is not UTF-8) gives *one* ``Rejected`` for the whole file; a ``.json`` file
  holding a single object is one record; a ``.json`` file that is neither is read as JSONL.
- A file that cannot be opened gives one ``Rejected("missing_file")`` or
  ``Rejected("unreadable")``.

Nothing here raises on bad input. :func:`guarded` wraps an adapter's per-row conversion so
that an unexpected error in it becomes ``Rejected("bad_value")`` instead of stopping a run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medhall.sources.base import QA, Item, Rejected, clip_raw

try:  # orjson is a dependency of prefect; the standard library is the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only without orjson
    _orjson = None

IMAGE_TOKEN = "<image>"

HUMAN_ROLES = frozenset({"human", "user"})
ASSISTANT_ROLES = frozenset({"gpt", "assistant", "model"})


@dataclass(frozen=True, slots=True)
class Row:
    """One parsed record: where it was, its fields, and its raw text."""

    ref: str  # "file.jsonl:17" or "file.json#3" or "file.csv#3"
    data: Mapping[str, Any]
    raw: str | None


def file_label(path: Path) -> str:
    """The name used in record references (``file:line``): the file's base name."""
    return Path(path).name


def _loads(text: str) -> Any:
    """Parse JSON text; orjson when available, the standard library for its error message."""
    if _orjson is not None:
        try:
            return _orjson.loads(text)
        except _orjson.JSONDecodeError:
            pass  # re-parse with json: it accepts NaN and gives a readable error
    return json.loads(text)


def _read_bytes(path: Path) -> bytes | Rejected:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return Rejected(file_label(path), "missing_file", f"input file not found: {path}")
    except OSError as e:
        return Rejected(file_label(path), "unreadable", f"cannot read {path}: {e}")


def iter_json_rows(path: Path) -> Iterator[Row | Rejected]:
    """Records of a JSON list, a single JSON object, or a JSONL file (see the module doc)."""
    path = Path(path)
    data = _read_bytes(path)
    if isinstance(data, Rejected):
        yield data
        return
    head = data.lstrip()[:1]
    if path.suffix.lower() == ".json" and head in (b"[", b"{"):
        whole = _parse_document(path, data)
        if whole is not None:
            yield from whole
            return
    yield from _iter_lines(path, data)


def _parse_document(path: Path, data: bytes) -> list[Row | Rejected] | None:
    """A ``.json`` document's records, or None when it should be read as JSONL instead."""
    label = file_label(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return [
            Rejected(
                label, "undecodable", f"{path} is not valid UTF-8: {e}", raw=clip_raw(data[:4096])
            )
        ]
    try:
        doc = _loads(text)
    except ValueError as e:
        if text.lstrip().startswith("["):
            return [
                Rejected(
                    label,
                    "malformed_json",
                    f"{path} is not valid JSON: {e}",
                    raw=clip_raw(text[:4096]),
                )
            ]
        return None  # "{...}\n{...}": JSONL saved as .json
    if isinstance(doc, dict):
        return [_as_row(f"{label}#0", doc, text)]
    if not isinstance(doc, list):
        return [
            Rejected(
                label,
                "bad_value",
                f"{path}: expected a JSON list of objects, got {type(doc).__name__}",
            )
        ]
    return [_as_row(f"{label}#{i}", rec, None) for i, rec in enumerate(doc)]


def _as_row(ref: str, rec: Any, raw: str | None) -> Row | Rejected:
    if not isinstance(rec, dict):
        return Rejected(
            ref,
            "bad_value",
            f"expected a JSON object, got {type(rec).__name__}",
            raw=clip_raw(json.dumps(rec, default=str)),
        )
    return Row(ref, rec, raw)


def _iter_lines(path: Path, data: bytes) -> Iterator[Row | Rejected]:
    label = file_label(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        ref = f"{label}:{lineno}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Rejected(ref, "undecodable", f"line is not valid UTF-8: {e}", raw=clip_raw(line))
            continue
        try:
            rec = _loads(text)
        except ValueError as e:
            yield Rejected(ref, "malformed_json", f"JSON error: {e}", raw=clip_raw(text))
            continue
        yield _as_row(ref, rec, text)


def raw_of(row: Row) -> str | None:
    """The row's raw text for a later quarantine (serialised when the source had none)."""
    if row.raw is not None:
        return clip_raw(row.raw)
    return clip_raw(json.dumps(row.data, ensure_ascii=False, default=str))


def record_raw(row: Row) -> str | None:
    """The raw text to keep on a :class:`SourceRecord`: the source line, or None for an item
    of a JSON list (the pipeline serialises the record if it ever quarantines it; serialising
    every list item up front would cost time for nothing)."""
    return clip_raw(row.raw)


def guarded(
    convert: Callable[[Row], Item | list[Item]], rows: Iterator[Row | Rejected]
) -> Iterator[Item]:
    """Apply an adapter's row conversion; pass rejects through; never raise on a bad row."""
    for row in rows:
        if isinstance(row, Rejected):
            yield row
            continue
        try:
            out = convert(row)
        except Exception as e:  # noqa: BLE001 - a bad record must never stop a run
            yield Rejected(
                row.ref,
                "bad_value",
                f"{type(e).__name__}: {e}",
                record_id=_id_of(row.data),
                raw=raw_of(row),
            )
            continue
        if isinstance(out, list):
            yield from out
        else:
            yield out


def _id_of(data: Mapping[str, Any]) -> str | None:
    for key in ("id", "question_id", "pair_id"):
        if data.get(key) is not None:
            return str(data[key])
    return None


def text_or_none(value: Any) -> str | None:
    """A stripped string, or None for a missing / blank / non-scalar value."""
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        return None
    s = str(value).strip()
    return s or None


def id_or_none(value: Any) -> str | None:
    """A source id as text (``12`` and ``"12"`` agree); None when absent."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def strip_image_token(text: str) -> str:
    """Remove every ``<image>`` token and the blank lines / spaces around it."""
    if IMAGE_TOKEN not in text:
        return text.strip()
    parts = [p.strip() for p in text.split(IMAGE_TOKEN)]
    return "\n".join(p for p in parts if p)


def missing(row: Row, field: str, *, record_id: str | None = None) -> Rejected:
    """``Rejected("missing_field")`` naming the field."""
    return Rejected(
        row.ref,
        "missing_field",
        f"required field {field!r} is missing or empty",
        record_id=record_id,
        raw=raw_of(row),
    )


def conversation_qa(turns: Any, *, source_id: str | None = None) -> tuple[list[QA], dict[str, int]]:
    """Pair consecutive human -> assistant turns of a LLaVA-style conversation into QA.

    The ``<image>`` token and the newlines around it are removed from every turn. A human
    turn not followed by an answer becomes a QA with ``answer=None``; an answer with no
    question before it is counted in the returned stats (``orphan_answers``), as are turns
    with an unknown role (``unknown_turns``). QA ids are ``"<source_id>#<n>"``.
    """
    stats = {"orphan_answers": 0, "unknown_turns": 0}
    qa: list[QA] = []
    pending: str | None = None
    if not isinstance(turns, list):
        return qa, stats
    for turn in turns:
        role = str(turn.get("from", turn.get("role", ""))).lower() if isinstance(turn, dict) else ""
        value = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        text = strip_image_token(value) if isinstance(value, str) else ""
        if role in HUMAN_ROLES:
            if pending is not None:
                qa.append(_qa(pending, None, source_id, len(qa)))
            pending = text
        elif role in ASSISTANT_ROLES:
            if pending is None:
                stats["orphan_answers"] += 1
            else:
                qa.append(_qa(pending, text or None, source_id, len(qa)))
                pending = None
        else:
            stats["unknown_turns"] += 1
    if pending is not None:
        qa.append(_qa(pending, None, source_id, len(qa)))
    return qa, stats


def _qa(question: str, answer: str | None, source_id: str | None, n: int) -> QA:
    return QA(
        question=question, answer=answer, source_qa_id=f"{source_id}#{n}" if source_id else None
    )


KIND_SYNONYMS = {
    "positive": "positive",
    "postive": "positive",  # the MedHallTune release's spelling
    "pos": "positive",
    "p": "positive",
    "non-hallucination": "positive",
    "nonhallucination": "positive",
    "negative": "negative",
    "neg": "negative",
    "n": "negative",
    "hallucination": "negative",
}


def normalise_kind(value: Any) -> str | None:
    """positive / negative from the spellings sources use; None when it is not one of them."""
    s = text_or_none(value)
    return KIND_SYNONYMS.get(s.lower()) if s else None
