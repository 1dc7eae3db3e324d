"""What decides a training run: one pydantic model, every field with its help text.

A run is configured by :class:`TrainConfig`, from a YAML (or JSON) file and ``key=value``
overrides (:func:`load_config`; dotted keys reach nested models: ``lora.r=16``). LoRA comes in
presets (:data:`LORA_PRESETS`): ``llava`` is the LLaVA-1.5 LoRA recipe (r=128, alpha=256 on
the language model's linear layers, the projector trained in full), ``small`` a quick one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The language model's linear layers in every supported family (llava-hf, Qwen2-VL,
#: Qwen2.5-VL, InternVL-hf): attention and MLP projections under ``language_model``. The
#: vision tower's layers (CLIP ``q_proj``..., Qwen's ``qkv``) are outside this pattern.
LANGUAGE_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

LORA_PRESETS: dict[str, dict[str, Any]] = {
    "llava": {"r": 128, "alpha": 256, "dropout": 0.05, "target_modules": LANGUAGE_LINEAR},
    "small": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": LANGUAGE_LINEAR},
}


class LoRASettings(BaseModel):
    """The LoRA adapter (peft ``LoraConfig``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: Literal["llava", "small", "custom"] = Field(
        "llava", description="llava: r=128, alpha=256 (the LLaVA-1.5 LoRA recipe); small: r=8, alpha=16; "
        "custom: the fields below as given. A preset fills the fields you leave out.")
    r: int | None = Field(None, ge=1, description="LoRA rank (default from the preset).")
    alpha: int | None = Field(None, ge=1, description="LoRA alpha; the update is scaled by alpha / r (default from the preset).")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="Dropout on the LoRA input (default from the preset).")
    target_modules: str | list[str] | None = Field(
        None, description="Modules to adapt: a regex over module names or a list of name suffixes "
        "(default: the language model's linear layers).")

    def resolved(self) -> dict[str, Any]:
        """r, alpha, dropout and target_modules with the preset's defaults filled in."""
        base = LORA_PRESETS.get(self.preset, LORA_PRESETS["small"])
        given = {k: v for k, v in self.model_dump(exclude={"preset"}).items() if v is not None}
        if self.preset == "custom" and set(given) != {"r", "alpha", "dropout", "target_modules"}:
            missing = sorted({"r", "alpha", "dropout", "target_modules"} - set(given))
            raise ValueError(f"lora.preset=custom needs every field; missing: {', '.join(missing)}")
        return {**base, **given}


class TrainConfig(BaseModel):
    """Everything that decides a training run (recorded with the adapter and in ``train_runs``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- what to train on --------------------------------------------------------------------
    dataset: str = Field(..., description="A built dataset in the store (its train split), or a LLaVA JSON / "
                         "ShareGPT (LLaMA-Factory) JSON file made elsewhere.")
    subset: str = Field("full", description="Ablation subset of the build's train split: full (QC-filtered), "
                        "no_qc, positive_only, negative_only, frac_25, frac_50, frac_75, frac_100.")
    image_root: str | None = Field(None, description="Folder a file's relative image paths start from "
                                   "(default: the file's folder). Not used for store datasets.")
    pack_per_image: bool = Field(False, description="Pack every QA pair of one image into one multi-turn "
                                 "conversation (LLaVA's practice); off: one QA pair per example, as the paper.")
    # -- the model -----------------------------------------------------------------------------
    base: str = Field(..., description="Base model: a checkpoint directory, a hub name, or tiny:llava / "
                      "tiny:qwen2-vl (a tiny random-weight model built from config, for tests and dry runs).")
    method: Literal["sft", "dpo"] = Field("sft", description="sft: supervised LoRA fine-tuning (the paper); "
                                          "dpo: preference tuning on chosen/rejected answers to the negative questions.")
    lora: LoRASettings = Field(default_factory=LoRASettings, description="The LoRA adapter.")
    freeze_vision: bool = Field(True, description="Keep the vision tower frozen (the paper, LLaVA's recipe); false: "
                                "train it in full beside the adapter (saved with it; much larger).")
    train_projector: bool = Field(True, description="Train the vision-language projector in full (saved with the "
                                  "adapter), as LLaVA's LoRA recipe does; false: keep it frozen.")
    # -- optimisation --------------------------------------------------------------------------
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (LLaVA-1.5 LoRA: 2e-4).")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warm-up.")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Share of the steps spent warming up.")
    epochs: float = Field(3.0, gt=0, description="Passes over the data (the paper: 3).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run the epochs).")
    per_device_batch: int = Field(4, ge=1, description="Examples per device per forward pass.")
    grad_accum: int = Field(1, ge=1, description="Forward passes per optimizer step; the global batch is "
                            "per_device_batch x grad_accum x processes.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 where the GPU supports it, else fp32 (always fp32 on the CPU).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass "
                                         "(less memory, about a third more compute).")
    max_length: int = Field(2048, ge=16, description="Longest sequence in tokens (image tokens included).")
    overflow: Literal["truncate", "drop"] = Field(
        "truncate", description="A longer example: truncate its answers (never its image or question), or drop it. "
        "Either way it is counted and reported.")
    seed: int = Field(0, description="Seed of the data order, dropout and LoRA initialisation.")
    dpo_beta: float = Field(0.1, gt=0, description="DPO: strength of the pull towards the reference (the base).")
    # -- bookkeeping ---------------------------------------------------------------------------
    logging_steps: int = Field(1, ge=1, description="Record loss, learning rate, grad norm, tokens/s every N steps.")
    save_steps: int = Field(50, ge=1, description="Write a checkpoint every N steps (a killed run resumes from the last).")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    merge: bool = Field(False, description="Also write the base with the adapter merged in (a model the evaluation loads).")
    output_dir: str | None = Field(None, description="Where the run writes (default: <home>/train/<train id>).")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        self.lora.resolved()
        if self.method == "dpo" and self.pack_per_image:
            raise ValueError("pack_per_image applies to sft only: DPO pairs are one question each")
        return self

    def identity(self) -> dict[str, Any]:
        """What decides the trained weights (not where they are written, nor logging)."""
        return self.model_dump(mode="json", exclude={"output_dir", "logging_steps", "save_steps",
                                                     "save_total_limit", "merge"})


def _parse_value(text: str) -> Any:
    """A ``key=value`` override's value: JSON when it parses (numbers, true, null, lists), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with each ``key=value`` (dotted keys for nested fields) set."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value (e.g. lora.r=16)")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[leaf] = _parse_value(value.strip())
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **fields: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML/JSON file, then ``fields``, then ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        import yaml

        text = Path(path).read_text()
        loaded = yaml.safe_load(text) if Path(path).suffix in (".yaml", ".yml") else json.loads(text)
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a training config is a mapping of fields, not {type(loaded).__name__}")
        data.update(loaded)
    data.update({k: v for k, v in fields.items() if v is not None})
    return TrainConfig.model_validate(apply_overrides(data, overrides or []))


__all__ = ["LANGUAGE_LINEAR", "LORA_PRESETS", "LoRASettings", "TrainConfig", "apply_overrides", "load_config"]
