"""Preference tuning: rejected answers that accept the false premise, pairs from a build's
negative questions, exports in TRL's and LLaMA-Factory's formats that load back, lengths
counted, and DPO through TRL moving the chosen-vs-rejected margin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medhall.generate.rejected import GENERIC, rejected_answer
from medhall.train.data import DataError
from tests.conftest import BUILT_DATASET


def offline_row(task: str, meta: dict, category: str = "nonexistent_object", qa_id: str = "qa_1") -> dict:
    return {"kind": "negative", "category": category, "qa_id": qa_id, "meta": json.dumps({"task": task, **meta})}


def test_offline_rows_get_their_own_falsehood_stated_as_fact() -> None:
    text, origin = rejected_answer(offline_row("absent", {"absent_name": "pleural effusion"}))
    assert origin == "template" and "a pleural effusion" in text and "no " not in text.lower()
    text, origin = rejected_answer(offline_row(
        "attribute", {"entity": "lytic_lesion", "swapped": {"group": "shape", "to": "spiculated", "to_phrase": "spiculated"}},
        "object_manipulation"))
    assert origin == "template" and "lytic lesion" in text and text.rstrip(".").endswith("spiculated")
    text, origin = rejected_answer(offline_row("premise", {"premise_id": "us_shadowing"}, "knowledge_distortion"))
    assert origin == "template" and "ultrasound" in text.lower()
    assert text[0].isupper()


def test_the_generators_own_hallucinated_answer_wins_and_other_rows_get_a_generic_yes() -> None:
    row = {"kind": "negative", "category": "nonexistent_object", "meta": json.dumps({"rejected": " Yes, a stent. "})}
    assert rejected_answer(row) == ("Yes, a stent.", "generator")
    for category in ("nonexistent_object", "object_manipulation", "knowledge_distortion", None):
        text, origin = rejected_answer({"kind": "negative", "category": category, "meta": None, "qa_id": "q"})
        assert origin == "generic" and text in GENERIC[category]
    # a template with a value it cannot fill falls back to the generic answer, never a broken sentence
    assert rejected_answer(offline_row("relation", {"relation": {"a": "nope", "b": "nada", "rel": "near"}}))[1] == "generic"
    assert rejected_answer({"kind": "positive", "category": "captioning", "meta": None}) is None


def test_the_same_row_always_gets_the_same_rejected_answer() -> None:
    rows = [offline_row("absent", {"absent_name": "mass"}, qa_id=f"qa_{i}") for i in range(30)]
    first = [rejected_answer(r) for r in rows]
    assert first == [rejected_answer(r) for r in rows]
    assert len({t for t, _ in first}) > 1  # the choice among templates varies by pair, seeded


def test_llm_replies_carry_the_hallucinated_answer_and_older_replies_still_parse() -> None:
    from medhall.generate.llm import NegativeSet

    new = NegativeSet.model_validate({"pairs": [{"question": "Is the stent patent?", "answer": "There is no stent.",
                                                 "category": "nonexistent_object", "hallucinated_answer": "Yes."}]})
    old = NegativeSet.model_validate({"pairs": [{"question": "Is the stent patent?", "answer": "There is no stent.",
                                                 "category": "nonexistent_object"}]})
    assert new.pairs[0].hallucinated_answer == "Yes." and old.pairs[0].hallucinated_answer is None


def test_pairs_from_a_build_are_its_train_negatives(built) -> None:
    from medhall.train.data import store_rows
    from medhall.train.dpo import pairs_from_store

    data = pairs_from_store(built, BUILT_DATASET)
    rows, _, _ = store_rows(built, BUILT_DATASET, "full")
    negatives = {r["qa_id"]: r for r in rows if r["kind"] == "negative"}
    assert data.examples and {p.qa_id for p in data.examples} == set(negatives)
    for p in data.examples:
        assert p.chosen == negatives[p.qa_id]["answer"].strip() and p.rejected != p.chosen
        assert p.category in ("nonexistent_object", "object_manipulation", "knowledge_distortion")
    assert data.rejected_sources == {"template": len(data.examples)}
    assert data.fingerprint == pairs_from_store(built, BUILT_DATASET).fingerprint
    assert pairs_from_store(built, BUILT_DATASET, "frac_25").fingerprint != data.fingerprint
    with pytest.raises(DataError, match="no negative"):
        pairs_from_store(built, BUILT_DATASET, "positive_only")


@pytest.mark.parametrize("fmt", ["trl", "llamafactory"])
def test_exported_pairs_load_back_and_in_the_tools_loaders(built, tmp_path, fmt) -> None:
    from medhall.train.dpo import export_pairs, pairs_from_file, pairs_from_store

    data = pairs_from_store(built, BUILT_DATASET)
    paths = export_pairs(data, tmp_path / fmt, fmt, name="p")
    back = pairs_from_file(paths[0])
    assert [(p.question, p.chosen, p.rejected) for p in back.examples] == \
        [(p.question, p.chosen, p.rejected) for p in data.examples]
    # every image opens with PIL (DICOM rendered to PNG): what TRL and LLaMA-Factory use
    from PIL import Image

    for p in back.examples:
        with Image.open(p.image) as im:
            im.load()
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("json", data_files=str(paths[0]), split="train")
    assert loaded.num_rows == len(data.examples)
    if fmt == "llamafactory":
        info = json.loads(paths[1].read_text())["p"]
        assert info["ranking"] is True and info["formatting"] == "sharegpt"
        assert set(info["columns"].values()) <= set(loaded.column_names)
        assert loaded[0]["conversations"][0]["value"].startswith("<image>")
    else:
        assert {"images", "prompt", "chosen", "rejected"} <= set(loaded.column_names)


def test_a_malformed_preference_record_is_counted_not_fatal(tmp_path, image_file) -> None:
    from medhall.train.dpo import pairs_from_file

    good = {"images": [image_file], "prompt": "Is there a mass?", "chosen": "No.", "rejected": "Yes."}
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [good, {"images": [image_file], "prompt": "Q"},
                                                         {**good, "images": [str(tmp_path / "gone.png")]}]))
    data = pairs_from_file(path)
    assert len(data.examples) == 1 and data.skipped == {"malformed_record": 1, "missing_image": 1}


def make_pairs(tmp_path: Path, n: int = 8) -> Path:
    from PIL import Image

    colours = ["red", "green", "blue", "white", "black", "yellow", "gray", "purple"]
    records = []
    for i in range(n):
        img = tmp_path / f"i{i}.png"
        Image.new("RGB", (28, 28), colours[i % len(colours)]).save(img)
        records.append({"id": f"r{i}", "images": [str(img)], "prompt": "Is there a pneumothorax?",
                        "chosen": "No, there is no pneumothorax in this image.",
                        "rejected": "Yes, there is a large pneumothorax."})
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    return path


def test_lengths_of_pairs_are_counted(tiny_bases, tmp_path) -> None:
    from medhall.infer.processors import load_processor
    from medhall.train.dpo import fit_pairs, pairs_from_file
    from medhall.train.encode import Encoder

    pairs = pairs_from_file(make_pairs(tmp_path, 3)).examples
    proc = load_processor(tiny_bases["llava"])
    kept, report = fit_pairs(pairs, Encoder(proc, max_length=4096))
    assert len(kept) == 3 and report.truncated == 0 and not report.dropped
    longest = report.longest
    kept, report = fit_pairs(pairs, Encoder(proc, max_length=longest - 2))
    assert len(kept) == 3 and report.truncated == 3
    kept, report = fit_pairs(pairs, Encoder(proc, max_length=longest - 2, overflow="drop"))
    assert kept == [] and report.dropped == {"too_long": 3}
    kept, report = fit_pairs(pairs, Encoder(proc, max_length=16))
    assert kept == [] and report.dropped == {"prompt_too_long": 3}


def test_dpo_moves_the_margin_towards_the_chosen_answer(store, tiny_bases, tmp_path) -> None:
    pytest.importorskip("trl")
    from medhall.train.config import load_config
    from medhall.train.model import read_metadata
    from medhall.train.trainer import read_metrics, run_training

    cfg = load_config(None, ["lora.preset=small", "lora.dropout=0"], dataset=str(make_pairs(tmp_path)),
                      base=tiny_bases["llava"], method="dpo", max_steps=5, per_device_batch=2, learning_rate=5e-3,
                      lr_scheduler="constant", warmup_ratio=0.0, output_dir=str(tmp_path / "run"))
    res = run_training(store, cfg)
    assert res.steps == 5 and res.extras["rejected_sources"] == {"file": 8}
    margins = [r["value"] for r in read_metrics(res.out_dir / "metrics.jsonl") if r["metric"] == "rewards/margins"]
    assert len(margins) == 5 and margins[0] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert margins[-1] > 0.5 and margins[-1] > max(margins[:2])
    meta = read_metadata(res.adapter_dir)
    assert meta["method"] == "dpo" and meta["config"]["dpo_beta"] == 0.1
    runs = store.latest("train_runs", f"train-{res.train_id}").read().to_pylist()
    assert runs[0]["method"] == "dpo" and runs[0]["examples"] == 8
