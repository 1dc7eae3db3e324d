"""The offline generator: determinism, shard independence, coverage and correctness of its pairs."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.compute as pc
import pytest

from medhall.generate import (
    CorpusStats,
    OfflineConfig,
    OfflineGenerator,
    corpus_statistics,
    default_lexicon,
)
from medhall.ids import qa_id
from medhall.qc.rules import AFFIRM_RE, rule_checks
from medhall.schema import INSTRUCTIONS, NEGATIVE_CATEGORIES

CHEST = {
    "image_id": "img_chest", "dataset": "t", "modality": "radiograph", "body_part": "chest",
    "caption": "Chest X-ray showing a large consolidation in the left lower zone with air bronchograms. The heart size is normal.",
}  # fmt: skip
BRAIN = {
    "image_id": "img_brain", "dataset": "t", "modality": "MR", "body_part": "brain",
    "caption": "Axial T2-weighted MRI shows a solitary, well-defined, hyperintense lesion in the left frontal lobe.",
}  # fmt: skip


def _meta(table) -> list[dict]:
    return [json.loads(m) for m in table.column("meta").to_pylist()]


def test_same_seed_same_rows_other_seed_other_rows():
    images = [CHEST, BRAIN]
    a = OfflineGenerator(OfflineConfig(seed=1)).generate(images)
    assert a.equals(OfflineGenerator(OfflineConfig(seed=1)).generate(images))
    assert a.column("qa_id") != OfflineGenerator(OfflineConfig(seed=2)).generate(images).column(
        "qa_id"
    )


def test_rows_of_an_image_do_not_depend_on_its_shard(release_images, release_stats, release_table):
    gen = OfflineGenerator()
    half = len(release_images) // 3
    shards = [
        gen.generate(release_images[:half], release_stats),
        gen.generate(release_images[half:], release_stats),
    ]
    assert [q for s in shards for q in s.column("qa_id").to_pylist()] == release_table.column(
        "qa_id"
    ).to_pylist()


def test_table_follows_the_schema_with_content_ids(release_table):
    assert release_table.schema.equals(INSTRUCTIONS)
    row = release_table.slice(0, 1).to_pylist()[0]
    assert row["qa_id"] == qa_id(row["image_id"], row["question"], row["answer"])
    assert row["generator"] == "offline-v1" and row["template_hash"] and row["source"] == "offline"


def test_all_categories_styles_and_strategies_appear_on_the_release(release_images, release_table):
    cats = Counter(release_table.column("category").to_pylist())
    assert set(NEGATIVE_CATEGORIES) <= set(cats)
    assert len(set(cats) - set(NEGATIVE_CATEGORIES)) >= 5
    assert set(release_table.column("style").to_pylist()) == {
        "direct",
        "casual",
        "clinician",
        "patient",
        "leading",
    }
    assert {m.get("strategy") for m in _meta(release_table)} >= {"random", "popular", "adversarial"}
    kinds = Counter(release_table.column("kind").to_pylist())
    assert abs(kinds["negative"] - kinds["positive"]) < 0.1 * release_table.num_rows
    assert release_table.num_rows >= 9 * len(release_images)


def test_generator_output_passes_every_rule(release_table):
    verdicts = rule_checks(release_table)
    bad = verdicts.filter(pc.equal(verdicts.column("verdict"), "incorrect"))
    assert bad.num_rows == 0, bad.slice(0, 5).to_pylist()


def test_negative_answers_never_open_with_agreement(release_table):
    negatives = release_table.filter(pc.equal(release_table.column("kind"), "negative"))
    assert not pc.any(
        pc.match_substring_regex(negatives.column("answer"), "(?i)" + AFFIRM_RE)
    ).as_py()


def test_nonexistent_objects_are_absent_from_the_caption(release_images, release_table):
    captions = {i["image_id"]: i["caption"] for i in release_images}
    lex = default_lexicon()
    rows = [r for r in release_table.to_pylist() if r["category"] == "nonexistent_object"]
    assert rows
    for r in rows:
        meta, caption = json.loads(r["meta"]), captions[r["image_id"]]
        assert meta["absent_entity"] not in {m.entity for m in lex.analyse(caption).mentions}
        assert meta["absent_name"].lower() not in caption.lower()


def test_swapped_attributes_differ_from_the_caption(release_images, release_table):
    captions = {i["image_id"]: i["caption"] for i in release_images}
    lex = default_lexicon()
    swaps = [
        (r, json.loads(r["meta"])) for r in release_table.to_pylist() if "swapped" in r["meta"]
    ]
    assert swaps
    for r, meta in swaps:
        s = meta["swapped"]
        values = lex.analyse(captions[r["image_id"]]).attribute_values
        assert (
            (s["group"], s["from"]) in values
            and (s["group"], s["to"]) not in values
            and s["from"] != s["to"]
        )


def test_hand_written_captions_get_grounded_pairs():
    table = OfflineGenerator(OfflineConfig(questions_per_image=12)).generate([CHEST, BRAIN])
    metas = _meta(table)
    swapped = {
        (m["entity"], m["swapped"]["from"], m["swapped"]["to"]) for m in metas if "swapped" in m
    }
    assert swapped <= {
        ("consolidation", "large", "small"), ("consolidation", "left", "right"),
        ("lesion", "single", "multiple"), ("lesion", "well_defined", "ill_defined"),
        ("lesion", "hyperintense", "hypointense"), ("lesion", "left", "right"),
    }  # fmt: skip
    assert swapped
    answers = " ".join(table.column("answer").to_pylist()).lower()
    assert "caption" not in answers


def test_images_without_entities_fall_back():
    rows = (
        OfflineGenerator()
        .generate(
            [
                {
                    "image_id": "img_x",
                    "caption": "A picture.",
                    "modality": "CT",
                    "body_part": "abdomen",
                }
            ]
        )
        .to_pylist()
    )
    assert rows and {r["category"] for r in rows} >= {"nonexistent_object", "modality_anatomy"}
    assert all(
        json.loads(r["meta"]).get("fallback") == "no_entities"
        for r in rows
        if r["category"] == "nonexistent_object"
    )
    assert OfflineGenerator().generate([{"image_id": "img_y", "caption": None}]).num_rows >= 1


def test_config_is_validated():
    with pytest.raises(ValueError):
        OfflineConfig(negative_mix={"made_up": 1.0})
    with pytest.raises(ValueError):
        OfflineConfig(styles={"direct": 0.0})


def test_corpus_stats_merge_and_round_trip(release_images, release_stats):
    captions = [i["caption"] for i in release_images]
    merged = corpus_statistics(captions[:100]).merge(corpus_statistics(captions[100:]))
    assert merged.to_json() == release_stats.to_json()
    assert CorpusStats.from_json(release_stats.to_json()).to_json() == release_stats.to_json()
