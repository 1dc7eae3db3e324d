"""The Table 3 layout: rows = models (base then fine-tuned), columns = dataset x split."""

from __future__ import annotations

import csv
import io

import pytest

from medhall.vqa.report import build_table3, table3_csv, table3_markdown, table3_png


def _results() -> list[dict]:
    rows = []
    values = {
        "LLaVA-Med-v1.5": {("vqa_rad", "open"): 0.3604, ("vqa_rad", "closed"): 0.5875, ("pmc_vqa", "choice"): 0.3235},
        "Qwen-VL-Chat": {("vqa_rad", "open"): 0.2242, ("vqa_rad", "closed"): 0.6264},
        "LLaVA-Med-v1.5+MedHallTune": {("vqa_rad", "open"): 0.3847, ("vqa_rad", "closed"): 0.8249, ("pmc_vqa", "choice"): 0.3915},
        "Qwen-VL-Chat+MedHallTune": {("slake", "open"): 0.4198, ("vqa_rad", "open"): 0.3242},
    }
    for model, cells in values.items():
        for (bench, split), v in cells.items():
            rows.append({"model": model, "benchmark": bench, "split": split, "value": v})
    return rows


BASE_OF = {"LLaVA-Med-v1.5+MedHallTune": "LLaVA-Med-v1.5", "Qwen-VL-Chat+MedHallTune": "Qwen-VL-Chat"}


def test_layout_orders_columns_and_pairs_models() -> None:
    t = build_table3(_results(), BASE_OF)
    assert t.columns == [("vqa_rad", "open"), ("vqa_rad", "closed"), ("slake", "open"), ("pmc_vqa", "choice")]
    assert t.models == ["LLaVA-Med-v1.5", "LLaVA-Med-v1.5+MedHallTune", "Qwen-VL-Chat", "Qwen-VL-Chat+MedHallTune"]


def test_markdown() -> None:
    md = table3_markdown(build_table3(_results(), BASE_OF))
    lines = md.splitlines()
    assert lines[0] == "| Model | VQA-RAD open | VQA-RAD closed | SLAKE open | PMC-VQA choice |"
    assert lines[1] == "|---|---:|---:|---:|---:|"
    assert lines[2] == "| LLaVA-Med-v1.5 | 36.04 | 58.75 | – | 32.35 |"
    assert lines[3] == "| ↳ LLaVA-Med-v1.5+MedHallTune | 38.47 | 82.49 | – | 39.15 |"
    assert lines[5] == "| ↳ Qwen-VL-Chat+MedHallTune | 32.42 | – | 41.98 | – |"


def test_csv() -> None:
    rows = list(csv.reader(io.StringIO(table3_csv(build_table3(_results(), BASE_OF)))))
    assert rows[0] == ["model", "base_model", "vqa_rad_open", "vqa_rad_closed", "slake_open", "pmc_vqa_choice"]
    assert rows[2] == ["LLaVA-Med-v1.5+MedHallTune", "LLaVA-Med-v1.5", "38.47", "82.49", "", "39.15"]
    assert rows[3] == ["Qwen-VL-Chat", "", "22.42", "62.64", "", ""]


def test_without_base_map_models_keep_first_seen_order() -> None:
    assert build_table3(_results()).models[:2] == ["LLaVA-Med-v1.5", "Qwen-VL-Chat"]


def test_duplicate_result_is_an_error() -> None:
    rows = _results() + [{"model": "Qwen-VL-Chat", "benchmark": "vqa_rad", "split": "open", "value": 0.1}]
    with pytest.raises(ValueError, match="two results"):
        build_table3(rows)


def test_png_is_a_png() -> None:
    png = table3_png(build_table3(_results(), BASE_OF))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
