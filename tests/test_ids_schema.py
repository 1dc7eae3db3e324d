import pyarrow as pa
import pytest

from medhall import ids, schema


def test_ids_are_stable_content_hashes():
    a = ids.qa_id("img_1", "Is there a mass?", "No.")
    assert a == ids.qa_id("img_1", "  Is there a mass?  ", "No.")  # whitespace-insensitive ends
    assert a != ids.qa_id("img_1", "Is there a mass?", "Yes.")
    assert a.startswith("qa_") and len(a) == 3 + ids.ID_HEX
    # a fixed input gives a fixed id on every machine and run
    assert ids.content_id("x", 1, "a") == "x_" + ids.sha256_hex('[1,"a"]')[:16]


def test_image_id_prefers_content_and_falls_back_to_file_name():
    sha = ids.sha256_hex(b"pixels")
    assert ids.image_id(sha256=sha, ref="a/b.png") == f"img_{sha[:16]}"
    assert ids.image_id(ref="some/dir/pmc_1.jpg") == ids.image_id(ref="pmc_1.jpg")
    with pytest.raises(ValueError):
        ids.image_id()


def test_run_id_ignores_input_order():
    assert ids.run_id("s", {"a": 1}, ["x", "y"]) == ids.run_id("s", {"a": 1}, ["y", "x"])
    assert ids.run_id("s", {"a": 1}, ["x"]) != ids.run_id("s", {"a": 2}, ["x"])


def test_every_table_documents_every_field():
    assert set(schema.TABLES) == {
        "images", "instructions", "qc_verdicts", "splits", "predictions",
        "judgments", "scores", "llm_calls", "quarantine", "train_runs", "train_metrics",
        "judge_agreement", "pope_scores",
    }
    for name, s in schema.TABLES.items():
        assert s.metadata[b"table"].decode() == name
        for f in s:
            assert (f.metadata or {}).get(b"doc"), f"{name}.{f.name} has no doc"
    md = schema.docs_markdown()
    assert "## `llm_calls`" in md and "`qa_id`" in md


def test_from_rows_and_conform_enforce_the_schema():
    t = schema.from_rows("splits", [{"image_id": "img_1", "split": "test", "seed": 3}])
    assert t.schema.equals(schema.SPLITS_TABLE, check_metadata=False)
    with pytest.raises(ValueError, match="unknown field"):
        schema.from_rows("splits", [{"image_id": "i", "split": "test", "bogus": 1}])
    with pytest.raises(ValueError, match="must not contain nulls"):
        schema.from_rows("splits", [{"image_id": None, "split": "test"}])
    # conform reorders, casts and fills absent nullable columns
    raw = pa.table({"split": ["train"], "image_id": ["img_2"], "seed": pa.array([1], pa.int32())})
    c = schema.conform("splits", raw)
    assert c.column_names == schema.SPLITS_TABLE.names and c.column("seed").type == pa.int64()
    with pytest.raises(ValueError, match="required column 'split'"):
        schema.conform("splits", pa.table({"image_id": ["x"]}))
    with pytest.raises(KeyError, match="unknown table"):
        schema.schema_for("nope")


def test_docs_tables_md_is_generated_from_the_schema():
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "tables.md"
    assert doc.read_text() == schema.docs_markdown() + "\n", "regenerate: medhall schema --markdown > docs/tables.md"
