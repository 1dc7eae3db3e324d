"""Fixtures of the inference tests: tiny checkpoints of every family, real medical images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from medhall.infer import Query

#: Sample-corpus entries that render fast from the core dependencies: two DICOM files, a PNG.
SAMPLE_IDS = ("s02-ct-head-skull-base", "s03-ct-perfusion-brain-rcbf", "s04-ct-thorax-vertebra")
QUESTIONS = (
    "What imaging modality is shown?",
    "Is there a fracture of the skull base in this image?",
    "<image>\nDescribe the main finding.",
)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny family built once per session (about 0.2 s in all after the imports)."""
    pytest.importorskip("transformers")
    from medhall.infer.tiny import BUILDERS, build_tiny

    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny(family, root / family) for family in BUILDERS}


@pytest.fixture(scope="session")
def image_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three real medical images as files (from the sample corpus; Pillow-made where absent)."""
    root = tmp_path_factory.mktemp("images")
    try:
        from medhall.sample import load_entries, render

        entries = {e["sample_id"]: e for e in load_entries()}
        rendered = [render(entries[sid]) for sid in SAMPLE_IDS]
        return [_write(root / f"{i}.{fmt.lower()}", data) for i, (data, fmt) in enumerate(rendered)]
    except Exception:  # noqa: BLE001 - the corpus needs optional packages; the tests do not
        return [_pillow_image(root / f"{i}.png", i) for i in range(len(SAMPLE_IDS))]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _pillow_image(path: Path, seed: int) -> Path:
    Image.effect_noise((48 + 8 * seed, 40), 30 + 10 * seed).convert("RGB").save(path)
    return path


@pytest.fixture(scope="session")
def queries(image_paths: list[Path]) -> list[Query]:
    """Three questions about three different images."""
    return [
        Query(qa_id=f"qa_{i:016x}", question=q, image=p)
        for i, (q, p) in enumerate(zip(QUESTIONS, image_paths, strict=True))
    ]


@pytest.fixture
def texts() -> Callable[[list], list]:
    """The answers' texts (or errors), for comparing runs."""
    return lambda answers: [a.text if a.ok else f"ERROR {a.error}" for a in answers]
