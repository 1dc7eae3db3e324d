"""The ingest pipeline's bad-input cases: each goes to quarantine with its reason, and the
good rows still come through."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from medhall import schema
from medhall.ids import content_id, image_id, qa_id
from medhall.ingest import IngestSummary, format_summary, ingest
from medhall.sources import LlavaMedCaptions, LlavaMedInstruct


def cap(pair_id: str, caption: str = "Axial CT of the chest.", **extra):
    return {
        "pair_id": pair_id,
        "pmid": "1",
        "fig_id": "F1",
        "fig_label": "Figure 1",
        "fig_caption": caption,
        "in_text_mention": [],
        "domain": {},
        **extra,
    }


def conv(rid: str, image: str, *pairs: tuple[str, str]):
    turns = []
    for q, a in pairs:
        turns += [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]
    return {"id": rid, "image": image, "conversations": turns}


@pytest.fixture
def corpus(make):
    """Good images a, b; every bad-input case once."""
    make.image("good_a.jpg", seed=1)
    make.image("good_b.jpg", seed=2)
    make.truncated_png("trunc.jpg")  # a truncated PNG under a .jpg name
    make.text("text.jpg", "this is not an image\n")
    return make


def test_every_bad_input_case_is_quarantined_and_good_rows_survive(corpus, reasons):
    path = corpus.jsonl(
        "captions.jsonl",
        [
            cap("good_a"),
            cap("good_b", "Brain MRI, T2-weighted."),
            cap("gone"),  # no gone.jpg
            cap("trunc"),
            cap("text"),
            cap("blank", "   "),  # empty caption
            b'{"pair_id": "broken", "fig_caption": ',  # malformed JSON line
            b'{"pair_id": "latin", "fig_caption": "caf\xe9"}',  # invalid UTF-8
            cap("good_a", "A different caption for the same id."),  # duplicate id, other content
        ],
    )
    res = ingest(LlavaMedCaptions(), [path], dataset="t")
    r = reasons(res)
    assert r == {
        "missing_image": ["captions.jsonl:3"],
        "corrupt_image": ["captions.jsonl:4", "captions.jsonl:5"],
        "empty_caption": ["captions.jsonl:6"],
        "malformed_json": ["captions.jsonl:7"],
        "undecodable": ["captions.jsonl:8"],
        "duplicate_id": ["captions.jsonl:9"],
    }
    assert sorted(res.images.column("image_ref").to_pylist()) == ["good_a.jpg", "good_b.jpg"]
    assert res.images.column("image_status").to_pylist() == ["ok", "ok"]
    assert res.ok and res.summary.ok
    s = res.summary
    assert (s.records_read, s.images, s.images_ok, s.images_missing, s.images_corrupt) == (
        9,
        2,
        2,
        1,
        2,
    )
    assert s.quarantined == {
        "corrupt_image": 2,
        "duplicate_id": 1,
        "empty_caption": 1,
        "malformed_json": 1,
        "missing_image": 1,
        "undecodable": 1,
    }
    # the quarantine rows are complete and typed by the spine
    assert res.quarantine.schema.equals(schema.QUARANTINE, check_metadata=False)
    rows = {q["reason"]: q for q in res.quarantine.to_pylist()}
    assert rows["malformed_json"]["raw"].startswith('{"pair_id": "broken"')
    assert "JSON error" in rows["malformed_json"]["detail"]
    assert "caf" in rows["undecodable"]["raw"]
    assert (
        rows["duplicate_id"]["record_id"] == "good_a"
        and "captions.jsonl:1" in rows["duplicate_id"]["detail"]
    )
    corrupt = {
        q["record_ref"]: q["detail"]
        for q in res.quarantine.to_pylist()
        if q["reason"] == "corrupt_image"
    }
    assert "truncated" in corrupt["captions.jsonl:4"]
    assert "not an image format" in corrupt["captions.jsonl:5"]
    q = rows["missing_image"]
    assert q["quarantine_id"] == content_id(
        "qrn", "ingest", "llava_med_captions", "captions.jsonl:3", "missing_image"
    )
    assert q["stage"] == "ingest" and q["dataset"] == "t" and q["run_id"] == res.run_id


def test_caption_of_first_good_record_kept_and_tables_in_spine_schema(corpus):
    path = corpus.jsonl("c.jsonl", [cap("good_a")])
    res = ingest("llava_med_captions", path, dataset="t")
    for name in ("images", "instructions", "quarantine"):
        assert getattr(res, name).schema.equals(schema.schema_for(name), check_metadata=False)
    row = res.images.to_pylist()[0]
    assert row["width"] == 32 and row["height"] == 24 and row["format"] == "JPEG"
    assert row["image_id"] == image_id(sha256=row["sha256"])
    assert row["image_path"] == str((corpus.root / "good_a.jpg").resolve())
    assert (row["modality"], row["modality_origin"], row["body_part"], row["body_part_origin"]) == (
        "CT",
        "caption",
        "chest",
        "caption",
    )


def test_duplicate_image_bytes_keep_first_and_move_qa(make, reasons):
    first = make.image("x.png", seed=5)
    make.copy(first, "sub/x_copy.png")
    path = make.jsonl(
        "inst.jsonl",
        [
            conv("r1", "x.png", ("What organ?", "Liver.")),
            conv("r2", "sub/x_copy.png", ("Which side?", "Left.")),
        ],
    )
    res = ingest(LlavaMedInstruct(), path, dataset="t")
    assert reasons(res) == {"duplicate_image": ["inst.jsonl:2"]}
    kept = res.images.to_pylist()
    assert len(kept) == 1 and kept[0]["image_ref"] == "x.png"
    detail = res.quarantine.column("detail")[0].as_py()
    assert kept[0]["image_id"] in detail
    # nothing lost: both QA pairs on the kept image
    assert res.instructions.column("question").to_pylist() == ["What organ?", "Which side?"]
    assert set(res.instructions.column("image_id").to_pylist()) == {kept[0]["image_id"]}
    assert json.loads(kept[0]["meta"])["duplicate_refs"] == ["sub/x_copy.png"]
    assert res.summary.duplicate_images == 1


def test_same_ref_records_merge_and_identical_qa_collapse(make):
    make.image("m.png", seed=3)
    path = make.jsonl(
        "inst.jsonl",
        [
            conv("r1", "m.png", ("Q1?", "A1.")),
            conv("r2", "m.png", ("Q1?", "A1."), ("Q2?", "A2.")),  # Q1 again: identical pair
        ],
    )
    res = ingest("llava_med_instruct", path, dataset="t")
    assert res.images.num_rows == 1
    assert res.instructions.column("question").to_pylist() == ["Q1?", "Q2?"]
    iid = res.images.column("image_id")[0].as_py()
    assert res.instructions.column("qa_id").to_pylist() == [
        qa_id(iid, "Q1?", "A1."),
        qa_id(iid, "Q2?", "A2."),
    ]
    assert res.summary.qa_duplicates == 1
    assert res.quarantine.num_rows == 0


def test_identical_repeated_record_is_counted_not_quarantined(make):
    make.image("good_a.jpg", seed=1)
    path = make.jsonl("c.jsonl", [cap("good_a"), cap("good_a")])
    res = ingest("llava_med_captions", path, dataset="t")
    assert res.images.num_rows == 1 and res.quarantine.num_rows == 0
    assert res.summary.duplicate_records == 1


def test_same_id_in_two_files_is_not_a_duplicate(make):
    make.image("good_a.jpg", seed=1)
    p1 = make.jsonl("one.jsonl", [cap("good_a")])
    p2 = make.jsonl("two.jsonl", [cap("good_a", "Other caption")])
    res = ingest("llava_med_captions", [p1, p2], dataset="t")
    assert res.quarantine.num_rows == 0
    assert res.images.column("caption").to_pylist() == [
        "Axial CT of the chest."
    ]  # first non-empty wins
    assert json.loads(res.images.column("meta")[0].as_py())["n_records"] == 2


def test_empty_question_goes_to_quarantine_missing_field(make, reasons):
    make.image("q.png", seed=4)
    rec = {"id": "r1", "image": "q.png", "conversations": [
        {"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": "An answer to nothing."},
        {"from": "human", "value": "Real question?"}, {"from": "gpt", "value": "Real answer."},
    ]}  # fmt: skip
    res = ingest("llava_med_instruct", make.jsonl("i.jsonl", [rec]), dataset="t")
    assert reasons(res) == {"missing_field": ["i.jsonl:1#qa0"]}
    assert res.instructions.column("question").to_pylist() == ["Real question?"]


def test_missing_image_kept_when_not_required(make):
    path = make.jsonl("c.jsonl", [cap("nowhere")])
    res = ingest("llava_med_captions", path, dataset="t", require_images=False)
    row = res.images.to_pylist()[0]
    assert (row["image_status"], row["image_path"], row["sha256"]) == ("missing", None, None)
    assert row["image_id"] == image_id(ref="nowhere.jpg")
    assert res.quarantine.num_rows == 0 and res.summary.images_missing == 1
    assert "kept with image_status=missing" in format_summary(res.summary)


def test_images_dir_option(make):
    make.image("imgs/good_a.jpg", seed=1)
    path = make.jsonl("meta/c.jsonl", [cap("good_a")])
    assert ingest("llava_med_captions", path, dataset="t").images.num_rows == 0
    res = ingest("llava_med_captions", path, dataset="t", images_dir=make.root / "imgs")
    assert res.images.column("image_status").to_pylist() == ["ok"]


def test_dicom_image_gets_header_modality(make):
    make.dicom("ct.dcm")
    path = make.jsonl(
        "c.jsonl", [{"pair_id": "p", "image": "ct.dcm", "fig_caption": "Axial slice of a patient."}]
    )
    row = ingest("llava_med_captions", path, dataset="t").images.to_pylist()[0]
    assert (row["format"], row["width"], row["height"]) == ("DICOM", 128, 128)
    assert (row["modality"], row["modality_origin"]) == ("CT", "header")


def test_nothing_valid_is_not_ok_and_never_raises(make, reasons):
    path = make.jsonl("bad.jsonl", [b"not json", b"\xff\xfe", cap("gone")])
    res = ingest("llava_med_captions", [path, make.root / "absent.jsonl"], dataset="t")
    assert not res.ok and res.images.num_rows == 0 and res.instructions.num_rows == 0
    assert reasons(res) == {
        "malformed_json": ["bad.jsonl:1"],
        "undecodable": ["bad.jsonl:2"],
        "missing_image": ["bad.jsonl:3"],
        "missing_file": ["absent.jsonl"],
    }
    assert "nothing valid was read" in format_summary(res.summary)


def test_whole_file_not_json_is_one_reject(make, reasons):
    path = make.text("list.json", '[{"pair_id": "a", "fig_caption": "x"}, {oops}]')
    res = ingest("llava_med_captions", path, dataset="t")
    assert reasons(res) == {"malformed_json": ["list.json"]}


def test_summary_and_format(corpus):
    path = corpus.jsonl("c.jsonl", [cap("good_a"), cap("gone"), b"{"])
    res = ingest("llava_med_captions", path, dataset="t", workers=1)
    s = res.summary
    assert isinstance(s, IngestSummary)
    d = s.to_dict()
    assert (
        d["ok"]
        and d["quarantined_total"] == 2
        and d["quarantined"] == {"malformed_json": 1, "missing_image": 1}
    )
    text = format_summary(s)
    assert "images" in text and "missing_image" in text and "1 not on disk: quarantined" in text
    assert format_summary(d) == text


def test_run_id_is_stable_and_given_one_is_used(corpus):
    path = corpus.jsonl("c.jsonl", [cap("good_a")])
    a = ingest("llava_med_captions", path, dataset="t")
    b = ingest("llava_med_captions", path, dataset="t")
    assert a.run_id == b.run_id and a.images.equals(b.images)
    c = ingest("llava_med_captions", path, dataset="t", run_id="run_x")
    assert set(c.images.column("run_id").to_pylist()) == {"run_x"}


def test_many_records_concurrent_checks_keep_order(make):
    rows = []
    for i in range(150):
        make.image(f"im{i}.png", seed=100 + i, size=(8, 8))
        rows.append(
            {
                "pair_id": f"p{i}",
                "image": f"im{i}.png",
                "fig_caption": f"Figure {i}: chest radiograph.",
            }
        )
    res = ingest("llava_med_captions", make.jsonl("c.jsonl", rows), dataset="t", workers=4)
    assert res.images.column("source_id").to_pylist() == [f"p{i}" for i in range(150)]
    assert pa.compute.all(pa.compute.equal(res.images.column("image_status"), "ok")).as_py()


def test_whole_json_file_not_utf8_is_one_reject(make, reasons):
    path = make.text("list.json", b'[{"pair_id": "a", "fig_caption": "caf\xe9"}]')
    res = ingest("llava_med_captions", path, dataset="t")
    assert reasons(res) == {"undecodable": ["list.json"]} and not res.ok


def test_an_adapter_that_raises_ends_its_file_not_the_run(make, reasons):
    from medhall.sources.base import SourceRecord

    class Flaky:
        name = "flaky"
        images_optional = True

        def read(self, path, **options):
            yield SourceRecord(f"{path.name}:1", "1", "a.png", "A CT.")
            raise RuntimeError("adapter bug")

    a, b = make.text("a.txt", "x"), make.text("b.txt", "y")
    res = ingest(Flaky(), [a, b], dataset="t")
    assert reasons(res) == {"unreadable": ["a.txt", "b.txt"]}
    assert res.ok and res.images.num_rows == 1  # both files named a.png in one folder: merged
    assert json.loads(res.images.column("meta")[0].as_py())["n_records"] == 2
