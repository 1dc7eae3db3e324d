"""The base model, its processor and the LoRA adapter; the adapter's metadata; merging.

Models load the way the evaluation's runners load them (:func:`medhall.infer.processors.
load_processor`, ``AutoModelForImageTextToText``), so what trains is what is evaluated.
``tiny:llava`` / ``tiny:qwen2-vl`` build a tiny random-weight model from config
(:func:`medhall.infer.tiny.build_tiny`) under ``<home>/models/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medhall.infer.local_vlm import ADAPTER_META
from medhall.train.config import TrainConfig

#: Families medhall trains, and the vision-language projector of each (trained in full with
#: ``train_projector``; peft saves it with the adapter).
PROJECTORS: dict[str, str] = {
    "llava": "multi_modal_projector",
    "qwen2_vl": "merger",
    "qwen2_5_vl": "merger",
    "internvl": "multi_modal_projector",
}
#: The vision tower of each family (trained in full when ``freeze_vision`` is false; Qwen's
#: ``visual`` holds its ``merger`` projector, so it is then trained with it).
VISION_TOWERS: dict[str, str] = {
    "llava": "vision_tower",
    "qwen2_vl": "visual",
    "qwen2_5_vl": "visual",
    "internvl": "vision_tower",
}
TINY = {"llava": "llava", "qwen2-vl": "qwen2_vl", "qwen2_vl": "qwen2_vl", "qwen2.5-vl": "qwen2_5_vl",
        "qwen2_5_vl": "qwen2_5_vl", "internvl": "internvl"}


class ModelError(ValueError):
    """A base model that cannot be trained as asked, explained."""


def resolve_base(base: str, home: Path) -> str:
    """A checkpoint path or hub name; ``tiny:<family>`` builds (once) and returns a tiny model."""
    if not base.startswith("tiny:"):
        return base
    family = TINY.get(base.removeprefix("tiny:").lower())
    if family is None:
        raise ModelError(f"unknown tiny model {base!r}; use one of: {', '.join('tiny:' + k for k in ('llava', 'qwen2-vl', 'qwen2.5-vl', 'internvl'))}")
    out = home / "models" / f"tiny-{family}"
    if not (out / "config.json").exists():
        import os
        import shutil
        import tempfile

        from medhall.infer.tiny import build_tiny

        # built aside and renamed into place: processes of one launch may all get here at once
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tiny-{family}-", dir=out.parent))
        build_tiny(family, tmp / "model")
        try:
            os.rename(tmp / "model", out)
        except OSError:  # another process renamed its copy first
            if not (out / "config.json").exists():
                raise
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def family_of(path: str) -> str:
    """The model family (``config.model_type``); raises for one medhall cannot train."""
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the base model's config at {path!r}: {str(e).splitlines()[0]}") from None
    if model_type not in PROJECTORS:
        raise ModelError(f"cannot train a {model_type!r} model; medhall trains: {', '.join(PROJECTORS)} "
                         "(llava-hf, Qwen2-VL, Qwen2.5-VL, InternVL in Hugging Face format)")
    return model_type


def base_identity(path: str) -> str:
    """What identifies the base: its files' listing (names, sizes, mtimes), or the hub name."""
    from medhall.ids import path_fingerprint

    return path_fingerprint(path)


def torch_dtype(precision: str, device: str) -> Any:
    import torch

    if precision == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def load_for_training(cfg: TrainConfig, path: str, family: str, device: str) -> tuple[Any, Any]:
    """(peft model with the LoRA adapter, processor). Weights load in fp32 for fp16 training
    (the trainer's mixed precision) and in the asked dtype otherwise."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from medhall.infer.processors import load_processor

    processor = load_processor(path)
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch_dtype(cfg.precision, device)
    import torch

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32 if dtype == torch.float16 else dtype)
    lora = cfg.lora.resolved()
    peft_cfg = LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=lora["target_modules"],
        modules_to_save=trained_in_full(cfg, family) or None, task_type="CAUSAL_LM",
    )
    # LoRA's A matrices start random: seed them with cfg.seed (the trainer seeds only after the
    # model is built), so a run is reproducible and 1 process or N start from the same weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = get_peft_model(model, peft_cfg)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return model, processor


def trained_in_full(cfg: TrainConfig, family: str) -> list[str]:
    """Modules trained in full beside the LoRA adapter (peft ``modules_to_save``): the projector
    (``train_projector``) and the vision tower (``freeze_vision=false``)."""
    full = [] if cfg.freeze_vision else [VISION_TOWERS[family]]
    inside = not cfg.freeze_vision and PROJECTORS[family] == "merger"  # Qwen: visual.merger
    if cfg.train_projector and not inside:
        full.append(PROJECTORS[family])
    return full


def write_metadata(adapter_dir: Path, meta: dict[str, Any]) -> Path:
    """``medhall_adapter.json`` beside the adapter: base identity, data, config, code version."""
    from medhall import __version__, atomic

    path = Path(adapter_dir) / ADAPTER_META
    atomic.write_bytes(path, json.dumps({**meta, "medhall_version": __version__}, indent=2, sort_keys=True).encode())
    return path


def read_metadata(adapter_dir: str | Path) -> dict[str, Any] | None:
    path = Path(adapter_dir) / ADAPTER_META
    return json.loads(path.read_text()) if path.exists() else None


def merge(base_path: str, adapter_dir: Path, out_dir: Path) -> Path:
    """The base with the adapter merged in, saved with its processor: a model the evaluation
    loads like any checkpoint (``medhall evaluate --model local_vlm --path OUT``)."""
    from transformers import AutoModelForImageTextToText

    from medhall.infer.local_vlm import merge_adapter
    from medhall.infer.processors import load_processor

    model = merge_adapter(AutoModelForImageTextToText.from_pretrained(base_path), str(adapter_dir))
    model.save_pretrained(out_dir)
    load_processor(base_path).save_pretrained(out_dir)
    return out_dir


__all__ = ["ADAPTER_META", "PROJECTORS", "VISION_TOWERS", "ModelError", "trained_in_full", "base_identity", "family_of", "load_for_training", "merge",
           "read_metadata", "resolve_base", "write_metadata"]
