"""Flat Parquet files that ``datasets.load_dataset("parquet", data_files=...)`` loads.

One file per split, ``<name>_<split>.parquet`` (zstd), one row per pair, all columns plain
strings (:data:`PARQUET_SCHEMA`). ``image`` is the export path (see
:func:`medhall.export.base.image_paths`), ``image_name`` its file name. Rows are in the
default export order (by image, then pair id); batches go straight from Arrow to the
writer, with no Python objects per row. Pairs without an answer are kept (``answer`` null).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medhall.export.base import BATCH_SIZE, PathLike, atomic_path, export_batches, output_path

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


def write_parquet(
    instructions: pa.Table,
    images: pa.Table,
    out_dir: PathLike,
    *,
    name: str,
    split: str | None = None,
    image_root: PathLike | None = None,
    batch_size: int = BATCH_SIZE * 8,
) -> list[Path]:
    """Write ``<out_dir>/<name>_<split>.parquet``; returns ``[path]``."""
    path = output_path(out_dir, name, split, ".parquet")
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, PARQUET_SCHEMA, compression="zstd") as writer:
        for batch in export_batches(instructions, images, image_root=image_root, batch_size=batch_size):
            writer.write_batch(to_export_batch(batch, split))
    return [path]
