"""Fixtures for the offline generator: the real MedHallTune release captions as an images table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medhall.generate import OfflineGenerator, corpus_statistics
from medhall.ids import image_id
from medhall.sources.infer import resolve_body_part, resolve_modality

RELEASE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "medhalltune"
VAL_FILES = ("val_positive_qa-filtered.jsonl", "val_negative_qa-filtered.jsonl")


@pytest.fixture(scope="session")
def release_images() -> list[dict]:
    """One images row per distinct image of the validation files (their real PubMed captions)."""
    if not all((RELEASE / f).is_file() for f in VAL_FILES):
        pytest.skip(
            f"{RELEASE} lacks {VAL_FILES} (a clone without ../shared): these tests need the real captions"
        )
    captions: dict[str, str] = {}
    for name in VAL_FILES:
        for line in (RELEASE / name).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            captions.setdefault(record["image"], record["fig_caption"])
    return [
        {
            "image_id": image_id(ref=ref),
            "dataset": "medhalltune-val",
            "caption": caption,
            "modality": resolve_modality(None, None, caption)[0],
            "body_part": resolve_body_part(None, None, caption)[0],
        }  # fmt: skip
        for ref, caption in captions.items()
    ]


@pytest.fixture(scope="session")
def release_stats(release_images):
    return corpus_statistics(i["caption"] for i in release_images)


@pytest.fixture(scope="session")
def release_table(release_images, release_stats):
    """The offline generator's output on the release captions (default config)."""
    return OfflineGenerator().generate(release_images, release_stats)
