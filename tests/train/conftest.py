"""Fixtures of the training tests: tiny random-weight VLMs built from configs (once a session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """family -> a tiny checkpoint directory (llava-hf layout and Qwen2-VL)."""
    pytest.importorskip("peft")
    from medhall.infer.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny-bases")
    return {fam: str(build_tiny(fam, root / fam)) for fam in ("llava", "qwen2_vl")}


@pytest.fixture
def image_file(tmp_path: Path) -> str:
    from PIL import Image

    path = tmp_path / "img.png"
    Image.new("RGB", (40, 32), (180, 40, 90)).save(path)
    return str(path)
