"""PubMedVision adapter: image lists, conversations, modality and body part as stated."""

from __future__ import annotations

import json

from medhall.ingest import ingest
from medhall.sources import PubMedVision, Rejected, SourceRecord

RECORDS = [
    {
        "id": "pmc_one",
        "image": ["images/pmc_one_1.jpg"],
        "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": "An axial CT slice through the upper abdomen."},
        ],
        "modality": "Computed Tomography",
        "body_part": "Abdomen",
    },
    {
        "id": "pmc_two",
        "image": ["images/pmc_two_1.jpg", "images/pmc_two_2.jpg"],
        "conversations": [
            {"from": "human", "value": "<image>\n<image>\nCompare the two panels."},
            {"from": "gpt", "value": "The second panel shows a larger lesion."},
        ],
        "modality": "Microscopy Images",
        "body_part": "Cell",
    },
]


def test_single_and_multi_image_records(make):
    items = list(PubMedVision().read(make.json("PubMedVision_Alignment_VQA.json", RECORDS)))
    assert all(isinstance(i, SourceRecord) for i in items) and len(items) == 3
    one, two_a, two_b = items
    assert (one.source_id, one.image_ref, one.group) == ("pmc_one", "images/pmc_one_1.jpg", None)
    assert [(q.question, q.answer) for q in one.qa] == [
        ("Describe the image.", "An axial CT slice through the upper abdomen.")
    ]
    assert (one.modality, one.body_part) == ("Computed Tomography", "Abdomen")  # as the source says
    assert (two_a.source_id, two_b.source_id) == ("pmc_two#0", "pmc_two#1")
    assert (
        two_a.qa[0].question == "Compare the two panels." and two_b.qa == []
    )  # QA on the first image only
    assert two_a.group == two_b.group == "pmc_two"
    assert two_b.meta == {"record_id": "pmc_two", "image_index": 1, "siblings": RECORDS[1]["image"]}
    assert (two_a.record_ref, two_b.record_ref) == (
        "PubMedVision_Alignment_VQA.json#1/0",
        "PubMedVision_Alignment_VQA.json#1/1",
    )


def test_jsonl_and_rejects(make):
    rows = [
        RECORDS[0],
        {"id": "x", "image": [], "conversations": RECORDS[0]["conversations"]},
        {"id": "y", "image": "single.jpg", "conversations": []},
        b"{bad",
    ]
    items = list(PubMedVision().read(make.jsonl("pmv.jsonl", rows)))
    assert isinstance(items[0], SourceRecord)
    assert [(i.reason, i.record_ref) for i in items[1:]] == [
        ("missing_field", "pmv.jsonl:2"),
        ("missing_field", "pmv.jsonl:3"),
        ("malformed_json", "pmv.jsonl:4"),
    ]
    assert all(isinstance(i, Rejected) for i in items[1:])


def test_end_to_end_normalises_and_keeps_siblings(make):
    for i, name in enumerate(["pmc_one_1.jpg", "pmc_two_1.jpg", "pmc_two_2.jpg"]):
        make.image(f"images/{name}", seed=10 + i)
    res = ingest("pubmedvision", make.json("pmv.json", RECORDS), dataset="d")
    assert res.quarantine.num_rows == 0  # the caption-less sibling is not an empty-caption record
    imgs = {r["image_ref"]: r for r in res.images.to_pylist()}
    assert len(imgs) == 3
    one = imgs["images/pmc_one_1.jpg"]
    assert (one["modality"], one["modality_origin"], one["body_part"], one["body_part_origin"]) == (
        "CT",
        "source",
        "abdomen",
        "source",
    )
    sib = imgs["images/pmc_two_2.jpg"]
    assert (sib["modality"], sib["body_part"]) == ("microscopy", "cell")
    meta = json.loads(sib["meta"])
    assert meta["group"] == "pmc_two" and meta["source_modality"] == "Microscopy Images"
    instr = res.instructions.to_pylist()
    assert len(instr) == 2
    assert {r["image_id"] for r in instr} == {
        one["image_id"],
        imgs["images/pmc_two_1.jpg"]["image_id"],
    }
