"""Work directories of resumable stages: identity, so caches cannot outlive what they stand for."""

from __future__ import annotations

import uuid
from pathlib import Path

WORK_ID_FILE = ".work-id"


def work_id(wd: Path | str, *, create: bool = False) -> str | None:
    """A random id written once into a work folder (with ``create``).

    A deleted and remade folder gets a new id (an inode number may be reused; this is not), so
    a Prefect cache key that includes it cannot answer for shard outputs that are gone.
    """
    from medhall.atomic import atomic_path

    path = Path(wd) / WORK_ID_FILE
    if not path.exists() and create:
        Path(wd).mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(uuid.uuid4().hex)
    return path.read_text().strip() if path.exists() else None
