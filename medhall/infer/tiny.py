"""Tiny random-weight VLM checkpoints, built offline in about a second, for tests and demos.

No VLM weights ship on PyPI, so the real loading code (``from_pretrained`` on a directory)
is exercised on checkpoints made here: tiny configs of the real architectures (hidden size
32, one layer, a 28-pixel vision tower), a byte-level BPE tokenizer trained in milliseconds
on a few medical sentences with the special tokens the family needs, the family's chat
template, and the processor, all written with ``save_pretrained`` in the layout of a hub
checkpoint. Building is deterministic: the same ``seed`` writes the same weights.

The answers of these models are random byte strings; they test plumbing (templates, image
tokens, batching, padding, adapters, dtypes), not quality.

Families: ``llava`` (llava-hf layout: CLIP vision + Llama text), ``qwen2_vl``,
``qwen2_5_vl`` and ``internvl`` (HF layout: InternViT + Qwen2 text).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Text the tiny tokenizers are trained on (their merges make word-like tokens).
CORPUS: tuple[str, ...] = (
    "The chest radiograph shows no acute cardiopulmonary abnormality.",
    "Axial CT of the abdomen demonstrates a hypodense lesion in the liver.",
    "MRI of the brain reveals a hyperintense signal in the left temporal lobe.",
    "The fundus photograph shows the optic disc and retinal vessels.",
    "Histology shows cells stained with hematoxylin and eosin.",
    "Is there a fracture? There is no evidence of a fracture or a mass.",
    "What is the modality of this image? This is an ultrasound image of the kidney.",
)
VOCAB_SIZE = 512
HIDDEN = 32
IMAGE_SIZE = 28
PATCH = 14
#: Weight init spread: larger than the usual 0.02 so that answers depend on the prompt.
INIT_RANGE = 0.5

#: Chat templates, jinja. LLaVA-1.5 style ("USER: <image>\n... ASSISTANT:") and ChatML.
LLAVA_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['content'] is string %}{% set parts = [{'type': 'text', 'text': m['content']}] %}"
    "{% else %}{% set parts = m['content'] %}{% endif %}"
    "{% if m['role'] == 'system' %}{% for c in parts %}{{ c['text'] }}{% endfor %} "
    "{% elif m['role'] == 'user' %}USER: {% for c in parts %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %} "
    "{% else %}ASSISTANT: {% for c in parts %}{{ c['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def chatml_template(image_placeholder: str) -> str:
    """A ChatML template (Qwen, InternVL) that writes ``image_placeholder`` for each image."""
    return (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}" + image_placeholder +
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
        "{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global generator seeded inside the block and restored after it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def train_tokenizer(
    specials: Sequence[str],
    *,
    eos: str,
    pad: str,
    bos: str | None = None,
    named_tokens: Mapping[str, str] | None = None,
) -> Any:
    """A byte-level BPE tokenizer trained on :data:`CORPUS`, special tokens first (ids 0, 1, ...).

    ``named_tokens`` become tokenizer attributes (``image_token`` -> ``tokenizer.image_token``
    and ``tokenizer.image_token_id``), as hub tokenizers declare them.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens=dict(named_tokens or {}),
        model_max_length=4096,
    )


def _text_config(tokenizer: Any, eos: str, **extra: Any) -> dict[str, Any]:
    """Common tiny decoder settings (one layer, hidden 32, two heads)."""
    vocab = tokenizer.get_vocab()
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": vocab[eos],
        "initializer_range": INIT_RANGE,
        **extra,
    }


def _save(out_dir: str | Path, model_cls: type, config: Any, processor: Any, seed: int) -> Path:
    """Build ``model_cls(config)`` with seeded random weights; save it and its processor."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with seeded(seed):
        model = model_cls(config).eval()
    model.generation_config.pad_token_id = config.get_text_config().pad_token_id
    model.generation_config.eos_token_id = config.get_text_config().eos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_llava(out_dir: str | Path, *, seed: int = 0) -> Path:
    """A tiny ``LlavaForConditionalGeneration`` (CLIP vision + Llama text) in llava-hf layout."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = train_tokenizer(
        ("<pad>", "<s>", "</s>", "<image>"), bos="<s>", eos="</s>", pad="<pad>",
        named_tokens={"image_token": "<image>"},
    )
    vision = CLIPVisionConfig(
        hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=1,
        num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=HIDDEN,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(**_text_config(tokenizer, "</s>")),
        image_token_id=tokenizer.image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return _save(out_dir, LlavaForConditionalGeneration, config, processor, seed)


QWEN_SPECIALS = (*CHATML_SPECIALS, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def _qwen_vision_config(variant: str) -> dict[str, Any]:
    """Vision tower settings: Qwen2-VL and Qwen2.5-VL name their widths differently."""
    common = {"depth": 1, "num_heads": 2, "patch_size": PATCH, "spatial_merge_size": 2,
              "temporal_patch_size": 2}
    if variant == "qwen2_vl":
        return {**common, "embed_dim": HIDDEN, "hidden_size": HIDDEN, "mlp_ratio": 2}
    return {**common, "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN,
            "out_hidden_size": HIDDEN, "window_size": 2 * PATCH, "fullatt_block_indexes": [0]}


def build_tiny_qwen2_vl(out_dir: str | Path, *, seed: int = 0, variant: str = "qwen2_vl") -> Path:
    """A tiny Qwen2-VL (``variant="qwen2_vl"``) or Qwen2.5-VL (``"qwen2_5_vl"``) checkpoint.

    Images are resized to between 28x28 and 56x56 pixels: one to four image tokens.
    """
    import transformers
    from transformers import Qwen2VLImageProcessorPil

    from medhall.infer.processors import image_only_processor_class

    prefix = {"qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2_5_VL"}[variant]
    tokenizer = train_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>")
    vocab = tokenizer.get_vocab()
    head_dim = HIDDEN // 2
    rope = {"rope_type": "default", "rope_theta": 10000.0,
            "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]}
    config = getattr(transformers, f"{prefix}Config")(
        text_config=_text_config(tokenizer, "<|im_end|>", rope_parameters=rope),
        vision_config=_qwen_vision_config(variant),
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=IMAGE_SIZE**2, max_pixels=(2 * IMAGE_SIZE) ** 2, patch_size=PATCH,
        merge_size=2, temporal_patch_size=2,
    )
    processor_cls = image_only_processor_class(getattr(transformers, f"{prefix}Processor"))
    processor = processor_cls(
        image_processor=image_processor, tokenizer=tokenizer,
        chat_template=chatml_template("<|vision_start|><|image_pad|><|vision_end|>"),
    )
    model_cls = getattr(transformers, f"{prefix}ForConditionalGeneration")
    return _save(out_dir, model_cls, config, processor, seed)


def build_tiny_qwen2_5_vl(out_dir: str | Path, *, seed: int = 0) -> Path:
    """A tiny Qwen2.5-VL checkpoint (see :func:`build_tiny_qwen2_vl`)."""
    return build_tiny_qwen2_vl(out_dir, seed=seed, variant="qwen2_5_vl")


INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


def build_tiny_internvl(out_dir: str | Path, *, seed: int = 0) -> Path:
    """A tiny ``InternVLForConditionalGeneration`` (InternVL3-hf layout: InternViT + Qwen2 text).

    A 28-pixel tile of 2x2 patches pixel-shuffles (ratio 0.5) to one image token; an image is
    cut into at most two tiles.
    """
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
    )

    from medhall.infer.processors import image_only_processor_class

    tokenizer = train_tokenizer(
        (*CHATML_SPECIALS, *INTERNVL_TOKENS.values()), eos="<|im_end|>", pad="<|endoftext|>",
        named_tokens=INTERNVL_TOKENS,
    )
    seq_length = (IMAGE_SIZE // PATCH) ** 2 // 4
    config = InternVLConfig(
        text_config={"model_type": "qwen2", **_text_config(tokenizer, "<|im_end|>")},
        vision_config={"hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN,
                       "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": IMAGE_SIZE, "patch_size": PATCH},
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=seq_length,
        downsample_ratio=0.5,
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, crop_to_patches=True, max_patches=2
    )
    processor = image_only_processor_class(InternVLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=seq_length,
        chat_template=chatml_template("<IMG_CONTEXT>\n"),
    )
    return _save(out_dir, InternVLForConditionalGeneration, config, processor, seed)


#: Family name -> builder(out_dir, seed=...).
BUILDERS: dict[str, Callable[..., Path]] = {
    "llava": build_tiny_llava,
    "qwen2_vl": build_tiny_qwen2_vl,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "internvl": build_tiny_internvl,
}


def build_tiny(family: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Build the tiny checkpoint of ``family`` (a key of :data:`BUILDERS`) into ``out_dir``."""
    try:
        builder = BUILDERS[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(BUILDERS)}") from None
    return builder(out_dir, seed=seed)


__all__ = [
    "BUILDERS",
    "build_tiny",
    "build_tiny_internvl",
    "build_tiny_llava",
    "build_tiny_qwen2_5_vl",
    "build_tiny_qwen2_vl",
    "chatml_template",
    "train_tokenizer",
]
