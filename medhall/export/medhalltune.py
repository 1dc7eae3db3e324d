"""The MedHallTune release layout: one JSONL file per kind.

``<name>_<split>_positive_qa.jsonl`` and ``<name>_<split>_negative_qa.jsonl``, one line per
pair, as in the release's ``val_*_qa-filtered.jsonl``::

    {"question_id": 0, "image": "34760421_FIG1.jpg",
     "text": "<question>\\n<image>", "gpt4_answer": "<answer>", "fig_caption": "<caption>"}

``image`` is the file name of the image's ``image_ref`` (the release names images by file
name; they live in the hub dataset); for a DICOM image rendered to PNG
(:mod:`medhall.export.render`), the PNG's absolute path. Lines are ordered by
``question_id`` and serialised as the release's are (:data:`RELEASE_ENCODER`); a file is
written for each kind, even when it is empty, unless the sink's ``omit_empty`` is set (as
:func:`medhall.export.export_all` and the build do). Every pair needs a ``kind`` (positive /
negative).

Rows ingested from the release's ``val_*_qa-filtered.jsonl`` come back byte for byte, but for
the captions ingest stripped of surrounding whitespace (29 of the 2238 lines; docs/exports.md).

``question_id`` (:func:`question_ids`), unique within a kind like the release's:

- kept from ``source_qa_id`` when every pair has an integer one, unique per kind (rows read
  from the release: exporting them reproduces the release's ids);
- otherwise 0, 1, 2, ... per kind in ``qa_id`` order (stable: the same pairs get the same ids
  in every run; adding pairs renumbers those after them).

An ``int64`` column ``question_id`` already in the instructions is used as is;
:func:`medhall.export.export_all` adds one over all splits together, so train and test ids
never collide.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medhall.export.base import (
    IMAGE_TOKEN,
    Job,
    JsonWriter,
    PathLike,
    RowSource,
    Sink,
    as_source,
    output_path,
    run_exports,
)
from medhall.export.render import PNG
from medhall.schema import KINDS

FORMAT = "medhalltune"
QUESTION_ID = "question_id"


def _source_ids(instructions: pa.Table) -> pa.ChunkedArray | None:
    """``source_qa_id`` as int64 when every row has an integer one, unique per kind; else None."""
    if "source_qa_id" not in instructions.column_names or instructions.num_rows == 0:
        return None
    src = instructions.column("source_qa_id")
    if src.null_count or not pc.all(pc.match_substring_regex(src, r"^\d{1,18}$")).as_py():
        return None
    ids = src.cast(pa.int64())
    distinct = pa.table({"kind": instructions.column("kind"), "q": ids}).group_by(["kind", "q"]).aggregate([])
    return ids if distinct.num_rows == instructions.num_rows else None


def _sequential_ids(instructions: pa.Table) -> pa.Array:
    """0, 1, 2, ... within each kind, in ``qa_id`` order."""
    kinds = pc.fill_null(instructions.column("kind"), "")
    qa = instructions.column("qa_id")
    ids = np.zeros(instructions.num_rows, dtype=np.int64)
    for kind in pc.unique(kinds).to_pylist():
        pos = np.flatnonzero(pc.equal(kinds, kind).to_numpy())
        order = pc.sort_indices(qa.take(pa.array(pos))).to_numpy()
        ids[pos[order]] = np.arange(len(pos))
    return pa.array(ids)


def question_ids(instructions: pa.Table) -> pa.Array | pa.ChunkedArray:
    """The release ``question_id`` of each pair (rules in the module docstring)."""
    kept = _source_ids(instructions)
    return kept if kept is not None else _sequential_ids(instructions)


def with_question_ids(instructions: pa.Table) -> pa.Table:
    """``instructions`` with a ``question_id`` column (unchanged when it has one)."""
    if QUESTION_ID in instructions.column_names:
        return instructions
    return instructions.append_column(QUESTION_ID, question_ids(instructions))


#: The release's own serialisation: ``json.dumps`` defaults (``", "`` / ``": "`` separators,
#: non-ASCII as ``\\uXXXX`` escapes), keys in the release's order, one line per record.
RELEASE_ENCODER = json.JSONEncoder()


def release_records(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Release lines from view rows (a DICOM image: its rendered PNG's absolute path)."""
    for r in rows:
        yield {
            "question_id": r[QUESTION_ID],
            "image": r.get(PNG) or r["image_name"],
            "text": f"{r['question']}\n{IMAGE_TOKEN}",
            "gpt4_answer": r["answer"],
            "fig_caption": r["caption"],
        }


def _check_kinds(instructions: pa.Table) -> None:
    kinds = instructions.column("kind")
    bad = pc.invert(pc.fill_null(pc.is_in(kinds, value_set=pa.array(KINDS)), False))
    count = pc.sum(bad).as_py() or 0
    if count:
        raise ValueError(f"medhalltune export: {count} pair(s) have no kind (positive/negative); the release has one file per kind")


#: Release files are ordered by ``question_id`` within each kind.
RELEASE_ORDER = (("kind", "ascending"), (QUESTION_ID, "ascending"), ("qa_id", "ascending"))
#: The columns :func:`question_ids` reads.
KEY_COLUMNS = ("qa_id", "kind", "source_qa_id")


class MedHallTuneSink(Sink):
    """One JSONL file per kind, fed in :data:`RELEASE_ORDER` (rows need a ``question_id``)."""

    order = RELEASE_ORDER

    def __init__(self, out_dir: PathLike, *, name: str, split: str | None = None) -> None:
        self.paths = [output_path(out_dir, name, split, f"_{kind}_qa.jsonl") for kind in KINDS]
        self._writers = {
            kind: JsonWriter(path, lines=True, encoder=RELEASE_ENCODER) for kind, path in zip(KINDS, self.paths, strict=True)
        }
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> MedHallTuneSink:
        for w in self._writers.values():
            w.omit_empty = self.omit_empty
            self._stack.enter_context(w)
        return self

    def write(self, batch: pa.Table) -> None:
        kinds = batch.column("kind")
        for kind, writer in self._writers.items():
            part = batch.filter(pc.fill_null(pc.equal(kinds, kind), False))
            if part.num_rows:
                writer.write_many(release_records(part.to_pylist()))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stack.__exit__(exc_type, exc, tb)
        if exc is None:
            self.paths = [w.path for w in self._writers.values() if w.written]


def release_keys(source: RowSource, mask: np.ndarray | None = None, *, keys: pa.Table | None = None) -> dict[str, pa.Array]:
    """Check the kinds of the rows in ``mask`` and number them: ``{"question_id": ...}``
    aligned to the source rows (empty when the source has the column). Only
    :data:`KEY_COLUMNS` are read (or taken from ``keys``), so this is cheap for a whole artifact."""
    if keys is None:
        keys = source.read([c for c in KEY_COLUMNS if c in source.column_names])
    chosen = keys if mask is None else keys.filter(mask)
    _check_kinds(chosen)
    if QUESTION_ID in source.column_names:
        return {}
    qids = np.zeros(source.num_rows, dtype=np.int64)
    ids = question_ids(chosen.select([c for c in KEY_COLUMNS if c in chosen.column_names]))
    ids = (ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids).to_numpy(zero_copy_only=False)
    if mask is None:
        qids[:] = ids
    else:
        qids[np.flatnonzero(mask)] = ids
    return {QUESTION_ID: pa.array(qids)}


def write_medhalltune(
    instructions: pa.Table | RowSource,
    images: pa.Table,
    out_dir: PathLike,
    *,
    name: str,
    split: str | None = None,
) -> list[Path]:
    """Write ``<name>_<split>_positive_qa.jsonl`` and ``..._negative_qa.jsonl``; returns both paths."""
    source = as_source(instructions)
    extra = release_keys(source)
    return run_exports(source, images, [Job(MedHallTuneSink(out_dir, name=name, split=split))], extra=extra)
