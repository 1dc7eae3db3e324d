"""POPE-style scores of closed yes/no VQA questions: which items count, and the zero-shot VQA
run's ``pope_scores`` table and report section (a scripted runner, no model)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from medhall.evaluate.pope import vqa_known
from medhall.vqa.data import VQAItem


def test_closed_items_with_a_yes_no_reference_count():
    items = [
        VQAItem("vqa_rad", "a", "x.jpg", "Is there a fracture?", "No", "closed", meta={"modality": "CT"}),
        VQAItem("vqa_rad", "b", "x.jpg", "Is the liver enlarged?", "yes", "closed"),
        VQAItem("slake", "c", "x.jpg", "Which side is the lesion on?", "left", "closed"),
        VQAItem("vqa_rad", "d", "x.jpg", "Is this normal?", "no", "open"),
    ]
    known = vqa_known(items)
    assert [(k.qa_id, k.expected, k.category, k.modality) for k in known] == [("a", "no", "vqa_rad", "CT"),
                                                                              ("b", "yes", "vqa_rad", None)]


def _vqa_rad(root: Path) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(images / "s1.jpg")
    rows = [{"qid": i, "phrase_type": "test_freeform", "image_name": "s1.jpg", "question": q, "answer": a,
             "answer_type": t} for i, (q, a, t) in enumerate([
                 ("Is there a fracture?", "No", "CLOSED"), ("Is there a mass?", "no", "CLOSED"),
                 ("Is the liver enlarged?", "yes", "CLOSED"), ("Which organ is shown?", "liver", "OPEN")])]
    path = root / "VQA_RAD Dataset Public.json"
    path.write_text(json.dumps(rows))
    return path


class SaysYes:
    name = "says-yes"

    def answer(self, items: Sequence[Any]) -> list[Any]:
        from medhall.infer import Answer

        return [Answer(q.qa_id, "Yes, it is.") for q in items]

    def unload(self) -> None:
        pass


def test_the_vqa_run_writes_pope_scores_and_reports_them(store, tmp_path: Path):
    from medhall.store import query
    from medhall.vqa.config import VQAConfig
    from medhall.vqa.pipeline import run_vqa

    data = _vqa_rad(tmp_path / "rad")
    (tmp_path / "model").mkdir()  # the runner is scripted; the path only keys its work (listing fingerprint)
    cfg = VQAConfig(benchmarks=[{"name": "VQA-RAD", "path": str(data), "image_root": str(data.parent / "images")}],
                    models=[{"name": "says-yes", "path": str(tmp_path / "model")}], shard_size=4, dataset="vqa")
    out = run_vqa(store, cfg, runner_factory=lambda spec, c: SaysYes())
    got = query(store, "select n, tp, fp, yes_ratio, hallucination_rate from pope_scores__vqa "
                       "where rule = 'first_word' and breakdown = 'overall'").to_pylist()
    assert got == [{"n": 3, "tp": 1, "fp": 2, "yes_ratio": 1.0, "hallucination_rate": 1.0}]
    md = Path(out["report"]["pope_markdown"]).read_text()
    assert md == out["report"]["pope_markdown_text"]
    assert "Hallucination without a judge" in md and "| says-yes | vqa_rad | 3 | 1 / 2 | 33.3 |" in md
    assert Path(out["report"]["pope_csv"]).exists()
    assert "Hallucination" not in out["report"]["markdown_text"]  # Table 3 stays as it was
