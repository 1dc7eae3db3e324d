"""What every exporter shares: atomic files, one streaming JSON writer, and the joined view.

- :func:`atomic_path`: write to a hidden temp file next to the target, fsync, rename; a
  half-written export is never visible, and a failed one leaves nothing behind.
- :class:`JsonWriter`: a JSON array (``[`` + one element per line + ``]``) or JSON lines,
  written record by record, so memory does not grow with the number of records.
- :func:`run_exports`: one pass over a row source (:mod:`medhall.export.rows`) feeding every
  export's sink.
- :func:`export_batches` / :func:`iter_records`: the instructions joined with their image's
  columns (path, file name, modality, caption, ...), in a stable order, one Arrow batch (or
  one batch's ``to_pylist()``) at a time.

Image paths (:func:`image_paths`): with ``image_root`` unset, the ``image_ref`` exactly as the
source wrote it (e.g. ``34760421_FIG1.jpg`` for the MedHallTune release, relative to the
corpus's image folder). With ``image_root`` set, the resolved ``image_path`` relative to that
root when the file lies under it, else the absolute ``image_path``, else the ``image_ref``.
A DICOM image rendered to PNG (:mod:`medhall.export.render`, the images table's ``png_path``)
is written as that PNG instead: its absolute path, or relative to ``image_root`` when under it.
LLaVA's ``image_folder`` and LLaMA-Factory's ``media_dir`` both join a relative path to their
folder and keep an absolute one as is.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medhall.atomic import atomic_path
from medhall.export.render import PNG, png_column
from medhall.export.rows import RowSource, as_source, flat
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




def output_path(out_dir: PathLike, name: str, split: str | None, suffix: str) -> Path:
    """``out_dir/<name>_<split><suffix>`` (``<name><suffix>`` without a split)."""
    stem = f"{name}_{split}" if split else name
    return Path(out_dir) / f"{stem}{suffix}"


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(record: Any) -> str:
    """One record as compact JSON (non-ASCII kept as is); one shared encoder, no per-call setup."""
    return _ENCODER.encode(record)


class _Discard(Exception):
    """Thrown into :func:`atomic_path` to drop the temp file instead of committing it."""


def discard(atomic: contextlib.AbstractContextManager[Path]) -> None:
    """Leave an :func:`atomic_path` block without committing: its temp file is removed."""
    atomic.__exit__(_Discard, _Discard(), None)


class JsonWriter:
    """Stream records into a JSON array or JSON-lines file, atomically.

    ``with JsonWriter(path, lines=False) as w: w.write_many(records)``; the file appears at
    ``path`` only when the block ends without an error. ``count`` is the records written.
    ``omit_empty``: no file at all when no record was written (``written`` says whether the
    file was committed). ``encoder``: the JSON encoder of each record (default: compact, UTF-8).
    """

    def __init__(self, path: PathLike, *, lines: bool = False, omit_empty: bool = False, encoder: json.JSONEncoder | None = None) -> None:
        self.path = Path(path)
        self.lines = lines
        self.omit_empty = omit_empty
        self.count = 0
        self.written = False
        self._encode = (encoder or _ENCODER).encode
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
        while chunk := [self._encode(r) for r in itertools.islice(it, BATCH_SIZE)]:
            if self.lines:
                self._file.write("\n".join(chunk) + "\n")
            else:
                self._file.write(("\n" if self.count == 0 else ",\n") + ",\n".join(chunk))
            self.count += len(chunk)

    def write(self, record: Any) -> None:
        self.write_many([record])

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._atomic is not None
        empty = exc is None and self.omit_empty and self.count == 0
        try:
            if exc is None and not empty and not self.lines:
                self._file.write("\n]\n" if self.count else "]\n")
        finally:
            self._file.close()
            if empty:
                discard(self._atomic)
            else:
                self._atomic.__exit__(exc_type, exc, tb)
        self.written = exc is None and not empty


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
    png = png_column(images)
    if image_root is None:
        return ref if png is None else pc.coalesce(png, ref)
    resolved = images.column("image_path") if "image_path" in images.column_names else pa.nulls(images.num_rows, pa.string())
    if png is not None:
        resolved = pc.coalesce(png, resolved)
    prefix = os.path.abspath(image_root).rstrip(os.sep) + os.sep
    under = pc.fill_null(pc.starts_with(resolved, prefix), False)
    relative = pc.utf8_slice_codeunits(resolved, len(prefix))
    return pc.if_else(under, relative, pc.coalesce(resolved, ref))


def image_view(images: pa.Table, image_root: PathLike | None = None) -> pa.Table:
    """One row per image: ``image_id``, ``image`` (export path), ``image_name``, modality, caption...,
    ``png_path`` (the rendered PNG of a DICOM image, else null)."""
    cols: dict[str, Any] = {
        "image_id": images.column("image_id"),
        "image": image_paths(images, image_root),
        "image_name": image_names(images),
    }
    for c in (*IMAGE_COLUMNS, PNG):
        cols[c] = images.column(c) if c in images.column_names else pa.nulls(images.num_rows, pa.string())
    return pa.table(cols)


# --------------------------------------------------------------------------- sinks


class Sink:
    """One export target fed with view batches (in :attr:`order`) by :func:`run_exports`.

    A sink opens its files atomically on ``__enter__``, takes batches with :meth:`write` and
    commits on a clean ``__exit__`` (a failure leaves no file); :attr:`paths` are its files.
    With :attr:`omit_empty` set (what :func:`medhall.export.export_all` and the build do), a
    file that got no row is not written, and is dropped from :attr:`paths` on ``__exit__``:
    ``datasets.load_dataset`` refuses an empty file ("corresponds to no data").
    """

    order: Sequence[tuple[str, str]] = DEFAULT_ORDER
    image_root: PathLike | None = None
    omit_empty: bool = False
    paths: list[Path]

    def __enter__(self) -> Sink:
        return self

    def write(self, batch: pa.Table) -> None:
        raise NotImplementedError

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None


class JsonSink(Sink):
    """View rows -> ``records(rows)`` -> one JSON array (or JSON lines) file.

    ``answered_only``: pairs without an answer are left out (and counted in the log).
    ``by_image``: ``records`` groups rows by image, so a batch handed to it always ends at an
    image boundary (the last image's rows wait for the next batch).
    """

    def __init__(
        self,
        path: PathLike,
        records: Callable[[list[dict[str, Any]]], Iterable[Any]],
        *,
        lines: bool = False,
        answered_only: bool = False,
        by_image: bool = False,
        image_root: PathLike | None = None,
        order: Sequence[tuple[str, str]] = DEFAULT_ORDER,
    ) -> None:
        self.paths = [Path(path)]
        self.records = records
        self.answered_only = answered_only
        self.by_image = by_image
        self.image_root = image_root
        self.order = order
        self.unanswered = 0
        self._writer = JsonWriter(path, lines=lines)
        self._pending: list[dict[str, Any]] = []

    def __enter__(self) -> JsonSink:
        self._writer.omit_empty = self.omit_empty
        self._writer.__enter__()
        return self

    def write(self, batch: pa.Table) -> None:
        if self.answered_only:
            answered = pc.is_valid(batch.column("answer"))
            self.unanswered += batch.num_rows - (pc.sum(answered).as_py() or 0)
            batch = batch.filter(answered)
        for rb in batch.combine_chunks().to_batches():
            rows = rb.to_pylist()
            if self.by_image and rows:
                rows, last = self._pending + rows, rows[-1]["image_id"]
                cut = len(rows)
                while cut and rows[cut - 1]["image_id"] == last:
                    cut -= 1
                rows, self._pending = rows[:cut], rows[cut:]
            self._writer.write_many(self.records(rows))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if exc is None:
                if self._pending:
                    self._writer.write_many(self.records(self._pending))
                if self.unanswered:
                    log.info("export: left out %d pair(s) without an answer", self.unanswered)
        finally:
            self._writer.__exit__(exc_type, exc, tb)
            if exc is None and not self._writer.written:
                self.paths.remove(self._writer.path)


@dataclass
class Job:
    """A sink and the source rows it takes (a boolean mask over the source; None: all)."""

    sink: Sink
    mask: np.ndarray | None = None


def _order_columns(order: Sequence[tuple[str, str]]) -> list[str]:
    return [c for c, _ in order]


def _present(source: RowSource, extra: Mapping[str, Any]) -> list[str]:
    return [c for c in INSTRUCTION_COLUMNS if c in source.column_names and c not in extra]


def view_batches(
    source: RowSource,
    images: pa.Table,
    rows: np.ndarray,
    *,
    image_roots: Sequence[PathLike | None] = (None,),
    extra: Mapping[str, pa.Array] | None = None,
    batch_size: int = BATCH_SIZE,
) -> Iterator[tuple[np.ndarray, dict[Any, pa.Table]]]:
    """Source ``rows`` (in that order), ``batch_size`` at a time, joined with their image's columns.

    Yields ``(rows slice, {image_root: view batch})``: a view batch has the
    :data:`INSTRUCTION_COLUMNS` present (``extra`` columns, aligned to the source rows, are
    taken along), then ``image``, ``image_name`` and :data:`IMAGE_COLUMNS`. The join is an
    ``index_in`` over the image ids and a ``take`` per batch.
    """
    extra = {c: flat(a) for c, a in (extra or {}).items()}
    columns = _present(source, extra)
    names = [c for c in INSTRUCTION_COLUMNS if c in columns or c in extra]
    views = {root: image_view(images, root) for root in dict.fromkeys(image_roots)}
    image_ids = next(iter(views.values())).column("image_id").combine_chunks()
    for take, part in source.take_batches(rows, columns, batch_size):
        idx = _image_index(part, image_ids)
        cols = {c: part.column(c) for c in columns}
        cols.update({c: a.take(pa.array(take, pa.int64())) for c, a in extra.items()})
        left = [cols[c] for c in names]
        out = {}
        for root, view in views.items():
            right = view.drop_columns(["image_id"]).take(idx)
            out[root] = pa.Table.from_arrays([*left, *right.columns], names=[*names, *right.column_names]).combine_chunks()
        yield take, out


def run_exports(
    source: pa.Table | RowSource,
    images: pa.Table,
    jobs: Sequence[Job],
    *,
    extra: Mapping[str, pa.Array] | None = None,
    batch_size: int = BATCH_SIZE,
) -> list[Path]:
    """Feed every job's sink its rows, in the sink's order; one pass over the source per order.

    Only key columns of the source are held whole (``image_id`` and the order columns); the
    rows themselves stream ``batch_size`` at a time (:func:`view_batches`). Every image is
    checked first (``ValueError`` when a pair's image is not in ``images``), before any file is
    written; all files are committed together at the end. Returns every sink's paths.
    """
    source = as_source(source)
    extra = dict(extra or {})
    orders = list(dict.fromkeys(tuple(j.sink.order) for j in jobs))
    key_cols = list(dict.fromkeys(["image_id", *(c for o in orders for c in _order_columns(o) if c not in extra)]))
    keys = source.read(key_cols)
    for c, a in extra.items():
        keys = keys.append_column(c, a)
    everyone = np.zeros(source.num_rows, dtype=bool)
    for j in jobs:
        everyone |= True if j.mask is None else j.mask
    _image_index(keys.filter(everyone), image_view(images).column("image_id").combine_chunks())
    with contextlib.ExitStack() as stack:
        for j in jobs:
            stack.enter_context(j.sink)
        for order in orders:
            group = [j for j in jobs if tuple(j.sink.order) == order]
            union = np.zeros(source.num_rows, dtype=bool)
            for j in group:
                union |= True if j.mask is None else j.mask
            picked = np.flatnonzero(union)
            rows = picked[sorted_rows(keys.take(pa.array(picked, pa.int64())), order).to_numpy()]
            roots = [j.sink.image_root for j in group]
            for take, views in view_batches(source, images, rows, image_roots=roots, extra=extra, batch_size=batch_size):
                for j in group:
                    view = views[j.sink.image_root]
                    if j.mask is not None:
                        m = j.mask[take]
                        if not m.all():
                            view = view.filter(pa.array(m))
                    if view.num_rows:
                        j.sink.write(view)
    return [p for j in jobs for p in j.sink.paths]


def _image_index(instructions: pa.Table, image_ids: pa.Array) -> pa.Array:
    """For each pair, the row of its image in ``image_ids``; raises when an image is unknown."""
    idx = pc.index_in(instructions.column("image_id"), value_set=image_ids)
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


def export_batches(
    instructions: pa.Table | RowSource,
    images: pa.Table,
    *,
    image_root: PathLike | None = None,
    order: Sequence[tuple[str, str]] = DEFAULT_ORDER,
    rows: pa.Array | np.ndarray | None = None,
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
    source = as_source(instructions)
    keys = source.read(list(dict.fromkeys(["image_id", *_order_columns(order)])))
    _image_index(keys, image_view(images).column("image_id").combine_chunks())
    if rows is None:
        rows = sorted_rows(keys, order)
    rows = rows.to_numpy() if isinstance(rows, pa.Array | pa.ChunkedArray) else np.asarray(rows, dtype=np.int64)
    unanswered = 0
    for _, views in view_batches(source, images, rows, image_roots=[image_root], batch_size=batch_size):
        joined = views[image_root]
        if answered_only:
            answered = pc.is_valid(joined.column("answer"))
            unanswered += joined.num_rows - (pc.sum(answered).as_py() or 0)
            joined = joined.filter(answered)
        yield from joined.to_batches()
    if unanswered:
        log.info("export: left out %d pair(s) without an answer", unanswered)


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
