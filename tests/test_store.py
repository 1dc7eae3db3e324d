import json
import os
import threading

import pyarrow as pa
import pytest

from medhall import schema
from medhall.store import ArtifactStore, StoreError, redact


def _images(*ids_, modality="CT"):
    return schema.from_rows(
        "images",
        [{"image_id": i, "dataset": "d", "source": "sample", "image_ref": f"{i}.png", "modality": modality} for i in ids_],
    )


def test_write_read_and_manifest(store: ArtifactStore):
    art = store.write("images", _images("img_a", "img_b"), dataset="d", config={"n": 2}, inputs=["f2", "f1"], run_id="run_x")
    assert art.version == 1 and art.rows == 2
    m = json.loads((art.path / "manifest.json").read_text())
    assert m["rows"] == 2 and m["schema_version"] == schema.SCHEMA_VERSION
    assert m["inputs"] == ["f1", "f2"] and m["config"] == {"n": 2} and m["run_id"] == "run_x"
    assert len(m["content_fingerprint"]) == 64
    assert store.read("images", "d").column("image_id").to_pylist() == ["img_a", "img_b"]


def test_versions_are_never_overwritten_and_identical_content_is_not_copied(store: ArtifactStore):
    a1 = store.write("images", _images("img_a"), dataset="d")
    a1_bytes = a1.data_path.read_bytes()
    again = store.write("images", _images("img_a"), dataset="d")
    assert again.version == 1 and again.path == a1.path
    a2 = store.write("images", _images("img_a", "img_b"), dataset="d")
    assert a2.version == 2
    assert a1.data_path.read_bytes() == a1_bytes
    assert [a.version for a in store.versions("images", "d")] == [1, 2]
    assert store.read("images", "d", version=1).num_rows == 1
    with pytest.raises(StoreError, match="no version 7"):
        store.get("images", "d", version=7)


def test_streamed_batches_are_one_artifact(store: ArtifactStore):
    parts = (_images(f"img_{i}") for i in range(5))
    art = store.write("images", parts, dataset="d", row_group_size=2)
    assert art.rows == 5 and store.read("images", "d").num_rows == 5


def test_a_failed_write_leaves_nothing_visible(store: ArtifactStore):
    def bad_batches():
        yield _images("img_a")
        raise RuntimeError("source broke mid-way")

    with pytest.raises(RuntimeError):
        store.write("images", bad_batches(), dataset="d")
    tdir = store.table_dir("images", "d")
    assert store.versions("images", "d") == []
    assert [p.name for p in tdir.iterdir()] == []  # the temp dir was removed too


def test_a_temp_dir_from_a_crash_is_invisible(store: ArtifactStore):
    store.write("images", _images("img_a"), dataset="d")
    crashed = store.table_dir("images", "d") / ".tmp-deadbeef"
    crashed.mkdir()
    (crashed / "data.parquet").write_bytes(b"PAR1 half written")
    assert [a.version for a in store.versions("images", "d")] == [1]
    assert [a.name for a in store.artifacts()] == ["d/images/v000001"]


def test_concurrent_writers_get_distinct_versions(store: ArtifactStore):
    results = []

    def write(i):
        results.append(store.write("images", _images(f"img_{i}"), dataset="d").version)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    assert sorted(store.read("images", "d", v).column("image_id")[0].as_py() for v in range(1, 7)) == sorted(
        f"img_{i}" for i in range(6)
    )


def test_schema_violations_and_bad_names_are_refused(store: ArtifactStore):
    with pytest.raises(ValueError, match="unknown column"):
        store.write("images", pa.table({"image_id": ["x"], "bogus": [1]}), dataset="d")
    with pytest.raises(StoreError, match="invalid dataset name"):
        store.write("images", _images("img_a"), dataset="../escape")
    with pytest.raises(KeyError, match="unknown table"):
        store.write("nope", _images("img_a"), dataset="d")


def test_secrets_never_reach_a_manifest(store: ArtifactStore, monkeypatch):
    from pydantic import SecretStr

    cfg = {"llm": {"api_key": "sk-LIVE-123", "model": "gpt-4o", "token": "t0k"}, "key": SecretStr("sk-2")}
    art = store.write("images", _images("img_a"), dataset="d", config=cfg)
    text = (art.path / "manifest.json").read_text()
    assert "sk-LIVE-123" not in text and "t0k" not in text and "sk-2" not in text
    assert redact(cfg)["llm"]["model"] == "gpt-4o"


def test_default_root_comes_from_the_environment(home, monkeypatch):
    assert ArtifactStore().root == home.resolve()
    assert os.environ["MEDHALL_HOME"] == str(home)
