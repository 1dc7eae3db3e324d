"""Generic adapter: JSONL / JSON, CSV (or TSV) and Parquet tables with a column mapping.

The mapping names, for each field the pipeline knows, the source column that holds it::

    Generic(mapping={"image": "img_path", "caption": "report", "id": "uid"})

Fields: ``image`` (required), ``caption``, ``id``, ``modality``, ``body_part``, ``question``,
``answer``, ``kind``, ``category``; an unmapped field reads the column of its own name. One
row is one image reference, with one QA pair when the question (or answer) column has a
value; rows naming the same image merge in the pipeline. Unmapped scalar columns go into
``meta``. An image column holding a Hugging Face style ``{"path": ..., "bytes": ...}`` dict
uses its ``path``.

CSV is read with pyarrow's streaming reader, every column as raw bytes so that one row with
invalid UTF-8 is rejected (``undecodable``) without losing the rest of its block; a row with
the wrong number of fields is rejected as ``malformed_row``. Parquet is read in record
batches. Record references are ``file#row`` (0-based data row) for CSV/Parquet and
``file:line`` for JSONL.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from medhall.sources.base import QA, Item, Rejected, SourceRecord, clip_raw
from medhall.sources.reading import (
    Row,
    file_label,
    guarded,
    id_or_none,
    iter_json_rows,
    missing,
    normalise_kind,
    record_raw,
    strip_image_token,
    text_or_none,
)

FIELDS = (
    "image",
    "caption",
    "id",
    "modality",
    "body_part",
    "question",
    "answer",
    "kind",
    "category",
)
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
BATCH_ROWS = 8192


class Generic:
    """Any JSONL / CSV / Parquet table, with a column mapping."""

    name = "generic"

    def __init__(
        self,
        mapping: Mapping[str, str] | None = None,
        *,
        images_optional: bool = False,
        **columns: str,
    ) -> None:
        given = {**(mapping or {}), **columns}
        unknown = set(given) - set(FIELDS)
        if unknown:
            raise ValueError(
                f"unknown mapping field(s) {sorted(unknown)}; known: {', '.join(FIELDS)}"
            )
        self.mapping: dict[str, str] = {f: given.get(f, f) for f in FIELDS}
        self.images_optional = images_optional

    def read(self, path: Path, **options: Any) -> Iterator[Item]:
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in CSV_SUFFIXES:
            rows: Iterator[Row | Rejected] = iter_csv_rows(path, delimiter=CSV_SUFFIXES[suffix])
        elif suffix in PARQUET_SUFFIXES:
            rows = iter_parquet_rows(path)
        else:
            rows = iter_json_rows(path)
        return guarded(self.convert, rows)

    def _get(self, data: Mapping[str, Any], field: str) -> Any:
        return data.get(self.mapping[field])

    def convert(self, row: Row) -> Item:
        d = row.data
        source_id = id_or_none(self._get(d, "id")) or _row_number(row.ref)
        image = self._get(d, "image")
        if isinstance(image, dict):
            image = image.get("path")
        image_ref = text_or_none(image)
        if image_ref is None:
            return missing(row, self.mapping["image"], record_id=source_id)
        mapped = set(self.mapping.values())
        meta = {
            k: v for k, v in d.items() if k not in mapped and isinstance(v, (str, int, float, bool))
        }
        return SourceRecord(
            record_ref=row.ref,
            source_id=source_id,
            image_ref=image_ref,
            caption=text_or_none(self._get(d, "caption")),
            modality=text_or_none(self._get(d, "modality")),
            body_part=text_or_none(self._get(d, "body_part")),
            qa=self._qa(d, source_id),
            meta=meta,
            raw=record_raw(row),
        )

    def _qa(self, d: Mapping[str, Any], source_id: str | None) -> list[QA]:
        raw_q = self._get(d, "question")
        question = (
            strip_image_token(raw_q) if isinstance(raw_q, str) else (text_or_none(raw_q) or "")
        )
        answer = text_or_none(self._get(d, "answer"))
        if not question and answer is None:
            return []
        raw_kind = text_or_none(self._get(d, "kind"))
        kind = normalise_kind(raw_kind)
        meta = {"kind_raw": raw_kind} if raw_kind and kind is None else {}
        return [QA(question, answer, kind, text_or_none(self._get(d, "category")), source_id, meta)]


def _row_number(ref: str) -> str:
    """The row part of ``file#row`` / ``file:line``: the id of a row that has none."""
    return ref.rsplit("#", 1)[-1] if "#" in ref else ref.rsplit(":", 1)[-1]


def _decode_row(ref: str, values: Mapping[str, Any]) -> Row | Rejected:
    """A CSV row of raw bytes as text; ``undecodable`` naming the first bad column."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError as e:
                return Rejected(
                    ref,
                    "undecodable",
                    f"column {k!r} is not valid UTF-8: {e}",
                    raw=clip_raw(_csv_raw(values)),
                )
        out[k] = v
    return Row(ref, out, None)


def _csv_raw(values: Mapping[str, Any]) -> str:
    return ",".join(
        v.decode("utf-8", "replace") if isinstance(v, bytes) else ("" if v is None else str(v))
        for v in values.values()
    )


def iter_csv_rows(path: Path, *, delimiter: str = ",") -> Iterator[Row | Rejected]:
    """Rows of a CSV file, streamed in blocks; bad rows become Rejected, never an exception."""
    from pyarrow import csv as pacsv

    label = file_label(path)
    bad: list[Rejected] = []

    def on_invalid(row: Any) -> str:
        # pyarrow's streaming reader gives no line number: number the bad rows instead
        where = (
            f"{label}:{row.number}"
            if row.number is not None
            else f"{label}#malformed-{len(bad_seen) + 1}"
        )
        bad_seen.append(where)
        bad.append(
            Rejected(
                where,
                "malformed_row",
                f"expected {row.expected_columns} fields, got {row.actual_columns}",
                raw=clip_raw(row.text),
            )
        )
        return "skip"

    bad_seen: list[str] = []
    opts = {"delimiter": delimiter, "newlines_in_values": True}
    try:
        header = pacsv.open_csv(
            path, parse_options=pacsv.ParseOptions(**opts, invalid_row_handler=lambda _row: "skip")
        )
        types = {n: pa.binary() for n in header.schema.names}
        reader = pacsv.open_csv(
            path,
            parse_options=pacsv.ParseOptions(**opts, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )
    except FileNotFoundError:
        yield Rejected(label, "missing_file", f"input file not found: {path}")
        return
    except Exception as e:  # noqa: BLE001 - an unreadable file is one reject
        yield Rejected(label, "unreadable", f"cannot read CSV {path}: {e}")
        return
    yield from bad
    bad.clear()
    yield from _stream_batches(label, reader, bad, decode=True)


def iter_parquet_rows(path: Path) -> Iterator[Row | Rejected]:
    """Rows of a Parquet file, streamed in record batches."""
    import pyarrow.parquet as pq

    label = file_label(path)
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
    except FileNotFoundError:
        yield Rejected(label, "missing_file", f"input file not found: {path}")
        return
    except Exception as e:  # noqa: BLE001
        yield Rejected(label, "unreadable", f"cannot read Parquet {path}: {e}")
        return
    yield from _stream_batches(label, batches, [], decode=False)


def _stream_batches(
    label: str, batches: Any, bad: list[Rejected], *, decode: bool
) -> Iterator[Row | Rejected]:
    """Rows of an iterator of record batches, numbered from 0 across batches.

    ``bad`` collects the CSV parser's rejected rows while a block is parsed; they are yielded
    before that block's rows. ``decode``: values are raw bytes (CSV) to decode as UTF-8.
    """
    n = 0
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            break
        except Exception as e:  # noqa: BLE001 - a broken block ends the file, with a reject
            yield Rejected(f"{label}#{n}", "unreadable", f"cannot read rows from #{n} on: {e}")
            break
        yield from bad
        bad.clear()
        for values in batch.to_pylist():
            ref = f"{label}#{n}"
            n += 1
            yield _decode_row(ref, values) if decode else Row(ref, values, None)
    yield from bad


__all__ = ["Generic", "iter_csv_rows", "iter_parquet_rows"]
