"""LLaVA-Med adapters on real-format records (PMC caption records, instruction conversations)."""

from __future__ import annotations

import json

from medhall.ids import qa_id
from medhall.ingest import ingest
from medhall.sources import LlavaMedCaptions, LlavaMedInstruct, Rejected, SourceRecord

CAPTION_RECORDS = [
    {
        "pair_id": "PMC4264233_F1",
        "pmid": "25520861",
        "fig_id": "F1",
        "fig_label": "Figure 1",
        "fig_caption": "Contrast-enhanced axial CT scan of the abdomen showing a hypodense liver lesion.",
        "in_text_mention": [{"tokens": 12, "text": "CT showed a lesion (Figure 1)."}],
        "domain": {
            "chest_xray": False,
            "mri": False,
            "ct_scan": True,
            "histology": False,
            "gross": False,
        },
    },
    {
        "pair_id": "PMC3025345_F2",
        "pmid": "21278850",
        "fig_id": "F2",
        "fig_label": "Figure 2",
        "fig_caption": "Photomicrograph of the biopsy (H&E, x400).",
        "in_text_mention": [],
        "domain": {
            "chest_xray": False,
            "mri": False,
            "ct_scan": False,
            "histology": False,
            "gross": False,
        },
        "image": "custom/name.png",
    },
]

INSTRUCT_RECORD = {
    "id": "11215066_F1",
    "image": "11215066_F1.jpg",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat type of imaging is shown?"},
        {"from": "gpt", "value": "This is a chest X-ray."},
        {"from": "human", "value": "Is there a pleural effusion?\n<image>"},
        {"from": "gpt", "value": "Yes, on the left side."},
        {"from": "human", "value": "Anything else?"},
    ],
}


def test_captions_adapter_reads_jsonl(make):
    path = make.jsonl("llava_med_captions.jsonl", CAPTION_RECORDS)
    items = list(LlavaMedCaptions().read(path))
    assert all(isinstance(i, SourceRecord) for i in items)
    a, b = items
    assert a.record_ref == "llava_med_captions.jsonl:1"
    assert (a.source_id, a.image_ref) == (
        "PMC4264233_F1",
        "PMC4264233_F1.jpg",
    )  # LLaVA-Med's naming
    assert a.caption.startswith("Contrast-enhanced axial CT")
    assert a.modality == "CT" and a.body_part is None  # from the domain flags
    assert (
        a.meta["pmid"] == "25520861"
        and a.meta["fig_label"] == "Figure 1"
        and a.meta["in_text_mention"]
    )
    assert a.qa == [] and a.raw and json.loads(a.raw)["pair_id"] == "PMC4264233_F1"
    assert b.image_ref == "custom/name.png"  # an explicit image key wins
    assert b.modality is None  # no domain flag set


def test_captions_adapter_reads_json_list_and_rejects(make):
    rows = [
        *CAPTION_RECORDS,
        {**CAPTION_RECORDS[0], "pair_id": "E", "fig_caption": " \n "},
        {"pmid": "9", "fig_caption": "x"},
        {"pair_id": "NOCAP"},
        7,
    ]
    items = list(LlavaMedCaptions().read(make.json("captions.json", rows)))
    assert [type(i).__name__ for i in items] == [
        "SourceRecord",
        "SourceRecord",
        "Rejected",
        "Rejected",
        "Rejected",
        "Rejected",
    ]
    assert items[0].record_ref == "captions.json#0"
    assert [(i.reason, i.record_ref) for i in items[2:]] == [
        ("empty_caption", "captions.json#2"),
        ("missing_field", "captions.json#3"),
        ("missing_field", "captions.json#4"),
        ("bad_value", "captions.json#5"),
    ]
    assert "pair_id" in items[3].detail and "fig_caption" in items[4].detail


def test_captions_end_to_end_with_domain_chest_xray(make):
    make.image("PMC1_F1.jpg", seed=1)
    make.image("PMC2_F1.png", seed=2)
    rows = [
        {
            "pair_id": "PMC1_F1",
            "fig_caption": "Frontal view.",
            "domain": {"chest_xray": True, "mri": False},
        },
        {
            "pair_id": "PMC2_F1",
            "image": "PMC2_F1.png",
            "fig_caption": "Fundus photograph of the left eye.",
        },
    ]
    res = ingest(LlavaMedCaptions(), make.jsonl("c.jsonl", rows), dataset="d")
    got = {r["source_id"]: r for r in res.images.to_pylist()}
    assert (got["PMC1_F1"]["modality"], got["PMC1_F1"]["modality_origin"]) == (
        "radiograph",
        "source",
    )
    assert (got["PMC1_F1"]["body_part"], got["PMC1_F1"]["body_part_origin"]) == ("chest", "source")
    assert (got["PMC2_F1"]["modality"], got["PMC2_F1"]["modality_origin"]) == ("fundus", "caption")
    assert (got["PMC2_F1"]["body_part"], got["PMC2_F1"]["format"]) == ("eye", "PNG")
    assert res.instructions.num_rows == 0 and res.quarantine.num_rows == 0


def test_instruct_adapter_pairs_turns(make):
    path = make.jsonl("instruct.jsonl", [INSTRUCT_RECORD])
    (rec,) = list(LlavaMedInstruct().read(path))
    assert (
        rec.image_ref == "11215066_F1.jpg"
        and rec.source_id == "11215066_F1"
        and rec.caption is None
    )
    assert [(q.question, q.answer) for q in rec.qa] == [
        ("What type of imaging is shown?", "This is a chest X-ray."),
        ("Is there a pleural effusion?", "Yes, on the left side."),
        ("Anything else?", None),  # a trailing question without an answer
    ]
    assert all(q.kind is None and q.category is None for q in rec.qa)
    assert [q.source_qa_id for q in rec.qa] == ["11215066_F1#0", "11215066_F1#1", "11215066_F1#2"]


def test_instruct_adapter_rejects_unusable_records(make):
    rows = [
        {"id": "a", "image": "a.jpg", "conversations": []},
        {"id": "b", "conversations": INSTRUCT_RECORD["conversations"]},
        {
            "id": "c",
            "image": "c.jpg",
            "conversations": [{"from": "gpt", "value": "orphan"}],
            "caption": "Has a caption.",
        },
        {"id": "d", "image": "d.jpg", "conversations": "not a list"},
    ]
    items = list(LlavaMedInstruct().read(make.json("instruct.json", rows)))
    assert isinstance(items[0], Rejected) and items[0].reason == "missing_field"
    assert isinstance(items[1], Rejected) and "image" in items[1].detail
    assert (
        isinstance(items[2], SourceRecord)
        and items[2].caption == "Has a caption."
        and items[2].meta == {"orphan_answers": 1}
    )
    assert isinstance(items[3], Rejected)


def test_instruct_end_to_end(make):
    make.image("11215066_F1.jpg", seed=7)
    res = ingest("llava_med_instruct", make.jsonl("i.jsonl", [INSTRUCT_RECORD]), dataset="d")
    iid = res.images.column("image_id")[0].as_py()
    rows = res.instructions.to_pylist()
    assert [r["qa_id"] for r in rows] == [
        qa_id(iid, "What type of imaging is shown?", "This is a chest X-ray."),
        qa_id(iid, "Is there a pleural effusion?", "Yes, on the left side."),
        qa_id(iid, "Anything else?", None),
    ]
    assert {r["source"] for r in rows} == {"llava_med_instruct"} and rows[0][
        "generator"
    ] == "llava_med_instruct"
    assert json.loads(rows[0]["meta"]) == {"record_ref": "i.jsonl:1"}
    assert res.images.column("caption").to_pylist() == [None]
