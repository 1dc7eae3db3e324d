"""WordNet 3.0 for METEOR: the lexnames medhall writes, the assembled nltk corpus, the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from medhall.evaluate.wordnet import (
    INSTALL_HINT,
    WordNetMissing,
    ensure_wordnet,
    find_wordnet_source,
    lexnames_text,
    wordnet_reader,
)

SHARED_LEXNAMES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "wordnet" / "lexnames"


def test_lexnames_format():
    lines = lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[44] == "44\tadj.ppl\t3"
    assert all(int(line.split("\t")[0]) == i for i, line in enumerate(lines))


def test_lexnames_equals_wordnets_file():
    if not SHARED_LEXNAMES.is_file():
        pytest.skip(f"{SHARED_LEXNAMES} not present: nothing to compare with")
    assert lexnames_text().encode() == SHARED_LEXNAMES.read_bytes()


def test_assembled_corpus(wordnet_cache: Path):
    import nltk

    corpus = ensure_wordnet(wordnet_cache)
    assert corpus == wordnet_cache.resolve() / "nltk_data" / "corpora" / "wordnet"
    assert (corpus / "lexnames").read_text() == lexnames_text()
    assert (corpus / "data.noun").is_file() and not (corpus / "data.noun").is_symlink()
    assert str(wordnet_cache.resolve() / "nltk_data") in [str(p) for p in nltk.data.path]
    marker = corpus / ".medhall-wordnet.json"
    before = marker.stat().st_mtime_ns
    assert ensure_wordnet(wordnet_cache) == corpus and marker.stat().st_mtime_ns == before  # idempotent
    wn = wordnet_reader(wordnet_cache)
    assert wn.get_version() == "3.0"
    assert "large" in {lemma.name() for s in wn.synsets("big") for lemma in s.lemmas()}


def test_missing_wordnet_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MEDHALL_WORDNET_DIR", str(tmp_path))
    with pytest.raises(WordNetMissing, match="apt-get install") as err:
        find_wordnet_source()
    assert "data.noun" in str(err.value) and INSTALL_HINT in str(err.value)
    with pytest.raises(WordNetMissing):
        ensure_wordnet(tmp_path / "cache")
