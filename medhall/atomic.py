"""Atomic file writes: a temp file next to the target, fsynced, renamed onto it.

A reader sees the old file or the new one, never a half-written one; a crash leaves at most a
hidden ``.<name>.<pid>@<host>.<hex>.tmp`` file, which nothing reads and the next run sweeps
(:mod:`medhall.tempfiles`).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medhall.tempfiles import owner_tag


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success fsync it and rename it onto ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{owner_tag()}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_parquet(path: str | os.PathLike[str], table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
