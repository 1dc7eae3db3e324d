"""The tiny checkpoints and the image-only processors that load them without torchvision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medhall.infer.processors import (
    image_only_processor_class,
    load_processor,
    torchvision_available,
)
from medhall.infer.tiny import build_tiny

transformers = pytest.importorskip("transformers")

STOCK_PROCESSORS = {
    "llava": "LlavaProcessor",
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "internvl": "InternVLProcessor",
}


def test_building_is_deterministic(tmp_path: Path) -> None:
    weights = [
        (build_tiny("qwen2_vl", tmp_path / name, seed=seed) / "model.safetensors").read_bytes()
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    assert weights[0] == weights[1] != weights[2]
    with pytest.raises(ValueError, match="unknown family"):
        build_tiny("blip", tmp_path / "x")


@pytest.mark.parametrize("family", sorted(STOCK_PROCESSORS))
def test_checkpoints_have_the_hub_layout(family: str, tiny_models: dict[str, Path]) -> None:
    """Saved like a hub checkpoint: the stock processor class, a chat template, a tokenizer."""
    files = {p.name for p in tiny_models[family].iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "chat_template.jinja",
            "tokenizer.json", "tokenizer_config.json"} <= files
    saved = json.loads((tiny_models[family] / "processor_config.json").read_text())
    assert saved["processor_class"] == STOCK_PROCESSORS[family]
    processor = load_processor(tiny_models[family])
    assert type(processor).__name__ == STOCK_PROCESSORS[family] and processor.chat_template


def test_image_only_processor_keeps_saved_settings(tiny_models: dict[str, Path]) -> None:
    processor = load_processor(tiny_models["internvl"], image_only=True)
    assert processor.image_seq_length == 1  # from processor_config.json, not the default 256
    assert "video_processor" not in type(processor).get_attributes()
    assert getattr(processor, "video_processor", None) is None
    assert type(processor).__name__ == "InternVLProcessor"


def test_only_video_capable_processors_are_wrapped() -> None:
    assert image_only_processor_class(transformers.LlavaProcessor) is transformers.LlavaProcessor
    qwen = image_only_processor_class(transformers.Qwen2VLProcessor)
    assert issubclass(qwen, transformers.Qwen2VLProcessor) and qwen.__name__ == "Qwen2VLProcessor"
    assert image_only_processor_class(transformers.Qwen2VLProcessor) is qwen  # made once


@pytest.mark.skipif(torchvision_available(), reason="the stock processor loads with torchvision")
def test_stock_auto_processor_needs_torchvision(tiny_models: dict[str, Path]) -> None:
    """Why the image-only path exists: without torchvision the stock loader fails."""
    with pytest.raises(Exception, match="(?i)video"):
        transformers.AutoProcessor.from_pretrained(tiny_models["qwen2_vl"])
