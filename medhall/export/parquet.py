"""Flat Parquet files that ``datasets.load_dataset("parquet", data_files=...)`` loads.

One file per split, ``<name>_<split>.parquet`` (zstd), one row per pair, all columns plain
strings (:data:`PARQUET_SCHEMA`). ``image`` is the export path (see
:func:`medhall.export.base.image_paths`; a DICOM image's PNG), ``image_name`` the file name
of ``image_ref``. With ``omit_empty`` (:func:`medhall.export.export_all`, the build) a file
with no row is not written. Rows are in the
default export order (by image, then pair id); batches go straight from Arrow to the
writer, with no Python objects per row. Pairs without an answer are kept (``answer`` null).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from medhall.export.base import (
    BATCH_SIZE,
    Job,
    PathLike,
    RowSource,
    Sink,
    atomic_path,
    discard,
    output_path,
    run_exports,
)

FORMAT = "parquet"

PARQUET_SCHEMA = pa.schema([
    pa.field("qa_id", pa.string()),
    pa.field("image_id", pa.string()),
    pa.field("image", pa.string()),
    pa.field("image_name", pa.string()),
    pa.field("question", pa.string()),
    pa.field("answer", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("category", pa.string()),
    pa.field("style", pa.string()),
    pa.field("modality", pa.string()),
    pa.field("body_part", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("source_qa_id", pa.string()),
    pa.field("split", pa.string()),
])


def to_export_batch(batch: pa.RecordBatch, split: str | None) -> pa.RecordBatch:
    """A view batch in :data:`PARQUET_SCHEMA` (absent columns as nulls, ``split`` filled in)."""
    cols = []
    for f in PARQUET_SCHEMA:
        if f.name == "split":
            cols.append(pa.array([split] * batch.num_rows, pa.string()))
        elif f.name in batch.schema.names:
            cols.append(batch.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(batch.num_rows, f.type))
    return pa.RecordBatch.from_arrays(cols, schema=PARQUET_SCHEMA)


class _Spool:
    """Rows waiting for their row group, kept as compressed Arrow IPC in memory.

    Several Parquet files fill at once in one pass (the filtered split and every ablation
    subset), each holding up to a row group of rows; compressed, those buffers cost a few
    times less memory than the Arrow batches themselves.
    """

    OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.rows = 0
        self._open()

    def _open(self) -> None:
        self._out = pa.BufferOutputStream()
        self._writer = pa.ipc.new_stream(self._out, self.schema, options=self.OPTIONS)

    def append(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def drain(self) -> pa.Table:
        """Every spooled row (one chunk); the spool is empty afterwards."""
        self._writer.close()
        table = pa.ipc.open_stream(self._out.getvalue()).read_all().combine_chunks()
        self.rows = 0
        self._open()
        return table


class ParquetSink(Sink):
    """``<name>_<split>.parquet``: view batches re-cut to ``batch_size`` rows, one row group each."""

    def __init__(self, path: PathLike, split: str | None, *, image_root: PathLike | None = None, batch_size: int = BATCH_SIZE * 8) -> None:
        self.paths = [Path(path)]
        self.split = split
        self.image_root = image_root
        self.batch_size = batch_size
        self._spool = _Spool(PARQUET_SCHEMA)
        self._stack = contextlib.ExitStack()
        self.count = 0

    def __enter__(self) -> ParquetSink:
        self._atomic = atomic_path(self.paths[0])
        tmp = self._atomic.__enter__()
        self._stack.push(self._commit)
        self._writer = self._stack.enter_context(pq.ParquetWriter(tmp, PARQUET_SCHEMA, compression="zstd"))
        return self

    def _commit(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        """Close the atomic file (after the Parquet writer): rename it, or drop it on an error
        or when it is empty and ``omit_empty`` is set."""
        if exc is None and self.omit_empty and self.count == 0:
            discard(self._atomic)
            self.paths = []
        else:
            self._atomic.__exit__(exc_type, exc, tb)
        return False

    def _flush(self, final: bool) -> None:
        if self._spool.rows < self.batch_size and not (final and self._spool.rows):
            return
        table = self._spool.drain()
        start = 0
        while table.num_rows - start >= self.batch_size or (final and start < table.num_rows):
            self._writer.write_batch(table.slice(start, self.batch_size).to_batches()[0])
            start += self.batch_size
        for rb in table.slice(start).to_batches():
            self._spool.append(rb)

    def write(self, batch: pa.Table) -> None:
        self.count += batch.num_rows
        for rb in batch.to_batches():
            self._spool.append(to_export_batch(rb, self.split))
        self._flush(final=False)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if exc is None:
                self._flush(final=True)
        except BaseException as e:
            self._stack.__exit__(type(e), e, e.__traceback__)
            raise
        self._stack.__exit__(exc_type, exc, tb)


def parquet_sink(
    out_dir: PathLike,
    *,
    name: str,
    split: str | None = None,
    image_root: PathLike | None = None,
    batch_size: int = BATCH_SIZE * 8,
) -> ParquetSink:
    """The sink that writes ``<out_dir>/<name>_<split>.parquet``."""
    return ParquetSink(output_path(out_dir, name, split, ".parquet"), split, image_root=image_root, batch_size=batch_size)


def write_parquet(
    instructions: pa.Table | RowSource,
    images: pa.Table,
    out_dir: PathLike,
    *,
    name: str,
    split: str | None = None,
    image_root: PathLike | None = None,
    batch_size: int = BATCH_SIZE * 8,
) -> list[Path]:
    """Write ``<out_dir>/<name>_<split>.parquet``; returns ``[path]``."""
    sink = parquet_sink(out_dir, name=name, split=split, image_root=image_root, batch_size=batch_size)
    return run_exports(instructions, images, [Job(sink)])
