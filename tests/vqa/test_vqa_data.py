"""Loaders of the medical VQA benchmarks, each on a tiny fixture in its published form."""

from __future__ import annotations

import datetime
import io
import json
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medhall.vqa.data import CHOICE_INSTRUCTION, VQAItem, prompt_for, read_image_bytes
from medhall.vqa.loaders import (
    LOADERS,
    load_benchmark,
    load_llava_med_test,
    load_omnimedvqa,
    load_pathvqa,
    load_pmc_vqa,
    load_slake,
    load_vqa_rad,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def _hub_parquet(path: Path, rows: list[dict]) -> Path:
    """A Parquet file shaped like the hub exports: an ``image`` struct {bytes, path} + text."""
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "image"}
    table = pa.table({"image": pa.array([r["image"] for r in rows], type=image_type), **columns})
    pq.write_table(table, path, row_group_size=2)
    return path


def _by_id(items: list[VQAItem]) -> dict[str, VQAItem]:
    return {it.item_id: it for it in items}


# VQA-RAD ------------------------------------------------------------------------------------


def test_vqa_rad_public_json_test_split_types_and_problems() -> None:
    items, problems, skipped = load_vqa_rad(FIXTURES / "vqa_rad_public.json")
    got = _by_id(items)
    assert sorted(got) == ["vqa_rad/101", "vqa_rad/102", "vqa_rad/104"]
    assert got["vqa_rad/101"].answer_type == "closed"
    assert got["vqa_rad/102"].answer == "2" and got["vqa_rad/102"].answer_type == "open"  # int answer
    assert got["vqa_rad/104"].answer_type == "closed"  # "CLOSED " with a stray space
    assert got["vqa_rad/101"].meta["image_organ"] == "HEAD"
    assert skipped == {"not_test_split": 1}  # phrase_type "freeform"
    assert [(p.record_ref, p.reason) for p in problems] == [
        ("vqa_rad_public.json#4", "missing_field"),
        ("vqa_rad_public.json#5", "bad_value"),
    ]


def test_vqa_rad_all_splits() -> None:
    load = load_vqa_rad(FIXTURES / "vqa_rad_public.json", split=None)
    assert "vqa_rad/103" in _by_id(load.items) and load.skipped == {}


def test_vqa_rad_hub_parquet_infers_type_and_reads_embedded_image(tmp_path: Path) -> None:
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    path = _hub_parquet(
        tmp_path / "test-00000-of-00001.parquet",
        [
            {"image": {"bytes": red, "path": "synpic1.jpg"}, "question": "is there a fracture?", "answer": "no"},
            {"image": {"bytes": red, "path": None}, "question": "where is the lesion?", "answer": "left lobe"},
            {"image": {"bytes": blue, "path": None}, "question": "how many ribs?", "answer": "12"},
        ],
    )
    items, problems, _ = load_vqa_rad(path)
    assert problems == []
    assert [it.answer_type for it in items] == ["closed", "open", "open"]
    assert all(it.meta["answer_type_inferred"] for it in items)
    assert items[0].image_ref == f"{path.resolve()}#0" and items[0].meta["image_name"] == "synpic1.jpg"
    assert items[1].item_id.startswith("vqa_rad/h")  # no qid: content hash
    assert read_image_bytes(items[2]) == blue  # row 2 lives in the second row group
    assert read_image_bytes(items[0]) == red


# PathVQA ------------------------------------------------------------------------------------


def test_pathvqa_pickle_yes_no_closed_and_content_ids(tmp_path: Path) -> None:
    rows = [
        {"image": "test_0262", "question": "Is there necrosis?", "answer": "yes"},
        {"image": "test_0262", "question": "What is present?", "answer": "granuloma"},
        {"image": "test_0263", "question": "Does this show fibrosis?", "answer": "No"},
        {"image": "test_0263", "question": "Does this show fibrosis?", "answer": "No"},  # repeat
        {"image": "test_0264", "answer": "yes"},  # no question
    ]
    path = tmp_path / "test_qa.pkl"
    path.write_bytes(pickle.dumps(rows))
    items, problems, _ = load_pathvqa(path)
    assert [it.answer_type for it in items] == ["closed", "open", "closed", "closed"]
    assert items[0].image_ref == "test_0262.jpg"
    assert items[3].item_id == items[2].item_id + "~2" and items[3].meta["duplicate_of"] == items[2].item_id
    assert [(p.record_ref, p.reason) for p in problems] == [("test_qa.pkl#4", "missing_field")]
    again, _, _ = load_pathvqa(path)
    assert [it.item_id for it in again] == [it.item_id for it in items]  # stable ids


def test_pathvqa_pickle_with_classes_is_refused_not_run(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([{"image": "x", "question": "q", "answer": datetime.date(2020, 1, 1)}]))
    items, problems, _ = load_pathvqa(path)
    assert items == [] and problems[0].reason == "unreadable" and "refusing" in problems[0].detail


def test_pathvqa_hub_parquet(tmp_path: Path) -> None:
    path = _hub_parquet(
        tmp_path / "test.parquet",
        [{"image": {"bytes": _png((0, 255, 0)), "path": None}, "question": "Is this benign?", "answer": "yes"}],
    )
    items, problems, _ = load_pathvqa(path)
    assert problems == [] and items[0].answer_type == "closed"


# SLAKE --------------------------------------------------------------------------------------


def test_slake_english_only_non_english_counted() -> None:
    items, problems, skipped = load_slake(FIXTURES / "slake_test.json")
    assert [it.item_id for it in items] == ["slake/11934", "slake/11935", "slake/11936"]
    assert [it.answer_type for it in items] == ["closed", "closed", "open"]
    assert skipped == {"non_english": 2}
    assert [(p.record_ref, p.reason) for p in problems] == [("slake_test.json#5", "missing_field")]
    assert items[0].meta["modality"] == "CT" and items[0].meta["content_type"] == "Organ"


def test_slake_parquet_without_q_lang_drops_cjk(tmp_path: Path) -> None:
    img = {"bytes": _png((1, 2, 3)), "path": None}
    path = _hub_parquet(
        tmp_path / "slake.parquet",
        [
            {"image": img, "question": "Is the lung healthy?", "answer": "No", "answer_type": "CLOSED"},
            {"image": img, "question": "肺健康吗?", "answer": "不", "answer_type": "CLOSED"},
        ],
    )
    items, _, skipped = load_slake(path)
    assert len(items) == 1 and skipped == {"non_english": 1}


# PMC-VQA ------------------------------------------------------------------------------------


def test_pmc_vqa_csv_options_stripped_label_checked() -> None:
    items, problems, _ = load_pmc_vqa(FIXTURES / "pmc_vqa_test_clean.csv")
    first = items[0]
    assert first.answer_type == "choice"
    assert first.options == {"A": "CT scan", "B": "MRI", "C": "X-ray", "D": "Ultrasound"}
    assert (first.answer_label, first.answer) == ("A", "CT scan")
    assert items[1].question == "Which side shows the lesion, left or right?"  # quoted comma
    assert [(p.record_ref, p.reason) for p in problems] == [("pmc_vqa_test_clean.csv#2", "bad_value")]


def test_pmc_vqa_v2_csv_answer_is_the_letter() -> None:
    (item,), problems, _ = load_pmc_vqa(FIXTURES / "pmc_vqa_test_2.csv")
    assert problems == []
    assert (item.item_id, item.answer_label, item.answer) == ("pmc_vqa/7", "C", "Consolidation")


def test_pmc_vqa_parquet_prefers_the_embedded_image(tmp_path: Path) -> None:
    png = _png((9, 9, 9))
    row = {"image": {"bytes": png, "path": "x.jpg"}, "Figure_path": "PMC1_F1.jpg", "Question": "Which?", "Answer": "MRI"}
    row |= {"Choice A": "A:CT", "Choice B": "B:MRI", "Answer_label": "B"}
    (item,), problems, _ = load_pmc_vqa(_hub_parquet(tmp_path / "pmc.parquet", [row]))
    assert problems == [] and item.answer_label == "B" and read_image_bytes(item) == png


# OmniMedVQA ---------------------------------------------------------------------------------


def test_omnimedvqa_directory_label_from_gt_answer() -> None:
    items, problems, _ = load_omnimedvqa(FIXTURES / "omnimedvqa")
    got = _by_id(items)
    assert got["omnimedvqa/Chest CT Scan_0001"].answer_label == "B"
    two = got["omnimedvqa/Chest CT Scan_0002"]
    assert two.options == {"A": "MR", "B": "CT"}  # only two options present
    assert two.meta["modality_type"] == "CT(Computed Tomography)"  # from the stray "modality" key
    assert got["omnimedvqa/ISIC2018_0001"].options == {"A": "Nevus", "B": "Melanoma", "C": "Dermatofibroma"}
    assert [(p.record_ref, p.reason) for p in problems] == [("ISIC2018.json#1", "bad_value")]


# LLaVA-Med test.json ------------------------------------------------------------------------


def test_llava_med_test_json_both_spellings() -> None:
    items, problems, _ = load_llava_med_test(FIXTURES / "llava_med_test.json", benchmark="vqa_rad")
    assert [(it.item_id, it.answer_type) for it in items] == [("vqa_rad/1001", "closed"), ("vqa_rad/1002", "open")]
    assert items[0].question == "Are regions of the brain infarcted?"  # <image> removed
    assert items[1].answer == "Chest" and items[1].meta["turns_key"] == "conversatons"
    assert [(p.record_ref, p.reason) for p in problems] == [
        ("llava_med_test.json#2", "missing_field"),  # only one turn
        ("llava_med_test.json#3", "missing_field"),  # no answer_type
    ]


# Bad files, the registry, prompts -------------------------------------------------------------


def test_malformed_json_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "test.json"
    path.write_text('[{"qid": 1, "question": "q"', encoding="utf-8")
    items, problems, _ = load_slake(path)
    assert items == [] and problems[0].reason == "malformed_json"


def test_jsonl_bad_line_is_reported_and_the_rest_read(tmp_path: Path) -> None:
    good = {"qid": 1, "img_name": "a.jpg", "question": "Is it CT?", "answer": "Yes", "answer_type": "CLOSED", "q_lang": "en"}
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(good) + "\n{not json\n", encoding="utf-8")
    items, problems, _ = load_slake(path)
    assert len(items) == 1 and [(p.record_ref, p.reason) for p in problems] == [("test.jsonl:2", "malformed_json")]


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_vqa_rad(tmp_path / "nope.json")


def test_registry_names_and_aliases() -> None:
    assert set(LOADERS) == {"vqa_rad", "pathvqa", "slake", "pmc_vqa", "omnimedvqa", "llava_med_test"}
    assert len(load_benchmark("VQA-RAD", FIXTURES / "vqa_rad_public.json").items) == 3
    assert len(load_benchmark("SLAKE", FIXTURES / "slake_test.json").items) == 3
    with pytest.raises(ValueError, match="unknown VQA benchmark"):
        load_benchmark("mimic", FIXTURES / "slake_test.json")


def test_prompt_for_open_and_choice() -> None:
    items, _, _ = load_pmc_vqa(FIXTURES / "pmc_vqa_test_clean.csv")
    assert prompt_for(items[0]) == (
        "What imaging modality was used?\nA. CT scan\nB. MRI\nC. X-ray\nD. Ultrasound\n" + CHOICE_INSTRUCTION
    )
    assert prompt_for(items[0], choice_instruction="").endswith("D. Ultrasound")
    slake, _, _ = load_slake(FIXTURES / "slake_test.json")
    assert prompt_for(slake[0]) == "Does the picture contain liver?"


def test_read_image_bytes_from_a_folder(tmp_path: Path) -> None:
    (tmp_path / "xmlab102").mkdir()
    (tmp_path / "xmlab102" / "source.jpg").write_bytes(b"jpeg")
    items, _, _ = load_slake(FIXTURES / "slake_test.json")
    assert read_image_bytes(items[0], tmp_path) == b"jpeg"
