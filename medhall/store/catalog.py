"""The DuckDB catalog: every table as a view, opened read-only.

``<root>/catalog.duckdb`` holds views only (no data). It records the store's generation token
(``<root>/.generation``, replaced by every store write) read *before* its views were made, in
``medhall_meta.catalog_info``; a catalog whose token differs from the store's is stale and is
rebuilt, atomically, before any query runs on it. It can be opened by ``medhall sql`` or by any
DuckDB client (``duckdb -readonly ~/.medhall/catalog.duckdb``). The views:

- ``<table>``: the latest version of the table in every dataset, unioned (e.g. ``images``).
- ``<table>_versions``: every version, with ``_dataset`` and ``_version`` columns.
- ``<table>__<dataset>``: the latest version in one dataset.
- ``<table>__<dataset>__v<N>``: one version.
- ``filtered_instructions``: instructions with no failed QC verdict (rejects stay in the tables).
- ``artifacts``: one row per artifact version, from the manifests.

Tables with no artifact yet are empty views with the right columns, so queries never fail
for want of a run.

:func:`query` (``medhall sql``) runs exactly one SELECT (which covers WITH, FROM-first, VALUES,
DESCRIBE, SHOW, SUMMARIZE) or EXPLAIN of one, and nothing else, in three layers:

1. the statement is parsed and checked before anything runs (:func:`check_read_only`): one
   statement; a SELECT with only reading query nodes at any depth (DuckDB parses
   ``WITH t AS (COPY ... TO 'f') SELECT 1`` as a SELECT) and allowed table functions; for
   EXPLAIN, no ANALYZE and no options;
2. it runs on a connection that can read only the store's Parquet files, with external access
   off and its configuration locked (:func:`connect`): no other file, extension or setting;
3. before it runs, its physical plan (``EXPLAIN``, which runs nothing) must hold no operator
   that writes (:func:`_check_plan`): the second layer alone would let a statement write onto
   the very Parquet files it may read.

Temporary catalog files are named ``.catalog.duckdb.<pid>@<host>.<32 hex>`` (and ``....wal``)
next to ``catalog.duckdb`` (:mod:`medhall.tempfiles` recognises them); one left by a crashed
process can be deleted once that process is gone.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa

from medhall.schema import TABLES
from medhall.store.artifacts import Artifact, ArtifactStore
from medhall.tempfiles import owner_tag

CATALOG_FILE = "catalog.duckdb"
ALLOWED_STATEMENTS = {"SELECT", "EXPLAIN"}
#: The schema holding the catalog's own bookkeeping (not a table of the store).
META_SCHEMA = "medhall_meta"
#: The name the catalog is attached under on a query connection (as if opened directly).
ATTACH_AS = "catalog"

#: Table functions a query may call. Anything else (``query``/``query_table`` and
#: ``json_execute_serialized_sql`` run SQL text; ``checkpoint``, ``enable_logging``, ... change
#: state; ``read_text``/``read_csv``/``glob``... read files) is refused before it runs.
ALLOWED_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree",
    "summary", "histogram", "histogram_values",
    "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema", "parquet_file_metadata",
    "parquet_kv_metadata",
    "duckdb_columns", "duckdb_tables", "duckdb_views", "duckdb_schemas", "duckdb_databases",
    "duckdb_functions", "duckdb_types", "duckdb_keywords", "duckdb_constraints",
    "duckdb_dependencies", "duckdb_indexes", "duckdb_sequences", "duckdb_settings",
    "pragma_table_info", "pragma_show", "pragma_version", "pragma_platform", "pragma_collations",
    "pg_timezone_names", "icu_calendar_names",
})

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


def read_generation(store: ArtifactStore) -> str:
    """The store's generation token: replaced by every write; ``""`` before the first one."""
    try:
        return store.generation_file.read_text().strip()
    except FileNotFoundError:
        return ""


def _open_raw(path: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the catalog file ``path`` attached read-only as ``catalog``.

    Attaching (not ``duckdb.connect(path)``) gives every call its own database instance: the
    Python client caches instances by path, so a second connect to a catalog file replaced
    since would see the old file's views.
    """
    con = duckdb.connect(":memory:", config={
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
    })
    try:
        con.execute(f"ATTACH {_lit(str(path))} AS {ATTACH_AS} (READ_ONLY)")
        con.execute(f"USE {ATTACH_AS}")
    except BaseException:
        con.close()
        raise
    return con


def _recorded_generation(con: duckdb.DuckDBPyConnection) -> str | None:
    try:
        row = con.execute(f"SELECT generation FROM {ATTACH_AS}.{META_SCHEMA}.catalog_info").fetchone()
    except duckdb.Error:  # a catalog from before the token was recorded
        return None
    return row[0] if row else None


def is_stale(store: ArtifactStore) -> bool:
    """Whether the catalog is missing or was made from another generation of the store."""
    cat = catalog_path(store)
    if not cat.exists():
        return True
    current = read_generation(store)
    try:
        con = _open_raw(cat)
    except duckdb.Error:
        return True
    try:
        return _recorded_generation(con) != current
    finally:
        con.close()


def _write_catalog(store: ArtifactStore) -> Path:
    """A new catalog in a temp file next to the catalog; the caller renames or deletes it."""
    store.root.mkdir(parents=True, exist_ok=True)
    # the token is read before the artifacts are listed: a write that lands while the views are
    # made changes the token, so this catalog reads as stale afterwards (never as current)
    generation = read_generation(store)
    tmp = catalog_path(store).with_name(f".{CATALOG_FILE}.{owner_tag()}.{uuid.uuid4().hex}")
    try:
        con = duckdb.connect(str(tmp))
        try:
            for stmt in view_statements(store):
                con.execute(stmt)
            con.execute(f"CREATE SCHEMA {META_SCHEMA}")
            con.execute(
                f"CREATE VIEW {META_SCHEMA}.catalog_info AS SELECT {_lit(generation)} AS generation, "
                f"{_lit(str(store.root))} AS store_root"
            )
            con.execute("CHECKPOINT")
        finally:
            con.close()
    except BaseException:
        _remove_temp(tmp)
        raise
    return tmp


def _remove_temp(tmp: Path) -> None:
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)


def build_catalog(store: ArtifactStore) -> Path:
    """(Re)build the catalog file atomically and return its path."""
    target = catalog_path(store)
    tmp = _write_catalog(store)
    try:
        os.replace(tmp, target)
    finally:
        _remove_temp(tmp)
    return target


def _current_raw(store: ArtifactStore) -> duckdb.DuckDBPyConnection:
    """A connection to a catalog of the store's current generation (built when needed)."""
    target = catalog_path(store)
    current = read_generation(store)
    if target.exists():
        try:
            con = _open_raw(target)
        except duckdb.Error:  # unreadable (say, from another DuckDB version): rebuilt below
            con = None
        if con is not None:
            # the token of the very file opened: another process may have replaced it meanwhile
            if _recorded_generation(con) == current:
                return con
            con.close()
    tmp = _write_catalog(store)
    try:
        # open the file built here before publishing it: a slower process that publishes an
        # older build in between cannot change what this query sees
        con = _open_raw(tmp)
        os.replace(tmp, target)
    finally:
        _remove_temp(tmp)
    return con


def _confine(con: duckdb.DuckDBPyConnection, store: ArtifactStore) -> None:
    """Let ``con`` read the store's Parquet files and nothing else, for good."""
    paths = [row[0] for row in con.execute("SELECT DISTINCT path FROM artifacts").fetchall()]
    # spills go where a read-only connection to the file would put them (not the working dir)
    con.execute("SET temp_directory = ?", [str(catalog_path(store)) + ".tmp"])
    con.execute("SET allowed_paths = ?", [paths])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def connect(store: ArtifactStore) -> duckdb.DuckDBPyConnection:
    """A connection to an up-to-date catalog (attached read-only as ``catalog``) that can read
    only the store's Parquet files: no other file, no extension, no configuration change."""
    con = _current_raw(store)
    try:
        _confine(con, store)
    except BaseException:
        con.close()
        raise
    return con


def _refused(what: str) -> ReadOnlyError:
    return ReadOnlyError(
        f"medhall sql is read-only: {what} is refused and nothing was changed. "
        "Only one SELECT (or EXPLAIN of one) runs here; to save a result use --out FILE."
    )


def _walk(node: object):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


#: Query nodes that only read. DuckDB parses ``WITH t AS (COPY ... TO 'f') SELECT ...`` and
#: ``WITH t AS (INSERT/UPDATE/DELETE ... RETURNING *) SELECT ...`` as SELECT statements, with a
#: ``COPY_QUERY_NODE`` (``INSERT_``, ``UPDATE_``, ``DELETE_QUERY_NODE``) inside: those are refused.
_READING_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})


_parser = threading.local()


def _parser_connection() -> duckdb.DuckDBPyConnection:
    """This thread's in-memory DuckDB for ``json_serialize_sql`` (which parses, and runs nothing);
    kept, as opening one costs more than the check."""
    if getattr(_parser, "pid", None) != os.getpid():
        _parser.con = duckdb.connect(":memory:", config={"autoload_known_extensions": False,
                                                         "autoinstall_known_extensions": False})
        _parser.pid = os.getpid()
    return _parser.con


def _check_select(text: str) -> None:
    """Raise unless ``text`` is exactly one SELECT, with nothing but reading query nodes in it
    (at any depth: CTEs, subqueries, lambdas), that calls only allowed table functions."""
    try:
        tree = json.loads(_parser_connection().execute("SELECT json_serialize_sql(?)", [text]).fetchone()[0])
    except duckdb.Error as e:
        raise SQLError(str(e).strip()) from None
    if tree.get("error"):
        message = tree.get("error_message") or "not a SELECT"
        if "only select" in message.lower():
            raise _refused("anything but a SELECT")
        raise SQLError(message)
    if len(tree.get("statements", [])) != 1:
        raise ReadOnlyError("give one statement at a time")
    for node in _walk(tree["statements"]):
        kind = node.get("type")
        if isinstance(kind, str) and kind.endswith("_NODE") and kind not in _READING_NODES:
            raise _refused(f"a {kind.removesuffix('_NODE').removesuffix('_QUERY')} inside a SELECT")
        if "info_type" in node:  # a statement's payload (COPY_INFO, ...) where a query should be
            raise _refused(f"a {str(node['info_type']).removesuffix('_INFO')} inside a SELECT")
        if kind == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
            name = str(node["function"].get("function_name", "")).lower()
            if name not in ALLOWED_TABLE_FUNCTIONS:
                raise _refused(f"the table function {name}()")


def _explained(text: str) -> str:
    """The statement after EXPLAIN in ``text``; refuses EXPLAIN ANALYZE and option lists."""
    raw = text.encode()
    tokens = [pos for pos, kind in duckdb.tokenize(text) if kind != duckdb.token_type.comment]
    if len(tokens) < 2 or raw[tokens[0]:tokens[0] + 7].decode(errors="replace").upper() != "EXPLAIN":
        raise SQLError("could not read the EXPLAIN statement")
    inner = raw[tokens[1]:].decode()
    word = re.match(r"\w+|\S", inner)
    first = word.group(0).upper() if word else ""
    if first in ("ANALYZE", "ANALYSE"):
        raise _refused("EXPLAIN ANALYZE (it runs the statement)")
    if first == "(":
        raise _refused("EXPLAIN with options")
    return inner


def _checked(sql: str) -> tuple[str, bool]:
    """The SELECT in ``sql`` and whether it is to be EXPLAINed (see :func:`check_read_only`)."""
    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise SQLError(str(e).strip()) from None
    if not stmts:
        raise SQLError("no SQL statement given")
    if len(stmts) > 1:
        raise ReadOnlyError("give one statement at a time")
    stmt = stmts[0]
    kind = stmt.type.name
    if kind == "SELECT":
        _check_select(stmt.query)
        return stmt.query, False
    if kind == "EXPLAIN":
        inner = _explained(stmt.query)
        _check_select(inner)
        return inner, True
    if kind == "MULTI":  # PIVOT without IN (...) creates a type first
        raise _refused("a statement that runs several (for PIVOT, list the values: ON col IN (...))")
    raise _refused(f"a {kind} statement")


def check_read_only(sql: str) -> str:
    """Return the statement to run for ``sql`` if it only reads; raise otherwise.

    Exactly one SELECT (which in DuckDB covers WITH, FROM-first, VALUES, DESCRIBE, SHOW and
    SUMMARIZE) or EXPLAIN of one SELECT (without ANALYZE or options) is allowed, calling only the
    table functions in :data:`ALLOWED_TABLE_FUNCTIONS`. COPY, INSERT, DROP, ATTACH, SET, PRAGMA,
    CALL, EXPORT ... are refused before anything runs, so nothing can change. For EXPLAIN, the
    statement returned is ``EXPLAIN`` followed by the checked SELECT.
    """
    select, explain = _checked(sql)
    return "EXPLAIN " + select if explain else select


#: Words in a physical operator's name that mark one able to write or change state
#: (``BATCH_COPY_TO_FILE``, ``INSERT``, ``CREATE_TABLE_AS``, ``EXPLAIN_ANALYZE``, ``SET`` ...),
#: and whole names (``MERGE`` alone would match the reading ``PIECEWISE_MERGE_JOIN``).
_WRITING_OPERATOR_WORDS = frozenset({
    "COPY", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "ATTACH", "DETACH",
    "EXPORT", "PRAGMA", "VACUUM", "LOAD", "SET", "RESET", "VARIABLE", "TRANSACTION",
    "CHECKPOINT", "EXECUTE", "PREPARE", "ANALYZE", "SECRET", "EXTENSION", "EXTENSIONS",
})
_WRITING_OPERATORS = frozenset({"MERGE", "MERGE_INTO"})
_ALLOWED_SCANS = frozenset(name.upper() for name in ALLOWED_TABLE_FUNCTIONS)


def _check_plan(con: duckdb.DuckDBPyConnection, select: str) -> None:
    """Plan ``select`` (without running it) and refuse it if any operator could write: the last
    layer, for a statement that got past :func:`check_read_only` by a gap in it."""
    rows = con.execute("EXPLAIN (FORMAT json) " + select).fetchall()
    for _, plan in rows:
        for node in _walk(json.loads(plan)):
            if "children" not in node:  # not an operator (its extra_info, say)
                continue
            name = str(node.get("name", "")).upper()
            if name in _ALLOWED_SCANS:
                continue
            if name in _WRITING_OPERATORS or _WRITING_OPERATOR_WORDS.intersection(name.split("_")):
                raise _refused(f"a plan with a {name} operator")


def query(store: ArtifactStore, sql: str) -> pa.Table:
    """Run one read-only statement against the catalog and return the result as Arrow.

    Three layers: :func:`check_read_only` (one SELECT, or EXPLAIN of one, with allowed table
    functions only), a connection that can read only the store's Parquet files
    (:func:`connect`), and the physical plan checked for writing operators before it runs.
    """
    select, explain = _checked(sql)
    con = connect(store)
    try:
        _check_plan(con, select)
        return con.sql("EXPLAIN " + select if explain else select).to_arrow_table()
    except duckdb.PermissionException as e:
        raise ReadOnlyError(f"medhall sql reads only the store's tables: {str(e).strip()}") from None
    except duckdb.Error as e:
        raise SQLError(str(e).strip()) from None
    finally:
        con.close()
