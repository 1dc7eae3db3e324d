import pytest

from medhall import schema
from medhall.store import ArtifactStore, ReadOnlyError, SQLError, build_catalog, query


def _img(i, modality, dataset="d"):
    return {"image_id": i, "dataset": dataset, "source": "sample", "image_ref": f"{i}.png", "modality": modality}


@pytest.fixture
def filled(store: ArtifactStore) -> ArtifactStore:
    store.write("images", schema.from_rows("images", [_img("img_1", "CT"), _img("img_2", "MR")]), dataset="d")
    store.write("images", schema.from_rows("images", [_img("img_1", "CT"), _img("img_2", "MR"), _img("img_3", "CT")]), dataset="d")
    store.write("images", schema.from_rows("images", [_img("img_9", "fundus", "e")]), dataset="e")
    store.write(
        "instructions",
        schema.from_rows("instructions", [
            {"qa_id": "qa_1", "image_id": "img_1", "dataset": "d", "question": "q1", "source": "t"},
            {"qa_id": "qa_2", "image_id": "img_1", "dataset": "d", "question": "q2", "source": "t"},
        ]),
        dataset="d",
    )
    store.write(
        "qc_verdicts",
        schema.from_rows("qc_verdicts", [
            {"qa_id": "qa_1", "check": "rule:leakage", "verdict": "incorrect", "passed": False, "reason": "says caption"},
        ]),
        dataset="d",
    )
    return store


def test_views_latest_versions_and_per_version(filled):
    rows = query(filled, "select modality, count(*) n from images group by 1 order by 1").to_pylist()
    assert rows == [{"modality": "CT", "n": 2}, {"modality": "MR", "n": 1}, {"modality": "fundus", "n": 1}]
    assert query(filled, "select count(*) c from images__d__v1").column("c")[0].as_py() == 2
    assert query(filled, "select count(*) c from images__d").column("c")[0].as_py() == 3
    v = query(filled, "select _dataset, _version, count(*) c from images_versions group by all order by 1, 2").to_pylist()
    assert v == [{"_dataset": "d", "_version": 1, "c": 2}, {"_dataset": "d", "_version": 2, "c": 3}, {"_dataset": "e", "_version": 1, "c": 1}]
    arts = query(filled, "select \"table\", dataset, version from artifacts order by 1, 2, 3").to_pylist()
    assert {"table": "images", "dataset": "d", "version": 2} in arts


def test_filtered_instructions_view_keeps_rejects_in_the_table(filled):
    assert query(filled, "select count(*) c from instructions").column("c")[0].as_py() == 2
    assert query(filled, "select qa_id from filtered_instructions").column("qa_id").to_pylist() == ["qa_2"]


def test_tables_without_artifacts_are_empty_views_with_columns(store):
    t = query(store, "select * from judgments")
    assert t.num_rows == 0 and t.column_names == schema.JUDGMENTS.names
    assert query(store, "select count(*) c from artifacts").column("c")[0].as_py() == 0


def test_catalog_refreshes_after_a_write(filled):
    assert query(filled, "select count(*) c from images__e").column("c")[0].as_py() == 1
    filled.write("images", schema.from_rows("images", [_img("img_9", "fundus", "e"), _img("img_8", "CT", "e")]), dataset="e")
    assert query(filled, "select count(*) c from images__e").column("c")[0].as_py() == 2


@pytest.mark.parametrize(
    "sql",
    [
        "DROP VIEW images",
        "INSERT INTO images SELECT * FROM images",
        "COPY images TO '{out}'",
        "COPY (SELECT 1) TO '{out}'",
        "CREATE TABLE t AS SELECT 1",
        "ATTACH '{out}' AS x",
        "EXPORT DATABASE '{dir}'",
        "SET threads = 1",
        "SELECT 1; DROP VIEW images",
    ],
)
def test_writes_are_refused_and_change_nothing(filled, tmp_path, sql):
    before = query(filled, "select count(*) c from images").column("c")[0].as_py()
    snapshot = sorted(p.relative_to(filled.root) for p in filled.root.rglob("*") if "catalog" not in p.name)
    with pytest.raises(ReadOnlyError):
        query(filled, sql.format(out=tmp_path / "x.csv", dir=tmp_path / "exp"))
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "exp").exists()
    assert query(filled, "select count(*) c from images").column("c")[0].as_py() == before
    assert sorted(p.relative_to(filled.root) for p in filled.root.rglob("*") if "catalog" not in p.name) == snapshot


def test_the_catalog_file_itself_is_read_only(filled):
    import duckdb

    path = build_catalog(filled)
    con = duckdb.connect(str(path), read_only=True)
    with pytest.raises(duckdb.Error):
        con.execute("CREATE VIEW x AS SELECT 1")
    con.close()


def test_bad_sql_gets_duckdbs_message(filled):
    with pytest.raises(SQLError, match="nope"):
        query(filled, "select nope from images")
    with pytest.raises(SQLError):
        query(filled, "selec 1")
