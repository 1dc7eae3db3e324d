"""Writing an Arrow table as CSV, JSON lines or Parquet, atomically when the target is a path."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from medhall.atomic import atomic_path
from medhall.tempfiles import owner_tag

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


def write_table(
    table: pa.Table, dest: str | os.PathLike[str] | BinaryIO, fmt: str, *, overwrite: bool = True
) -> None:
    """Write ``table`` to a path (via a temp file and rename) or to an open binary stream.

    A failed write leaves no file behind. With ``overwrite=False`` an existing ``dest`` is never
    replaced, not even one that appears while the table is written: :class:`FileExistsError`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    if not isinstance(dest, str | os.PathLike):
        _write(table, dest, fmt)
        dest.flush()
        return
    if overwrite:
        with atomic_path(dest) as tmp, tmp.open("wb") as f:
            _write(table, f, fmt)
        return
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{owner_tag()}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as f:
            _write(table, f, fmt)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, target)  # creates target only if absent, atomically
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: check, then rename
            if target.exists() or target.is_symlink():
                raise FileExistsError(target) from None
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
