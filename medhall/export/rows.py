"""Where the pairs to export come from: a table in memory, or a Parquet file streamed.

Both give the exporters the same three reads: whole columns (:meth:`read`), the pairs of some
images (:meth:`where_image`), and rows in any order a batch at a time (:meth:`take_batches`).
:class:`ParquetSource` never holds the file whole: its out-of-order reads go through a
bounded distribution sort on disk.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medhall.tempfiles import owner_tag

PathLike = str | os.PathLike[str]


class TableSource:
    """Instructions held in memory: rows are taken from the table directly."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.num_rows = table.num_rows
        self.column_names = table.column_names

    def read(self, columns: Sequence[str]) -> pa.Table:
        """The given columns of every row (for a table: no copy)."""
        return self.table.select(list(columns))

    def where_image(self, image_ids: pa.Array, columns: Sequence[str]) -> pa.Table:
        """The given columns of the pairs about ``image_ids``."""
        return self.table.select(list(columns)).filter(pc.is_in(self.table.column("image_id"), value_set=image_ids))

    def take_batches(self, rows: np.ndarray, columns: Sequence[str], batch_size: int) -> Iterator[tuple[np.ndarray, pa.Table]]:
        """``(rows slice, those rows' columns)`` for each ``batch_size`` slice of ``rows``, in that order."""
        own = self.table.select(list(columns))
        for start in range(0, len(rows), batch_size):
            take = rows[start : start + batch_size]
            yield take, own.take(pa.array(take, pa.int64()))


class ParquetSource:
    """Instructions in a Parquet file, read batch by batch; never materialised whole.

    :meth:`take_batches` returns rows in any order with memory bounded by ``bucket_rows``: one
    pass over the file distributes the wanted rows to temporary Arrow IPC files, one per
    ``bucket_rows`` consecutive output positions (a distribution sort); each bucket is then
    read, put in order and handed out. Rows already in file order skip the temporary files.
    """

    def __init__(self, path: PathLike, *, tmp_dir: PathLike | None = None, read_rows: int = 65536, bucket_rows: int = 65536) -> None:
        self.path = Path(path)
        self.tmp_dir = tmp_dir
        self.read_rows = read_rows
        self.bucket_rows = bucket_rows
        meta = pq.ParquetFile(self.path).metadata
        self.num_rows = meta.num_rows
        self._schema = meta.schema.to_arrow_schema()
        self.column_names = list(self._schema.names)

    def _batches(self, columns: Sequence[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
        offset = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=self.read_rows, columns=list(columns), use_threads=False):
            yield offset, batch
            offset += batch.num_rows

    def read(self, columns: Sequence[str]) -> pa.Table:
        return pq.read_table(self.path, columns=list(columns))

    def where_image(self, image_ids: pa.Array, columns: Sequence[str]) -> pa.Table:
        cols = list(dict.fromkeys(["image_id", *columns]))
        parts = [b.filter(pc.is_in(b.column("image_id"), value_set=image_ids)) for _, b in self._batches(cols)]
        return pa.Table.from_batches(parts, schema=pa.schema([self._schema.field(c) for c in cols])).select(list(columns))

    def take_batches(self, rows: np.ndarray, columns: Sequence[str], batch_size: int) -> Iterator[tuple[np.ndarray, pa.Table]]:
        n = len(rows)
        if n == 0:
            return
        position = np.full(self.num_rows, -1, dtype=np.int64)  # output position of each file row
        position[rows] = np.arange(n)
        if n == 1 or bool(np.all(np.diff(rows) > 0)):
            yield from self._in_file_order(rows, position, columns, batch_size)
            return
        bucket_rows = max(1, self.bucket_rows // batch_size) * batch_size  # batches never straddle buckets
        with tempfile.TemporaryDirectory(prefix=f".medhall-sort-{owner_tag()}-", dir=self.tmp_dir) as tmp:
            paths = [Path(tmp) / f"{b}.arrow" for b in range((n + bucket_rows - 1) // bucket_rows)]
            writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            try:
                for offset, batch in self._batches(columns):
                    pos = position[offset : offset + batch.num_rows]
                    keep = np.flatnonzero(pos >= 0)
                    if not len(keep):
                        continue
                    buckets = pos[keep] // bucket_rows
                    by_bucket = np.argsort(buckets, kind="stable")
                    keep, buckets = keep[by_bucket], buckets[by_bucket]
                    picked = batch.take(pa.array(keep, pa.int64())).append_column("__pos", pa.array(pos[keep]))
                    bounds = np.flatnonzero(np.diff(buckets)) + 1
                    for lo, hi in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [len(buckets)])), strict=True):
                        b = int(buckets[lo])
                        if b not in writers:
                            writers[b] = pa.ipc.new_stream(str(paths[b]), picked.schema, options=options)
                        writers[b].write_batch(picked.slice(lo, hi - lo))
            finally:
                for w in writers.values():
                    w.close()
            for b, path in enumerate(paths):
                with pa.memory_map(str(path)) as source:
                    bucket = pa.ipc.open_stream(source).read_all()
                path.unlink()
                local = bucket.column("__pos").to_numpy() - b * bucket_rows
                order = np.empty(len(local), dtype=np.int64)
                order[local] = np.arange(len(local))
                bucket = bucket.drop_columns(["__pos"]).take(pa.array(order, pa.int64()))
                start = b * bucket_rows
                for s in range(0, bucket.num_rows, batch_size):
                    yield rows[start + s : start + s + batch_size], bucket.slice(s, batch_size)
                del bucket

    def _in_file_order(self, rows: np.ndarray, position: np.ndarray, columns: Sequence[str], batch_size: int) -> Iterator[tuple[np.ndarray, pa.Table]]:
        pending: list[pa.RecordBatch] = []
        done = 0
        for offset, batch in self._batches(columns):
            keep = np.flatnonzero(position[offset : offset + batch.num_rows] >= 0)
            if len(keep):
                pending.append(batch.take(pa.array(keep, pa.int64())))
            buffered = sum(b.num_rows for b in pending)
            while buffered >= batch_size or (buffered and done + buffered == len(rows)):
                table = pa.Table.from_batches(pending)
                out = table.slice(0, batch_size)
                yield rows[done : done + out.num_rows], out
                done += out.num_rows
                pending = table.slice(out.num_rows).to_batches()
                buffered -= out.num_rows


RowSource = TableSource | ParquetSource


def flat(a: pa.Array | pa.ChunkedArray) -> pa.Array:
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a


def as_source(instructions: pa.Table | RowSource) -> RowSource:
    return TableSource(instructions) if isinstance(instructions, pa.Table) else instructions


__all__ = ["ParquetSource", "RowSource", "TableSource", "as_source", "flat"]
