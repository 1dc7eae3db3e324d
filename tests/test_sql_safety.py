"""`medhall sql` cannot write anything, reads only the store's tables, and always sees the
current store: the bypasses reported (EXPLAIN ANALYZE COPY onto a stored data.parquet, --out onto
the LLM cache, a catalog built during a write looking fresh) and their relatives."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from medhall import schema
from medhall.cli import app
from medhall.store import ArtifactStore, ReadOnlyError, SQLError, catalog, query
from medhall.store.catalog import check_read_only, connect, is_stale

runner = CliRunner()


def _snapshot(root: Path, content: bool = True) -> dict[str, object]:
    """Every file under ``root`` but the catalog, with its content hash (or its size, inode and
    modification time: any write in place or by rename changes them)."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and "catalog.duckdb" not in p.name:
            st = p.stat()
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest() if content
                                             else (st.st_size, st.st_ino, st.st_mtime_ns))
    return out


@pytest.fixture(scope="module")
def shared(built_template: Path, tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    """One copy of the built sample dataset for the read-only checks below (each checks that
    nothing under it changed)."""
    root = tmp_path_factory.mktemp("sqlsafety") / "home"
    shutil.copytree(built_template / "store", root / "store")
    store = ArtifactStore(root)
    (root / "llm").mkdir()
    (root / "llm" / "cache.sqlite").write_bytes(b"SQLite format 3\x00 not really")
    (root / "reports").mkdir()
    pq.write_table(pa.table({"secret": ["s3cr3t"]}), root / "reports" / "r.parquet")  # not a table
    return store


def _victim(store: ArtifactStore) -> Path:
    """A stored artifact's data file (the images table)."""
    return next(a for a in store.artifacts() if a.table == "images").data_path


# ------------------------------------------------------------------------- statements refused

BYPASSES = [
    # the report: EXPLAIN ANALYZE runs the statement it explains
    "EXPLAIN ANALYZE COPY (SELECT * FROM images) TO '{victim}' (FORMAT parquet)",
    "EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO '{out}'",
    "explain analyze select * from images",
    "EXPLAIN ANALYSE SELECT 1",
    "eXpLaIn AnAlYzE SeLeCt 1",
    "EXPLAIN /* hidden */ ANALYZE SELECT 1",
    "EXPLAIN -- hidden\n ANALYZE SELECT 1",
    "/* lead */ EXPLAIN ANALYZE SELECT 1",
    "EXPLAIN (ANALYZE) SELECT 1",
    "EXPLAIN (FORMAT json, ANALYZE) SELECT 1",
    "EXPLAIN COPY (SELECT 1) TO '{out}'",
    "EXPLAIN SELECT * FROM query('SELECT 1')",
    # COPY anywhere
    "COPY (SELECT 1) TO '{out}'",
    "COPY images TO '{victim}' (FORMAT parquet, USE_TMP_FILE false)",
    "copy images__sample__v1 to '{out}'",
    # DuckDB parses these as SELECT statements: a COPY, INSERT, UPDATE or DELETE in a CTE
    "WITH t AS (COPY (SELECT 1) TO '{out}') SELECT 1",
    "WITH t AS (COPY (SELECT * FROM images LIMIT 1) TO '{victim}' (FORMAT parquet, USE_TMP_FILE false)) "
    "SELECT 1",
    "with t as (copy images to '{victim}' (format parquet)) from images",
    "WITH u AS (SELECT 1), t AS (COPY (SELECT 1) TO '{out}') SELECT * FROM u",
    "WITH t AS (WITH u AS (COPY (SELECT 1) TO '{out}') SELECT 1) SELECT * FROM t",
    "SELECT * FROM (WITH t AS (COPY (SELECT 1) TO '{out}') SELECT 1)",
    "SELECT 1 WHERE 1 IN (WITH t AS (COPY (SELECT 1) TO '{out}') SELECT 1)",
    "EXPLAIN WITH t AS (COPY (SELECT 1) TO '{out}') SELECT 1",
    "DESCRIBE WITH t AS (COPY (SELECT 1) TO '{out}') SELECT 1",
    "SUMMARIZE WITH t AS (COPY (SELECT 1) TO '{out}') SELECT 1",
    "WITH t AS (INSERT INTO images SELECT * FROM images RETURNING *) SELECT * FROM t",
    "WITH t AS (UPDATE images SET modality = 'x' RETURNING *) SELECT * FROM t",
    "WITH t AS (DELETE FROM images RETURNING *) SELECT * FROM t",
    "SELECT * FROM (COPY (SELECT 1) TO '{out}')",
    "SELECT (COPY (SELECT 1) TO '{out}')",
    "COPY images FROM '{victim}'",
    # several statements, hidden by comments and quotes
    "SELECT 1; COPY (SELECT 1) TO '{out}'",
    "SELECT 1 /* ; */; COPY (SELECT 1) TO '{out}'",
    "SELECT 1 -- ;\n; COPY (SELECT 1) TO '{out}'",
    "/* SELECT 1; */ COPY (SELECT 1) TO '{out}'",
    "-- SELECT 1\nCOPY (SELECT 1) TO '{out}'",
    "SELECT ';' AS \"COPY;\"; COPY (SELECT 1) TO '{out}'",
    "SELECT $$;$$; COPY (SELECT 1) TO '{out}'",
    "SELECT $tag$ ; $tag$ AS x; DROP VIEW images",
    "SELECT 1; DROP VIEW images",
    "SELECT 1;;DROP VIEW images",
    # statements of other kinds
    "PRAGMA enable_profiling",
    "PRAGMA profiling_output = '{out}'",
    "PRAGMA database_list",
    "CALL enable_logging()",
    "CALL checkpoint()",
    "CALL pragma_version()",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "RESET lock_configuration",
    "SET log_query_path = '{out}'",
    "SET profiling_output = '{out}'",
    "SET GLOBAL threads = 1",
    "SET VARIABLE x = 1",
    "ATTACH '{out}' AS x",
    "ATTACH ':memory:' AS m",
    "DETACH catalog",
    "USE memory",
    "INSTALL httpfs",
    "LOAD httpfs",
    "FORCE INSTALL json",
    "EXPORT DATABASE '{dir}'",
    "IMPORT DATABASE '{dir}'",
    "CREATE TABLE t AS SELECT 1",
    "CREATE TEMP TABLE t AS SELECT 1",
    "CREATE VIEW images2 AS SELECT 1",
    "CREATE OR REPLACE VIEW images AS SELECT 1",
    "CREATE MACRO m() AS 1",
    "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')",
    "INSERT INTO images SELECT * FROM images",
    "UPDATE images SET modality = 'x'",
    "DELETE FROM images",
    "TRUNCATE images",
    "DROP VIEW images",
    "ALTER VIEW images RENAME TO x",
    "CHECKPOINT",
    "FORCE CHECKPOINT",
    "VACUUM",
    "ANALYZE",
    "BEGIN TRANSACTION",
    "PREPARE p AS SELECT 1",
    "PIVOT images ON modality USING count(*)",
    # table functions that run SQL text or change state, wherever they sit
    "SELECT * FROM query('COPY (SELECT 1) TO ''{out}''')",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM QUERY('SELECT 1')",
    "SELECT * FROM \"query\"('SELECT 1')",
    "SELECT * FROM system.main.query('SELECT 1')",
    "FROM query_table('images')",
    "WITH t AS (SELECT * FROM query('SELECT 1')) SELECT * FROM t",
    "SELECT (SELECT count(*) FROM query_table('images'))",
    "SELECT * FROM images WHERE image_id IN (SELECT * FROM query('SELECT 1'))",
    "SELECT * FROM images, LATERAL (SELECT * FROM query('SELECT 1'))",
    "SELECT list_transform([1], x -> (SELECT 1 FROM query('SELECT 1')))",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
    "SELECT * FROM checkpoint()",
    "SELECT * FROM force_checkpoint()",
    "FROM enable_logging()",
    "FROM enable_profiling()",
    "FROM truncate_duckdb_logs()",
    # files outside the store's tables
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_json('/etc/passwd')",
    "SELECT * FROM read_duckdb('/etc/passwd')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM read_parquet('{outside}')",
    "SELECT * FROM '{outside}'",
    "SELECT * FROM parquet_metadata('{outside}')",
    "SELECT * FROM read_text('{home}/llm/cache.sqlite')",
    "SELECT * FROM read_parquet('{home}/reports/*.parquet')",
    "SELECT * FROM duckdb_secrets()",
    "SELECT getenv('HOME')",
]


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside the store, holding a Parquet file no query may read."""
    d = tmp_path_factory.mktemp("elsewhere")
    pq.write_table(pa.table({"secret": ["s3cr3t"]}), d / "outside.parquet")
    return d


@pytest.mark.parametrize("sql", BYPASSES)
def test_every_bypass_is_refused_and_changes_nothing(shared, elsewhere, sql):
    before = _snapshot(shared.root, content=False), _snapshot(elsewhere, content=False)
    text = sql.format(victim=_victim(shared), out=elsewhere / "x.csv", dir=elsewhere / "exp",
                      outside=elsewhere / "outside.parquet", home=shared.root)
    with pytest.raises((ReadOnlyError, SQLError)) as e:
        query(shared, text)
    assert "s3cr3t" not in str(e.value)
    # no file written, replaced or touched, in the store or anywhere else
    assert (_snapshot(shared.root, content=False), _snapshot(elsewhere, content=False)) == before
    assert sorted(p.name for p in elsewhere.iterdir()) == ["outside.parquet"]


#: Bypasses DuckDB cannot even parse (refused as bad SQL).
UNPARSEABLE = {"SELECT * FROM (COPY (SELECT 1) TO '{out}')", "SELECT (COPY (SELECT 1) TO '{out}')"}
#: Plain reads of a file, or of a function this DuckDB lacks: the statement is one allowed SELECT,
#: and the connection refuses the file (it may read only the store's tables).
CONNECTION_REFUSES = {
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM read_parquet('{outside}')",
    "SELECT * FROM '{outside}'",
    "SELECT * FROM parquet_metadata('{outside}')",
    "SELECT * FROM read_parquet('{home}/reports/*.parquet')",
    "SELECT getenv('HOME')",
}


@pytest.mark.parametrize("sql", BYPASSES)
def test_the_statement_check_refuses_them_before_anything_runs(sql):
    text = sql.format(victim="/x/data.parquet", out="/x/x.csv", dir="/x/exp", outside="/x/o.parquet",
                      home="/x")
    if sql in CONNECTION_REFUSES:
        assert check_read_only(text) == text
    elif sql in UNPARSEABLE:
        with pytest.raises(SQLError):
            check_read_only(text)
    else:
        with pytest.raises(ReadOnlyError):
            check_read_only(text)


def test_the_report_explain_analyze_copy_onto_a_stored_artifact_via_the_cli(built, tmp_path):
    victim = _victim(built)
    before = victim.read_bytes()
    sql = f"EXPLAIN ANALYZE COPY (SELECT * FROM images LIMIT 1) TO '{victim}' (FORMAT parquet)"
    r = runner.invoke(app, ["--home", str(built.root), "sql", sql], catch_exceptions=False)
    assert r.exit_code == 2 and "read-only" in r.stderr and "EXPLAIN ANALYZE" in r.stderr
    assert victim.read_bytes() == before
    anywhere = tmp_path / "anywhere.csv"
    r = runner.invoke(app, ["--home", str(built.root), "sql", f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{anywhere}'"],
                      catch_exceptions=False)
    assert r.exit_code == 2 and not anywhere.exists()


# ------------------------------------------------------------------------- what still works

def test_reading_queries_still_work(shared):
    victim = _victim(shared)
    n = pq.read_table(victim).num_rows
    one = lambda sql: query(shared, sql)  # noqa: E731
    assert one("select * from images").num_rows == n
    assert one("SELECT count(*) AS c FROM images;").column("c")[0].as_py() == n
    assert one("select count(*) c from images -- trailing comment").column("c")[0].as_py() == n
    assert one("/* lead */ select count(*) c from images /* ; COPY x */").column("c")[0].as_py() == n
    assert one("from images select count(*) c").column("c")[0].as_py() == n
    assert one("with t as (select modality from images) select count(*) c from t").column("c")[0].as_py() == n
    assert one("select _dataset, max(_version) v from images_versions group by 1").num_rows == 1
    assert one("select \"table\", path from artifacts").num_rows == len(list(shared.artifacts()))
    assert one("select count(*) c from filtered_instructions").column("c")[0].as_py() > 0
    assert one("select count(*) c from instructions__sample_instruct").column("c")[0].as_py() > 0
    assert one("select modality, count(*) from images group by 1").num_rows >= 6  # the demo's examples
    assert one("select kind, category, count(*) from instructions group by all order by all").num_rows > 0
    assert one("select * from filtered_instructions limit 5").num_rows == 5
    assert "modality" in one("describe images").column("column_name").to_pylist()
    assert "modality" in one("DESCRIBE SELECT * FROM images").column("column_name").to_pylist()
    assert "modality" in one("summarize images").column("column_name").to_pylist()
    assert "images" in one("show tables").column("name").to_pylist()
    assert "images" in one("show all tables").column("name").to_pylist()
    assert one("explain select * from images where modality = 'CT'").num_rows >= 1
    assert one("EXPLAIN /* why */ SELECT 1").num_rows >= 1
    assert one("values (1), (2)").num_rows == 2
    assert one("select * from range(3)").num_rows == 3
    assert one("select unnest([1, 2, 3]) x").num_rows == 3
    assert one("select json_extract_string('{\"a\": 1}', '$.a') a").column("a")[0].as_py() == "1"
    assert one("select ';' as \"COPY;\", $$ANALYZE; DROP$$ as s").column("s")[0].as_py() == "ANALYZE; DROP"
    assert one("pivot images on modality in ('CT', 'MR') using count(*)").num_rows >= 1
    assert one(f"select count(*) c from read_parquet('{victim}')").column("c")[0].as_py() == n
    assert one("select count(*) c from duckdb_tables() ").num_rows == 1
    assert one("select * from images i join images_versions v using (image_id) limit 3").num_rows == 3
    # a range join plans as PIECEWISE_MERGE_JOIN (or IE_JOIN): no writing operator
    assert one("select count(*) c from images a join images b on a.width < b.width and a.height > b.height"
               ).num_rows == 1
    assert one("select count(*) c from range(10) a(x) join range(10) b(y) on a.x < b.y").column("c")[0].as_py() == 45
    assert one("select * from duckdb_settings() where name = 'lock_configuration'").num_rows == 1


def test_bad_sql_and_empty_sql_get_a_message(shared):
    with pytest.raises(SQLError, match="nope"):
        query(shared, "select nope from images")
    with pytest.raises(SQLError):
        query(shared, "selec 1")
    with pytest.raises(SQLError, match="no SQL statement"):
        query(shared, "  -- nothing\n")


# ------------------------------------------------------------------------- the inner layers alone

def test_the_connection_alone_cannot_write_or_read_elsewhere(shared, tmp_path):
    """Without the statement check (a gap in it), the connection still refuses to write a file,
    read one outside the store, change its configuration or load an extension."""
    con = connect(shared)
    try:
        for sql in (f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'",
                    f"COPY images TO '{_victim(shared)}' (FORMAT parquet)",
                    f"EXPORT DATABASE '{tmp_path / 'exp'}'",
                    "SELECT * FROM read_text('/etc/passwd')",
                    f"SELECT * FROM read_text('{shared.root / 'llm' / 'cache.sqlite'}')",
                    "SET enable_external_access = true", "SET lock_configuration = false",
                    "RESET enable_external_access", f"SET log_query_path = '{tmp_path / 'q.log'}'",
                    f"ATTACH '{tmp_path / 'a.duckdb'}' AS a", "LOAD httpfs", "INSTALL httpfs",
                    "CALL enable_logging()", "CREATE VIEW catalog.main.x AS SELECT 1"):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
        assert con.execute("SELECT current_setting('enable_external_access')").fetchone()[0] is False
        assert con.execute("SELECT count(*) FROM images").fetchone()[0] > 0
    finally:
        con.close()
    assert list(tmp_path.iterdir()) == []


def test_the_plan_check_alone_refuses_a_write_the_connection_would_allow(shared, monkeypatch):
    """A parser gap that let a COPY onto a stored file through (the one path the connection may
    touch, written without a temp file) is still refused: its plan writes."""
    victim = _victim(shared)
    before = victim.read_bytes()
    copy = f"COPY images TO '{victim}' (FORMAT parquet, USE_TMP_FILE false)"
    monkeypatch.setattr(catalog, "_checked", lambda sql: (copy, False))
    with pytest.raises(ReadOnlyError, match="COPY"):
        query(shared, "select 1")
    monkeypatch.setattr(catalog, "_checked", lambda sql: (copy, True))  # as if EXPLAIN'd
    with pytest.raises(ReadOnlyError, match="COPY"):
        query(shared, "select 1")
    in_cte = f"WITH t AS ({copy}) SELECT 1"  # a SELECT to DuckDB
    monkeypatch.setattr(catalog, "_checked", lambda sql: (in_cte, False))
    with pytest.raises(ReadOnlyError, match="COPY"):
        query(shared, "select 1")
    assert victim.read_bytes() == before


# ------------------------------------------------------------------------- --out

@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An empty folder for --out files (tmp_path itself holds MEDHALL_HOME)."""
    d = tmp_path / "out"
    d.mkdir()
    return d


def _sql(home: Path, *args: str):
    return runner.invoke(app, ["--home", str(home), "sql", *args], catch_exceptions=False)


def _joined(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at the console width


def test_out_refuses_every_path_inside_medhall_home(built, tmp_path, monkeypatch):
    home = built.root
    cache = home / "llm" / "cache.sqlite"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"precious")
    before = _snapshot(home)
    link = tmp_path / "link"
    link.symlink_to(home)
    file_link = tmp_path / "cache-link.csv"
    file_link.symlink_to(cache)
    for out in (cache, home / "new.csv", home / "store" / "sample" / "x.csv", home / "catalog.duckdb",
                home / "reports" / "deep" / "x.parquet", link / "llm" / "cache.sqlite", link / "x.csv",
                file_link, Path(str(home) + "/llm/../x.csv")):
        r = _sql(home, "select 1 x", "--format", "csv", "--out", str(out), "--force")
        assert r.exit_code == 2 and "inside MEDHALL_HOME" in _joined(r.stderr), out
    monkeypatch.chdir(home / "llm")
    r = _sql(home, "select 1 x", "--out", "cache.csv")
    assert r.exit_code == 2 and "inside MEDHALL_HOME" in _joined(r.stderr)
    assert not (home / "llm" / "cache.csv").exists()
    monkeypatch.chdir(tmp_path)
    r = _sql(home, "select 1 x", "--out", "../" + tmp_path.name + "/fine.csv")
    assert r.exit_code == 0 and (tmp_path / "fine.csv").read_text().splitlines() == ['"x"', "1"]
    assert cache.read_bytes() == b"precious" and _snapshot(home) == before


def test_out_home_behind_a_symlink_is_still_home(built, tmp_path):
    """MEDHALL_HOME given through a symlink: its real folder is refused all the same."""
    alias = tmp_path / "alias"
    alias.symlink_to(built.root)
    r = _sql(alias, "select 1 x", "--out", str(built.root / "x.csv"))
    assert r.exit_code == 2 and "inside MEDHALL_HOME" in _joined(r.stderr)
    r = _sql(built.root, "select 1 x", "--out", str(alias / "x.csv"))
    assert r.exit_code == 2 and not (built.root / "x.csv").exists()


def test_out_never_replaces_a_file_without_force(built, out_dir):
    out = out_dir / "mine.csv"
    out.write_text("keep me\n")
    r = _sql(built.root, "select modality from images", "--out", str(out))
    assert r.exit_code == 2 and "--force" in r.stderr and out.read_text() == "keep me\n"
    r = _sql(built.root, "select modality from images", "--out", str(out), "--force")
    assert r.exit_code == 0 and out.read_text().startswith('"modality"')
    assert [p.name for p in out_dir.iterdir()] == ["mine.csv"]  # no temp file left


def test_out_a_directory_is_a_one_line_error(built, out_dir):
    r = _sql(built.root, "select 1 x", "--out", str(out_dir))
    assert r.exit_code == 2 and "is a directory" in _joined(r.stderr) and "Traceback" not in r.output
    assert r.stderr.count("error:") == 1
    r = _sql(built.root, "select 1 x", "--out", str(out_dir), "--force")
    assert r.exit_code == 2 and out_dir.is_dir() and list(out_dir.iterdir()) == []


def test_out_format_follows_the_extension(built, out_dir):
    home = built.root
    n = pq.read_table(_victim(built)).num_rows
    for name in ("m.csv", "m.json", "m.jsonl", "m.ndjson", "m.parquet", "M.CSV"):
        r = _sql(home, "select image_id, modality from images", "--out", str(out_dir / name))
        assert r.exit_code == 0, (name, r.stderr)
    assert (out_dir / "m.csv").read_text().splitlines()[0] == '"image_id","modality"'
    assert (out_dir / "M.CSV").read_text() == (out_dir / "m.csv").read_text()
    rows = [json.loads(line) for line in (out_dir / "m.json").read_text().splitlines()]
    assert len(rows) == n and set(rows[0]) == {"image_id", "modality"}
    assert (out_dir / "m.jsonl").read_text() == (out_dir / "m.json").read_text()
    assert pq.read_table(out_dir / "m.parquet").num_rows == n
    r = _sql(home, "select 1 x", "--out", str(out_dir / "m.txt"))
    assert r.exit_code == 2 and "--format" in r.stderr and not (out_dir / "m.txt").exists()
    r = _sql(home, "select 1 x", "--out", str(out_dir / "noext"))
    assert r.exit_code == 2 and not (out_dir / "noext").exists()
    r = _sql(home, "select 1 x", "--out", str(out_dir / "m.txt"), "--format", "csv")
    assert r.exit_code == 0 and (out_dir / "m.txt").read_text().splitlines() == ['"x"', "1"]
    r = _sql(home, "select 1 x", "--out", str(out_dir / "t.parquet"), "--format", "table")
    assert r.exit_code == 0 and pq.read_table(out_dir / "t.parquet").num_rows == 1


def test_parquet_is_never_written_to_the_terminal(built):
    r = _sql(built.root, "select modality from images", "--format", "parquet")
    assert r.exit_code == 2 and "--out" in r.stderr and r.stdout == ""
    r = _sql(built.root, "select 1 x", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"x": 1}
    r = _sql(built.root, "select 1 x", "--format", "csv")
    assert r.exit_code == 0 and r.stdout.splitlines() == ['"x"', "1"]
    r = _sql(built.root, "select 1 as x")
    assert r.exit_code == 0 and "x" in r.stdout


def test_a_failed_write_leaves_no_file(built, out_dir, monkeypatch):
    from medhall.report import export

    def half_then_fail(table, sink, fmt):
        sink.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write", half_then_fail)
    for force in ((), ("--force",)):
        r = _sql(built.root, "select 1 x", "--out", str(out_dir / "r.csv"), *force)
        assert r.exit_code == 2 and "No space left" in _joined(r.stderr) and "Traceback" not in r.output
        assert list(out_dir.iterdir()) == []
    (out_dir / "r.csv").write_text("old\n")
    r = _sql(built.root, "select 1 x", "--out", str(out_dir / "r.csv"), "--force")
    assert r.exit_code == 2 and (out_dir / "r.csv").read_text() == "old\n"
    assert [p.name for p in out_dir.iterdir()] == ["r.csv"]


def test_a_file_that_appears_during_the_query_is_not_replaced(built, out_dir, monkeypatch):
    from medhall import store as store_pkg

    out = out_dir / "late.csv"
    real = store_pkg.query

    def query_then_someone_writes(*args):
        result = real(*args)
        out.write_text("theirs\n")
        return result

    monkeypatch.setattr(store_pkg, "query", query_then_someone_writes)
    r = _sql(built.root, "select 1 x", "--out", str(out))
    assert r.exit_code == 2 and "--force" in r.stderr and out.read_text() == "theirs\n"


# ------------------------------------------------------------------------- catalog currency

def _img(i: str, dataset: str = "d") -> dict:
    return {"image_id": i, "dataset": dataset, "source": "sample", "image_ref": f"{i}.png", "modality": "CT"}


def _write_images(store: ArtifactStore, n: int, dataset: str = "d"):
    return store.write("images", schema.from_rows("images", [_img(f"img_{i}", dataset) for i in range(n)]),
                       dataset=dataset)


def _count(store: ArtifactStore, dataset: str = "d") -> int:
    return query(store, f"select count(*) c from images__{dataset}").column("c")[0].as_py()


def test_a_write_during_a_catalog_build_is_seen_by_the_next_query(store, monkeypatch):
    _write_images(store, 1)
    assert _count(store) == 1
    real = catalog.view_statements
    wrote = []

    def views_then_a_write_lands(s):
        stmts = real(s)  # the artifacts were listed: the write below is not in these views
        if not wrote:
            wrote.append(_write_images(store, 2))
        return stmts

    monkeypatch.setattr(catalog, "view_statements", views_then_a_write_lands)
    _write_images(store, 3)  # makes the catalog stale; the rebuild races with the 4th write
    assert _count(store) == 3  # the query that started before the 4th write finished
    assert wrote and is_stale(store)  # the catalog was written after the write, yet is stale
    assert _count(store) == 2  # the next query sees it
    assert not is_stale(store)


def test_an_older_build_published_late_is_not_trusted(store):
    _write_images(store, 1)
    late = catalog._write_catalog(store)  # a slow process starts building...
    _write_images(store, 2)
    catalog.build_catalog(store)  # ...another builds after the write...
    os.replace(late, catalog.catalog_path(store))  # ...and the slow one publishes last
    assert is_stale(store)
    assert _count(store) == 2


def test_an_open_connection_does_not_pin_an_old_catalog(store, monkeypatch):
    """DuckDB's Python client reuses an open database instance for the same path: while one
    connection holds the old catalog, later queries still see the rebuilt one (built once)."""
    _write_images(store, 1)
    catalog.build_catalog(store)
    held = connect(store)  # holds catalog.duckdb itself open
    builds = []
    real = catalog._write_catalog
    monkeypatch.setattr(catalog, "_write_catalog", lambda s: builds.append(1) or real(s))
    try:
        _write_images(store, 2)
        assert _count(store) == 2 and len(builds) == 1
        assert _count(store) == 2 and len(builds) == 1  # the new file, not the held instance
        assert held.execute("select count(*) from images__d").fetchone()[0] == 1
    finally:
        held.close()


def test_the_catalog_records_the_token_and_temp_names_are_recognisable(store, monkeypatch):
    from medhall.tempfiles import is_temp_name

    _write_images(store, 1)
    token = store.generation_file.read_text()
    _write_images(store, 1)  # same content: no new version, no new token
    assert store.generation_file.read_text() == token
    _write_images(store, 2)
    assert store.generation_file.read_text() != token
    seen = []
    real = catalog._open_raw

    def spy(path):
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(catalog, "_open_raw", spy)
    assert _count(store) == 2
    assert any(is_temp_name(name) and name.startswith(f".catalog.duckdb.{os.getpid()}@") for name in seen)
    assert sorted(p.name for p in store.root.iterdir()) == [".generation", "catalog.duckdb", "store"]


def test_concurrent_writers_and_queries_never_see_an_old_version(store):
    """Each query sees every write that finished before it started (2 writer threads, 3 readers)."""
    datasets = ("w0", "w1")
    writes = 6
    done = {ds: 0 for ds in datasets}
    errors: list[BaseException] = []
    finished = threading.Event()

    def writer(ds: str) -> None:
        try:
            for i in range(writes):
                _write_images(store, i + 1, ds)
                done[ds] = i + 1
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader() -> None:
        try:
            while not finished.is_set():
                floor = dict(done)
                rows = query(store, "select _dataset d, max(_version) v from images_versions group by 1").to_pylist()
                seen = {r["d"]: r["v"] for r in rows}
                for ds, n in floor.items():
                    assert seen.get(ds, 0) >= n, (ds, n, seen)
        except BaseException as e:
            errors.append(e)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(ds,)) for ds in datasets]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(60)
    finished.set()
    for t in readers:
        t.join(60)
    assert not errors, errors[0]
    assert {ds: _count(store, ds) for ds in datasets} == {ds: writes for ds in datasets}


def test_a_write_from_another_process_is_seen(store):
    import subprocess
    import sys

    _write_images(store, 1)
    assert _count(store) == 1
    code = ("import sys; from medhall import schema; from medhall.store import ArtifactStore;"
            "s = ArtifactStore(sys.argv[1]);"
            "s.write('images', schema.from_rows('images', [{'image_id': 'a', 'dataset': 'd', 'source': 's',"
            "'image_ref': 'a', 'modality': 'CT'}, {'image_id': 'b', 'dataset': 'd', 'source': 's',"
            "'image_ref': 'b', 'modality': 'CT'}]), dataset='d')")
    subprocess.run([sys.executable, "-c", code, str(store.root)], check=True, timeout=60)
    assert _count(store) == 2
