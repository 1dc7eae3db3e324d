"""The DuckDB catalog: every table as a view, opened read-only.

``<root>/catalog.duckdb`` holds views only (no data), rebuilt atomically whenever the store
has changed since it was built. It can be opened by ``medhall sql`` or by any DuckDB client
(``duckdb ~/.medhall/catalog.duckdb``). The views:

- ``<table>``: the latest version of the table in every dataset, unioned (e.g. ``images``).
- ``<table>_versions``: every version, with ``_dataset`` and ``_version`` columns.
- ``<table>__<dataset>``: the latest version in one dataset.
- ``<table>__<dataset>__v<N>``: one version.
- ``filtered_instructions``: instructions with no failed QC verdict (rejects stay in the tables).
- ``artifacts``: one row per artifact version, from the manifests.

Tables with no artifact yet are empty views with the right columns, so queries never fail
for want of a run.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa

from medhall.schema import TABLES
from medhall.store.artifacts import Artifact, ArtifactStore

CATALOG_FILE = "catalog.duckdb"
ALLOWED_STATEMENTS = {"SELECT", "EXPLAIN"}

_DUCK_TYPES = {
    pa.string(): "VARCHAR",
    pa.int8(): "TINYINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
}


class ReadOnlyError(PermissionError):
    """A statement that would write was refused."""


class SQLError(ValueError):
    """A query that DuckDB could not run, with DuckDB's message."""


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    return _DUCK_TYPES[t]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _empty_select(table: str) -> str:
    cols = ", ".join(f"CAST(NULL AS {_duck_type(f.type)}) AS {_ident(f.name)}" for f in TABLES[table])
    return f"SELECT {cols} LIMIT 0"


def _parquet(paths: list[Path]) -> str:
    return "read_parquet([" + ", ".join(_lit(str(p)) for p in paths) + "], union_by_name=true)"


def view_statements(store: ArtifactStore) -> list[str]:
    """The CREATE VIEW statements for the store's current artifacts."""
    by_table: dict[str, list[Artifact]] = {t: [] for t in TABLES}
    for art in store.artifacts():
        by_table[art.table].append(art)
    stmts: list[str] = []
    manifests: list[str] = []
    for table, arts in by_table.items():
        latest: dict[str, Artifact] = {}
        for a in arts:
            if a.dataset not in latest or a.version > latest[a.dataset].version:
                latest[a.dataset] = a
        if latest:
            stmts.append(f"CREATE VIEW {_ident(table)} AS SELECT * FROM {_parquet([a.data_path for a in latest.values()])}")
            versions = " UNION ALL BY NAME ".join(
                f"SELECT *, {_lit(a.dataset)} AS _dataset, {a.version} AS _version FROM read_parquet({_lit(str(a.data_path))})"
                for a in arts
            )
            stmts.append(f"CREATE VIEW {_ident(table + '_versions')} AS {versions}")
        else:
            stmts.append(f"CREATE VIEW {_ident(table)} AS {_empty_select(table)}")
            stmts.append(
                f"CREATE VIEW {_ident(table + '_versions')} AS SELECT *, CAST(NULL AS VARCHAR) AS _dataset, "
                f"CAST(NULL AS INTEGER) AS _version FROM ({_empty_select(table)})"
            )
        for ds, a in latest.items():
            stmts.append(f"CREATE VIEW {_ident(f'{table}__{_safe(ds)}')} AS SELECT * FROM read_parquet({_lit(str(a.data_path))})")
        for a in arts:
            name = f"{table}__{_safe(a.dataset)}__v{a.version}"
            stmts.append(f"CREATE VIEW {_ident(name)} AS SELECT * FROM read_parquet({_lit(str(a.data_path))})")
            manifests.append(
                f"({_lit(a.table)}, {_lit(a.dataset)}, {a.version}, {a.rows}, "
                f"{_lit(a.fingerprint)}, {_lit(a.manifest.get('run_id') or '')}, "
                f"{_lit(a.manifest.get('created_at', ''))}, {_lit(str(a.data_path))})"
            )
    cols = "(\"table\", dataset, version, rows, content_fingerprint, run_id, created_at, path)"
    if manifests:
        stmts.append(f"CREATE VIEW artifacts AS SELECT * FROM (VALUES {', '.join(manifests)}) AS t{cols}")
    else:
        stmts.append(
            "CREATE VIEW artifacts AS SELECT * FROM (SELECT '' , '', 0, 0, '', '', '', '' LIMIT 0) AS t" + cols
        )
    stmts.append(
        "CREATE VIEW filtered_instructions AS SELECT i.* FROM instructions i "
        "WHERE NOT EXISTS (SELECT 1 FROM qc_verdicts q WHERE q.qa_id = i.qa_id AND q.verdict = 'incorrect')"
    )
    return stmts


def catalog_path(store: ArtifactStore) -> Path:
    return store.root / CATALOG_FILE


def is_stale(store: ArtifactStore) -> bool:
    cat = catalog_path(store)
    if not cat.exists():
        return True
    gen = store.generation_file
    return gen.exists() and gen.stat().st_mtime_ns >= cat.stat().st_mtime_ns


def build_catalog(store: ArtifactStore) -> Path:
    """(Re)build the catalog file atomically and return its path."""
    store.root.mkdir(parents=True, exist_ok=True)
    target = catalog_path(store)
    tmp = target.with_name(f".{CATALOG_FILE}.{uuid.uuid4().hex}")
    try:
        con = duckdb.connect(str(tmp))
        try:
            for stmt in view_statements(store):
                con.execute(stmt)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
            leftover.unlink(missing_ok=True)
    return target


def connect(store: ArtifactStore) -> duckdb.DuckDBPyConnection:
    """A read-only connection to an up-to-date catalog."""
    if is_stale(store):
        build_catalog(store)
    return duckdb.connect(str(catalog_path(store)), read_only=True)


def check_read_only(sql: str) -> str:
    """Return the single statement in ``sql`` if it only reads; raise otherwise.

    Only SELECT (which in DuckDB covers WITH, FROM-first, DESCRIBE, SHOW and SUMMARIZE) and
    EXPLAIN are allowed. COPY, INSERT, DROP, ATTACH, SET, PRAGMA, EXPORT ... are refused before
    anything runs, so nothing can change.
    """
    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise SQLError(str(e)) from None
    if not stmts:
        raise SQLError("no SQL statement given")
    if len(stmts) > 1:
        raise ReadOnlyError("give one statement at a time")
    kind = stmts[0].type.name
    if kind not in ALLOWED_STATEMENTS:
        raise ReadOnlyError(
            f"medhall sql is read-only: {kind} statements are refused and nothing was changed. "
            "Only SELECT/EXPLAIN queries run here; to save a result use --out PATH --format csv|json|parquet."
        )
    return stmts[0].query


def query(store: ArtifactStore, sql: str) -> pa.Table:
    """Run one read-only statement against the catalog and return the result as Arrow."""
    stmt = check_read_only(sql)
    con = connect(store)
    try:
        return con.sql(stmt).to_arrow_table()
    except duckdb.Error as e:
        raise SQLError(str(e).strip()) from None
    finally:
        con.close()
