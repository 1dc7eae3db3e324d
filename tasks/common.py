"""What every task shares: where results go, and cache keys from explicit inputs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from medhall import ids
from medhall.config import get_settings
from medhall.ids import canonical_json, sha256_hex
from medhall.store import Artifact, ArtifactStore


def store() -> ArtifactStore:
    return ArtifactStore()


def configure_results() -> Path:
    """Persist task results (for cache hits) under the store root, not ~/.prefect."""
    path = get_settings(fresh=True).resolved_home() / "prefect-results"
    path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(path))
    return path


def path_fingerprint(path: str | os.PathLike[str]) -> str:
    """A file's content hash; a directory's listing (names, sizes, mtimes) hash; else ``absent``."""
    return ids.path_fingerprint(path, absent="absent")

def cache_key(*parts: Any) -> str:
    """A cache key from explicit inputs, scoped to the store root."""
    return sha256_hex(canonical_json([str(store().root), *parts]))


def artifact_key(name: str) -> str:
    """A Prefect artifact key from a name: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "dataset"


def describe(art: Artifact) -> dict[str, Any]:
    """What a task returns about an artifact: small and serialisable."""
    return {"name": art.name, "rows": art.rows, "fingerprint": art.fingerprint, "path": str(art.data_path)}
