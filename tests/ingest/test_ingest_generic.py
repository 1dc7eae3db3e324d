"""Generic adapter: JSONL, CSV and Parquet with a column mapping; and the adapter registry."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medhall.ingest import ingest
from medhall.sources import ADAPTERS, Generic, Rejected, SourceRecord, generic, get_adapter

MAPPING = {
    "image": "img",
    "caption": "report",
    "id": "uid",
    "question": "q",
    "answer": "a",
    "kind": "label",
}


def _csv(make, name: str, body: bytes):
    return make.text(name, body)


def test_csv_with_mapping(make):
    body = (
        b"uid,img,report,q,a,label,site\n"
        b'1,a.png,"Chest radiograph,\nfrontal view.",Is the heart enlarged?,No.,pos,A\n'
        b"2,a.png,,Is there a fracture?,Yes.,hallucination,A\n"
        b"3,b.png,Brain MRI.,,,,B\n"
    )
    items = list(Generic(MAPPING).read(_csv(make, "t.csv", body)))
    assert all(isinstance(i, SourceRecord) for i in items)
    a1, a2, b = items
    assert (a1.record_ref, a1.source_id, a1.image_ref) == ("t.csv#0", "1", "a.png")
    assert a1.caption == "Chest radiograph,\nfrontal view."  # quoted newline kept
    assert [(q.question, q.answer, q.kind) for q in a1.qa] == [
        ("Is the heart enlarged?", "No.", "positive")
    ]
    assert a2.qa[0].kind == "negative" and a2.caption is None
    assert b.qa == [] and b.meta == {"site": "B"}


def test_csv_bad_rows(make, reasons):
    make.image("a.png", seed=1)
    body = b"image,caption\na.png,Good CT.\nb.png,caf\xe9 latte\nc.png,too,many,fields\n"
    path = _csv(make, "t.csv", body)
    items = list(Generic().read(path))
    bad = [(i.reason, i.record_ref) for i in items if isinstance(i, Rejected)]
    assert sorted(bad) == [("malformed_row", "t.csv#malformed-1"), ("undecodable", "t.csv#1")]
    res = ingest(Generic(), path, dataset="d")
    assert set(reasons(res)) == {"undecodable", "malformed_row"}
    assert res.images.column("caption").to_pylist() == ["Good CT."]


def test_parquet_streams_batches(make, monkeypatch):
    monkeypatch.setattr(generic, "BATCH_ROWS", 3)
    for i in range(2):
        make.image(f"p{i}.png", seed=i)
    table = pa.table(
        {
            "path": [f"p{i % 2}.png" for i in range(7)],
            "text": [f"Figure {i}: knee MRI." for i in range(7)],
            "id": list(range(7)),
        }
    )
    path = make.path("t.parquet")
    pq.write_table(table, path)
    items = list(get_adapter("generic", mapping={"image": "path", "caption": "text"}).read(path))
    assert [i.record_ref for i in items] == [f"t.parquet#{i}" for i in range(7)]
    assert [i.source_id for i in items] == [str(i) for i in range(7)]
    res = ingest(Generic(image="path", caption="text"), path, dataset="d")
    assert res.images.num_rows == 2 and res.images.column("caption").to_pylist() == [
        "Figure 0: knee MRI.",
        "Figure 1: knee MRI.",
    ]
    assert res.images.column("body_part").to_pylist() == ["lower_limb", "lower_limb"]


def test_jsonl_defaults_and_hf_image_dict(make):
    rows = [
        {
            "image": "x.png",
            "caption": "Ultrasound of the liver.",
            "modality": "US",
            "body_part": "Liver",
        },
        {
            "image": {"path": "y.png", "bytes": None},
            "caption": "CT",
            "question": "<image>\nWhat is shown?",
            "answer": "A CT.",
            "kind": "weird",
            "category": "captioning",
        },
        {"caption": "no image"},
    ]
    items = list(Generic().read(make.jsonl("g.jsonl", rows)))
    x, y, bad = items
    assert (x.source_id, x.modality, x.body_part) == ("1", "US", "Liver")  # line number as id
    assert y.image_ref == "y.png" and y.qa[0].question == "What is shown?"
    assert (
        y.qa[0].kind is None
        and y.qa[0].meta == {"kind_raw": "weird"}
        and y.qa[0].category == "captioning"
    )
    assert isinstance(bad, Rejected) and bad.reason == "missing_field" and "'image'" in bad.detail


def test_unreadable_files_are_one_reject(make):
    assert [i.reason for i in Generic().read(make.text("x.parquet", b"not parquet"))] == [
        "unreadable"
    ]
    assert [i.reason for i in Generic().read(make.root / "absent.csv")] == ["missing_file"]


def test_mapping_validation_and_registry():
    with pytest.raises(ValueError, match="unknown mapping field"):
        Generic({"picture": "img"})
    assert set(ADAPTERS) == {
        "llava_med_captions",
        "llava_med_instruct",
        "pubmedvision",
        "medhalltune",
        "generic",
    }
    with pytest.raises(ValueError) as e:
        get_adapter("nope")
    assert "llava_med_captions" in str(e.value) and "generic" in str(e.value)
    assert get_adapter("generic", mapping={"image": "p"}).mapping["image"] == "p"


def test_caption_only_row_with_empty_caption_is_quarantined(make, reasons):
    make.image("a.png", seed=1)
    make.image("b.png", seed=2)
    path = _csv(
        make,
        "t.csv",
        b"image,caption,question,answer\na.png,Knee MRI.,,\nb.png,  ,,\nb.png,,What is it?,A knee.\n",
    )
    res = ingest(Generic(), path, dataset="d")
    assert reasons(res) == {"empty_caption": ["t.csv#1"]}
    assert res.images.num_rows == 2 and res.instructions.column("question").to_pylist() == [
        "What is it?"
    ]


def test_images_optional_option(make):
    path = make.jsonl("g.jsonl", [{"image": "nowhere.png", "caption": "A CT."}])
    assert ingest(Generic(), path, dataset="d").summary.quarantined == {"missing_image": 1}
    res = ingest(Generic(images_optional=True), path, dataset="d")
    assert (
        res.images.column("image_status").to_pylist() == ["missing"]
        and res.quarantine.num_rows == 0
    )
