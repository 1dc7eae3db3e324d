"""A content cache of text-metric values, so that scoring the same answer against the same
reference with the same metric is done once.

One SQLite file, ``<home>/cache/metrics/scores.sqlite`` (WAL mode; safe to share between
threads and processes), holding ``key -> value``. The key is the SHA-256 of the canonical JSON
of ``(metric, identity, reference, hypothesis)``, where ``identity`` is the metric's ``params``
(implementation, library versions, options; for BERTScore the encoder, its origin and layer)
plus, for an encoder given as a local directory, that directory's listing fingerprint. A
library upgrade, another encoder or another layer therefore misses; qa_ids, models and runs
are not part of the key, so the same pair scored for another evaluation hits.

Values are floats stored as SQLite REAL (8-byte IEEE, so a value read back is the value
written, bit for bit). :class:`MetricCache` counts what it served (``hits``) and what had to be
computed (``computed``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from medhall.ids import canonical_json, sha256_hex

_SCHEMA = "CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, value REAL NOT NULL)"
_CHUNK = 500  # keys per SELECT (SQLite's default limit on parameters is 32766; stay small)


def cache_path(home: str | Path) -> Path:
    """Where a store rooted at ``home`` keeps its metric cache."""
    return Path(home) / "cache" / "metrics" / "scores.sqlite"


class MetricCache:
    """``key -> value`` of computed metric values (see the module's docstring for the key)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.computed = 0
        with closing(self._connect()) as conn:
            conn.execute(_SCHEMA)

    def __repr__(self) -> str:
        return f"MetricCache({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        # One short-lived connection per operation: usable from any thread (Prefect task threads).
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @staticmethod
    def identity(params: Mapping[str, Any], files: str | None = None) -> str:
        """The canonical identity of a metric's configuration (``files``: a local encoder's
        fingerprint, when the encoder is a directory)."""
        return canonical_json({"params": dict(params), "files": files})

    @staticmethod
    def key(metric: str, identity: str, reference: str, hypothesis: str) -> str:
        return sha256_hex(canonical_json([metric, identity, reference, hypothesis]))

    def get_many(self, keys: Sequence[str]) -> dict[str, float]:
        """The cached values of those ``keys`` that are cached (counted as hits)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, float] = {}
        with closing(self._connect()) as conn:
            for i in range(0, len(wanted), _CHUNK):
                chunk = wanted[i : i + _CHUNK]
                rows = conn.execute(f"SELECT key, value FROM scores WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                found.update((k, float(v)) for k, v in rows)
        self.hits += sum(1 for k in keys if k in found)
        return found

    def put_many(self, items: Iterable[tuple[str, float]]) -> int:
        """Store newly computed values (counted as computed); returns how many. A key already
        present keeps its first value."""
        items = list(items)
        rows = [(k, float(v)) for k, v in items if v == v]  # NaN is never cached
        if rows:
            with closing(self._connect()) as conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT OR IGNORE INTO scores (key, value) VALUES (?, ?)", rows)
                conn.execute("COMMIT")
        self.computed += len(items)
        return len(items)

    def __len__(self) -> int:
        with closing(self._connect()) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0])


__all__ = ["MetricCache", "cache_path"]
