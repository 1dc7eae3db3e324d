"""Fixtures of the zero-shot VQA flow tests: three small benchmarks in their published
formats (with Pillow-made images), a tiny LLaVA checkpoint and a LoRA adapter for it, and a
temporary Prefect server (copied from tests/flows/conftest.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image


def _image(path: Path, seed: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.effect_noise((32 + 4 * seed, 32), 20 + 10 * seed).convert("RGB").save(path)
    return path.name


def _vqa_rad(root: Path) -> Path:
    """VQA-RAD's public JSON: two closed and one open test question, one whose image is
    missing, one training question (skipped) and one without a question (a problem)."""
    images = root / "VQA_RAD Image Folder"
    _image(images / "synpic1.jpg", 0)
    _image(images / "synpic2.jpg", 1)
    rows = [
        {
            "qid": 101,
            "phrase_type": "test_freeform",
            "image_name": "synpic1.jpg",
            "question": "Is there a fracture?",
            "answer": "No",
            "answer_type": "CLOSED",
        },
        {
            "qid": 102,
            "phrase_type": "test_para",
            "image_name": "synpic2.jpg",
            "question": "Which organ is shown?",
            "answer": "liver",
            "answer_type": "OPEN",
        },
        {
            "qid": 103,
            "phrase_type": "test_freeform",
            "image_name": "synpic2.jpg",
            "question": "Is the liver enlarged?",
            "answer": "yes",
            "answer_type": "CLOSED",
        },
        {
            "qid": 104,
            "phrase_type": "test_freeform",
            "image_name": "synpic_missing.jpg",
            "question": "Is this a CT?",
            "answer": "yes",
            "answer_type": "CLOSED",
        },
        {
            "qid": 105,
            "phrase_type": "freeform",
            "image_name": "synpic1.jpg",
            "question": "Is this a PA film?",
            "answer": "no",
            "answer_type": "CLOSED",
        },
        {
            "qid": 106,
            "phrase_type": "test_freeform",
            "image_name": "synpic1.jpg",
            "question": "",
            "answer": "lung",
            "answer_type": "OPEN",
        },
    ]
    path = root / "VQA_RAD Dataset Public.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _slake(root: Path) -> Path:
    """SLAKE's test.json: an open and a closed English question and a Chinese one (skipped)."""
    _image(root / "imgs" / "xmlab1" / "source.jpg", 2)
    base = {
        "img_id": 1,
        "img_name": "xmlab1/source.jpg",
        "location": "Abdomen",
        "modality": "CT",
        "base_type": "vqa",
        "content_type": "Organ",
    }
    rows = [
        {
            **base,
            "qid": 1,
            "question": "Which organ is abnormal?",
            "answer": "Liver",
            "q_lang": "en",
            "answer_type": "OPEN",
        },
        {
            **base,
            "qid": 2,
            "question": "Does the picture contain a kidney?",
            "answer": "Yes",
            "q_lang": "en",
            "answer_type": "CLOSED",
        },
        {
            **base,
            "qid": 3,
            "question": "图片中包含肝脏吗?",
            "answer": "是",
            "q_lang": "zh",
            "answer_type": "CLOSED",
        },
    ]
    path = root / "test.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def _pmc_vqa(root: Path) -> Path:
    """PMC-VQA's test_clean.csv: two multiple-choice questions."""
    images = root / "images"
    header = [
        "Figure_path",
        "Question",
        "Answer",
        "Choice A",
        "Choice B",
        "Choice C",
        "Choice D",
        "Answer_label",
    ]
    rows = [
        [
            _image(images / "PMC1_F1.jpg", 3),
            "What imaging modality was used?",
            "CT scan ",
            "A:CT scan ",
            "B:MRI ",
            "C:X-ray ",
            "D:Ultrasound ",
            "A",
        ],
        [
            _image(images / "PMC2_F2.jpg", 4),
            "Which side shows the lesion?",
            "Right ",
            "A:Left ",
            "B:Right ",
            "C:Both ",
            "D:Neither ",
            "B",
        ],
    ]
    path = root / "test_clean.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


@pytest.fixture
def benchmarks(tmp_path: Path) -> list[dict[str, Any]]:
    """Benchmark specs of the three fixture benchmarks (fresh files per test)."""
    vqa_rad = _vqa_rad(tmp_path / "vqa_rad")
    return [
        {
            "name": "VQA-RAD",
            "path": str(vqa_rad),
            "image_root": str(vqa_rad.parent / "VQA_RAD Image Folder"),
        },
        {
            "name": "slake",
            "path": str(_slake(tmp_path / "Slake1.0")),
            "image_root": str(tmp_path / "Slake1.0" / "imgs"),
        },
        {
            "name": "pmc_vqa",
            "path": str(_pmc_vqa(tmp_path / "pmc_vqa")),
            "image_root": str(tmp_path / "pmc_vqa" / "images"),
        },
    ]


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny LLaVA checkpoint and a LoRA adapter for it with non-zero ``lora_B``."""
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from medhall.infer.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny-vqa")
    base_dir = build_tiny("llava", root / "llava")
    base = AutoModelForImageTextToText.from_pretrained(base_dir)
    torch.manual_seed(0)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(base, lora).save_pretrained(root / "adapter")
    return {"base": base_dir, "adapter": root / "adapter"}


@pytest.fixture
def models(tiny_llava: dict[str, Path]) -> list[dict[str, Any]]:
    """The tiny base model and its fine-tuned (LoRA) version."""
    settings = {"max_new_tokens": 4, "batch_size": 4}
    return [
        {
            "name": "tiny-base",
            "kind": "local_vlm",
            "path": str(tiny_llava["base"]),
            "settings": settings,
        },
        {
            "name": "tiny-tuned",
            "kind": "local_vlm",
            "path": str(tiny_llava["base"]),
            "adapter": str(tiny_llava["adapter"]),
            "base": "tiny-base",
            "settings": settings,
        },
    ]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    import os

    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # the heartbeat thread costs ~1 s at the end of every flow run (../shared/OFFLINE.md)
    with (
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield


@pytest.fixture
def flow_home(prefect_server, home, monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(tmp_path / "results"))
    return home
