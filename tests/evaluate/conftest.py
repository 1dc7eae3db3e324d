"""Fixtures of the evaluation tests: WordNet assembled once per session, release file paths."""

from __future__ import annotations

from pathlib import Path

import pytest

POSITIVE_PRED = "llava-med-prediction-postive-GPT4o-eval-filtered.jsonl"
NEGATIVE_PRED = "llava-med-prediction-negative-GPT4o-eval-filtered.jsonl"
POSITIVE_VAL = "val_positive_qa-filtered.jsonl"
NEGATIVE_VAL = "val_negative_qa-filtered.jsonl"


@pytest.fixture(scope="session")
def wordnet_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir holding the assembled WordNet; skipped (with the fix) where it is absent."""
    from medhall.evaluate.wordnet import WordNetMissing, ensure_wordnet

    cache = tmp_path_factory.mktemp("wordnet-cache")
    try:
        ensure_wordnet(cache)
    except WordNetMissing as e:
        pytest.skip(str(e))
    return cache


@pytest.fixture
def release_preds(medhalltune_dir: Path) -> dict[str, Path]:
    """The release's two prediction files (LLaVA-Med answers + GPT-4o judge output) by kind."""
    return {"positive": medhalltune_dir / POSITIVE_PRED, "negative": medhalltune_dir / NEGATIVE_PRED}


@pytest.fixture
def release_vals(medhalltune_dir: Path) -> dict[str, Path]:
    return {"positive": medhalltune_dir / POSITIVE_VAL, "negative": medhalltune_dir / NEGATIVE_VAL}
