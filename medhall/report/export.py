"""Writing an Arrow table as CSV, JSON lines or Parquet, atomically when the target is a path."""

from __future__ import annotations

import json
import os
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from medhall.atomic import atomic_path

FORMATS = ("csv", "json", "parquet")


def _write(table: pa.Table, sink: BinaryIO, fmt: str) -> None:
    if fmt == "csv":
        pacsv.write_csv(table, sink)
    elif fmt == "json":
        for row in table.to_pylist():
            sink.write((json.dumps(row, default=str, ensure_ascii=False) + "\n").encode())
    elif fmt == "parquet":
        pq.write_table(table, sink, compression="zstd")
    else:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")


def write_table(table: pa.Table, dest: str | os.PathLike[str] | BinaryIO, fmt: str) -> None:
    """Write ``table`` to a path (via a temp file and rename) or to an open binary stream."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    if not isinstance(dest, str | os.PathLike):
        _write(table, dest, fmt)
        dest.flush()
        return
    with atomic_path(dest) as tmp, tmp.open("wb") as f:
        _write(table, f, fmt)
