"""Parquet artifacts (versioned, atomic, with manifests) and the read-only DuckDB catalog."""

from medhall.store.artifacts import Artifact, ArtifactStore, StoreError, redact
from medhall.store.catalog import ReadOnlyError, SQLError, build_catalog, connect, query

__all__ = [
    "Artifact",
    "ArtifactStore",
    "ReadOnlyError",
    "SQLError",
    "StoreError",
    "build_catalog",
    "connect",
    "query",
    "redact",
]
