"""A store holding the embedded sample corpus, ingested (the input of every build test)."""

import pytest

from medhall import sample
from medhall.jobs import ingest_to_store


@pytest.fixture
def corpus_store(store, tmp_path):
    captions = sample.materialize(tmp_path / "corpus")
    out = ingest_to_store("llava_med_captions", [captions], dataset="src", store=store)
    assert out.ok
    return store
