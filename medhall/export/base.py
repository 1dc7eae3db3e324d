"""What every exporter shares: atomic files, one streaming JSON writer, and the joined view.

- :func:`atomic_path`: write to a hidden temp file next to the target, fsync, rename; a
  half-written export is never visible, and a failed one leaves nothing behind.
- :class:`JsonWriter`: a JSON array (``[`` + one element per line + ``]``) or JSON lines,
  written record by record, so memory does not grow with the number of records.
- :func:`export_batches` / :func:`iter_records`: the instructions joined with their image's
  columns (path, file name, modality, caption, ...), in a stable order, one Arrow batch (or
  one batch's ``to_pylist()``) at a time.

Image paths (:func:`image_paths`): with ``image_root`` unset, the ``image_ref`` exactly as the
source wrote it (e.g. ``34760421_FIG1.jpg`` for the MedHallTune release, relative to the
corpus's image folder). With ``image_root`` set, the resolved ``image_path`` relative to that
root when the file lies under it, else the absolute ``image_path``, else the ``image_ref``.
LLaVA's ``image_folder`` and LLaMA-Factory's ``media_dir`` both join a relative path to their
folder and keep an absolute one as is.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from medhall.split import image_names

log = logging.getLogger(__name__)

#: Rows per batch: bounds the Python objects alive at once (about 10 MB of records).
BATCH_SIZE = 8192
IMAGE_TOKEN = "<image>"
#: Default export order: grouped by image, then by pair id; independent of input order.
DEFAULT_ORDER = (("image_id", "ascending"), ("qa_id", "ascending"))
#: Instruction columns carried into the view (when present).
INSTRUCTION_COLUMNS = (
    "qa_id",
    "image_id",
    "dataset",
    "question",
    "answer",
    "kind",
    "category",
    "style",
    "generator",
    "source_qa_id",
    "question_id",
)
#: Image columns carried into the view, besides the computed ``image`` and ``image_name``.
IMAGE_COLUMNS = ("modality", "body_part", "caption")

PathLike = str | os.PathLike[str]


class Exporter(Protocol):
    """``write_<format>(instructions, images, out_dir, *, name, split, ...) -> [paths]``."""

    def __call__(
        self, instructions: pa.Table, images: pa.Table, out_dir: PathLike, *, name: str, split: str | None = None, **options: Any
    ) -> list[Path]: ...


# --------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success fsync it and rename it onto ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def output_path(out_dir: PathLike, name: str, split: str | None, suffix: str) -> Path:
    """``out_dir/<name>_<split><suffix>`` (``<name><suffix>`` without a split)."""
    stem = f"{name}_{split}" if split else name
    return Path(out_dir) / f"{stem}{suffix}"


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(record: Any) -> str:
    """One record as compact JSON (non-ASCII kept as is); one shared encoder, no per-call setup."""
    return _ENCODER.encode(record)


class JsonWriter:
    """Stream records into a JSON array or JSON-lines file, atomically.

    ``with JsonWriter(path, lines=False) as w: w.write_many(records)``; the file appears at
    ``path`` only when the block ends without an error. ``count`` is the records written.
    """

    def __init__(self, path: PathLike, *, lines: bool = False) -> None:
        self.path = Path(path)
        self.lines = lines
        self.count = 0
        self._atomic: contextlib.AbstractContextManager[Path] | None = None
        self._file: Any = None

    def __enter__(self) -> JsonWriter:
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._file = tmp.open("w", encoding="utf-8", newline="\n")
        if not self.lines:
            self._file.write("[")
        return self

    def write_many(self, records: Iterable[Any]) -> None:
        """Write ``records`` (any iterable, consumed lazily, :data:`BATCH_SIZE` at a time)."""
        it = iter(records)
        while chunk := [dumps(r) for r in itertools.islice(it, BATCH_SIZE)]:
            if self.lines:
                self._file.write("\n".join(chunk) + "\n")
            else:
                self._file.write(("\n" if self.count == 0 else ",\n") + ",\n".join(chunk))
            self.count += len(chunk)

    def write(self, record: Any) -> None:
        self.write_many([record])

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._atomic is not None
        try:
            if exc is None and not self.lines:
                self._file.write("\n]\n" if self.count else "]\n")
        finally:
            self._file.close()
            self._atomic.__exit__(exc_type, exc, tb)


def write_json_records(path: PathLike, records: Iterable[Any], *, lines: bool = False) -> Path:
    """Write ``records`` (consumed lazily) as a JSON array or JSON lines, atomically."""
    with JsonWriter(path, lines=lines) as w:
        w.write_many(records)
    return Path(path)


def write_json_file(path: PathLike, obj: Any) -> Path:
    """Write one small JSON document (indented), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return Path(path)


# --------------------------------------------------------------------------- the view


def image_paths(images: pa.Table, image_root: PathLike | None = None) -> pa.ChunkedArray:
    """The path each exporter writes for each image (see the module docstring)."""
    ref = images.column("image_ref")
    if image_root is None:
        return ref
    resolved = images.column("image_path") if "image_path" in images.column_names else pa.nulls(images.num_rows, pa.string())
    prefix = os.path.abspath(image_root).rstrip(os.sep) + os.sep
    under = pc.fill_null(pc.starts_with(resolved, prefix), False)
    relative = pc.utf8_slice_codeunits(resolved, len(prefix))
    return pc.if_else(under, relative, pc.coalesce(resolved, ref))


def image_view(images: pa.Table, image_root: PathLike | None = None) -> pa.Table:
    """One row per image: ``image_id``, ``image`` (export path), ``image_name``, modality, caption..."""
    cols: dict[str, Any] = {
        "image_id": images.column("image_id"),
        "image": image_paths(images, image_root),
        "image_name": image_names(images),
    }
    for c in IMAGE_COLUMNS:
        cols[c] = images.column(c) if c in images.column_names else pa.nulls(images.num_rows, pa.string())
    return pa.table(cols)


def _image_index(instructions: pa.Table, view: pa.Table) -> pa.Array:
    """For each pair, the row of its image in ``view``; raises when an image is unknown."""
    idx = pc.index_in(instructions.column("image_id"), value_set=view.column("image_id").combine_chunks())
    if idx.null_count:
        lost = instructions.filter(pc.is_null(idx)).column("image_id")
        raise ValueError(
            f"{len(lost)} pair(s) reference images not in the images table, e.g. {lost.slice(0, 3).to_pylist()}"
        )
    return idx.combine_chunks() if isinstance(idx, pa.ChunkedArray) else idx


def sorted_rows(table: pa.Table, order: Sequence[tuple[str, str]] = DEFAULT_ORDER) -> pa.Array:
    """Row indices of ``table`` in ``order`` (input order when ``order`` is empty)."""
    if not order:
        return pa.array(range(table.num_rows), pa.int64())
    return pc.sort_indices(table, sort_keys=list(order))


def _log_unanswered(instructions: pa.Table, rows: pa.Array) -> None:
    missing = pc.sum(pc.is_null(instructions.column("answer")).take(rows)).as_py() or 0
    if missing:
        log.info("export: left out %d pair(s) without an answer", missing)


def export_batches(
    instructions: pa.Table,
    images: pa.Table,
    *,
    image_root: PathLike | None = None,
    order: Sequence[tuple[str, str]] = DEFAULT_ORDER,
    rows: pa.Array | None = None,
    answered_only: bool = False,
    batch_size: int = BATCH_SIZE,
) -> Iterator[pa.RecordBatch]:
    """The pairs joined with their image's columns, in ``order``, ``batch_size`` rows at a time.

    Columns: the :data:`INSTRUCTION_COLUMNS` present in ``instructions``, then ``image``,
    ``image_name`` and :data:`IMAGE_COLUMNS`. ``rows``: the row indices to export, in output
    order (instead of ``order``), so a writer can select without copying the table.
    ``answered_only``: leave out pairs without an answer (a training record needs one).
    The join is one ``index_in`` over the image ids and a ``take`` per batch: beyond the
    inputs, only index arrays and one batch are in memory.
    """
    view = image_view(images, image_root)
    own = instructions.select([c for c in INSTRUCTION_COLUMNS if c in instructions.column_names])
    idx = _image_index(own, view)
    rows = sorted_rows(own, order) if rows is None else rows
    if answered_only:
        _log_unanswered(own, rows)
    image_cols = view.drop_columns(["image_id"])
    for start in range(0, len(rows), batch_size):
        take = rows.slice(start, batch_size)
        left = own.take(take)
        right = image_cols.take(idx.take(take))
        joined = pa.Table.from_arrays([*left.columns, *right.columns], names=[*left.column_names, *right.column_names])
        if answered_only:
            joined = joined.filter(pc.is_valid(joined.column("answer")))
        yield from joined.combine_chunks().to_batches()


def iter_records(instructions: pa.Table, images: pa.Table, **options: Any) -> Iterator[dict[str, Any]]:
    """:func:`export_batches` as dicts, converted one batch at a time (``to_pylist``)."""
    for batch in export_batches(instructions, images, **options):
        yield from batch.to_pylist()


def human_turn(question: str, *, first: bool = True, token: str = IMAGE_TOKEN, sep: str = "\n") -> str:
    """The user's message: the image token (first turn only) + ``sep`` + the question."""
    return f"{token}{sep}{question}" if first else question


def require_columns(table: pa.Table, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}")


def read_json(path: PathLike) -> Mapping[str, Any]:
    """A small JSON document, or ``{}`` when the file does not exist."""
    p = Path(path)
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}
