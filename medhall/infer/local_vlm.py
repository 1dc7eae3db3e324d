"""Answers from a local transformers VLM: the model under test, batched, greedy.

:class:`LocalVLM` loads a checkpoint (a directory or, where a hub is reachable, a hub name)
with the processor from :func:`medhall.infer.processors.load_processor` and
``AutoModelForImageTextToText``, so any family transformers maps to the image-text-to-text
task works the same way; tested offline: LLaVA (llava-hf layout, which includes the
LLaVA-Med conversion), Qwen2-VL, Qwen2.5-VL and InternVL (HF layout). Each question becomes
one user turn, ``[{"type": "image"}, {"type": "text", "text": question}]`` (after an optional
system turn), rendered by the checkpoint's own chat template. Batches are left-padded and
decoded greedily; only the new tokens are decoded. A LoRA adapter (peft) is merged on top
when ``adapter_path`` is given.

Failures stay with their item: an image that is missing or cannot be decoded is that item's
error; when a whole batch fails (a processor or generation error), its items are retried
one by one so that only the culprit fails.

torch, transformers and peft are imported when the model is first loaded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medhall.ids import sha256_hex
from medhall.infer.base import Answer, Query

if TYPE_CHECKING:
    from PIL import Image

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class _Prompt:
    """A query ready for the processor: its conversation and whether it carries an image."""

    index: int
    conversation: list[dict[str, Any]]
    has_image: bool


@dataclass(frozen=True)
class _Generated:
    """One decoded continuation."""

    text: str
    new_tokens: int
    truncated: bool


class LocalVLM:
    """A local image-text-to-text model answering :class:`~medhall.infer.base.Query` items.

    Args:
        model_path: checkpoint directory (or hub name where a hub or cache is reachable).
        dtype: ``auto`` (the checkpoint's dtype on a GPU, float32 on the CPU), ``float32``,
            ``bfloat16`` or ``float16``.
        device: ``auto`` (``cuda`` when available, else ``cpu``), ``cpu``, ``cuda`` or
            ``cuda:N``.
        batch_size: queries per ``generate`` call.
        max_new_tokens: generation limit; an answer that reaches it has ``truncated`` in its meta.
        adapter_path: a peft LoRA adapter directory, merged into the weights after loading.
        system_prompt: an optional system turn before every question.
        text_only: ask every question without its image (a language-prior baseline).
        chat_template: a jinja chat template (text, or a path to a ``.jinja`` file) replacing
            the checkpoint's; needed for a conversion that ships none.
        name: model name for the predictions table (default: the checkpoint's directory
            name, ``+adapter`` name when an adapter is given).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 8,
        max_new_tokens: int = 256,
        adapter_path: str | Path | None = None,
        system_prompt: str | None = None,
        text_only: bool = False,
        chat_template: str | Path | None = None,
        name: str | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
        if device not in DEVICES and not device.startswith("cuda:"):
            raise ValueError(f"device must be one of {DEVICES} or cuda:N, not {device!r}")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be at least 1")
        self.model_path = str(model_path)
        self.dtype = dtype
        self.device = device
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.adapter_path = str(adapter_path) if adapter_path is not None else None
        self.system_prompt = system_prompt
        self.text_only = text_only
        self.chat_template = read_template(chat_template) if chat_template is not None else None
        self.name = name or default_name(model_path, adapter_path)
        self._processor: Any = None
        self._model: Any = None
        self._placeholders: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"LocalVLM({self.model_path!r}, dtype={self.dtype!r}, device={self.device!r})"

    def settings(self) -> dict[str, Any]:
        """What determines the answers (for run ids): not batch size or device."""
        return {
            "runner": "local_vlm",
            "model": self.name,
            "model_path": self.model_path,
            "adapter_path": self.adapter_path,
            "dtype": self.dtype,
            "max_new_tokens": self.max_new_tokens,
            "system_prompt": self.system_prompt,
            "text_only": self.text_only,
            "chat_template_sha256": sha256_hex(self.chat_template)[:16] if self.chat_template else None,
            "decoding": "greedy",
        }

    # -- loading --------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The loaded model (loads on first use)."""
        self.load()
        return self._model

    @property
    def processor(self) -> Any:
        """The loaded processor (loads on first use)."""
        self.load()
        return self._processor

    def load(self) -> LocalVLM:
        """Load processor, model and adapter once; later calls do nothing."""
        if self._model is None:
            self._processor = self._load_processor()
            self._model = self._load_model()
            self._placeholders = placeholder_strings(self._processor)
        return self

    def unload(self) -> None:
        """Drop the model and processor (and the GPU cache), e.g. before loading the next model."""
        on_gpu = self._model is not None and self._model.device.type == "cuda"
        self._model = self._processor = None
        if on_gpu:
            import torch

            torch.cuda.empty_cache()

    def _load_processor(self) -> Any:
        from medhall.infer.processors import load_processor

        check_checkpoint(self.model_path)
        if self.adapter_path is not None and not Path(self.adapter_path).is_dir():
            raise FileNotFoundError(f"no adapter at {self.adapter_path}: give the adapter directory a training "
                                    "run wrote (<home>/train/<train id>/adapter)")
        processor = load_processor(self.model_path)
        if self.chat_template is not None:
            processor.chat_template = self.chat_template
        if not processor.chat_template:
            raise ValueError(
                f"{self.model_path} has no chat template: pass chat_template= (jinja text or file)"
            )
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return processor

    def _load_model(self) -> Any:
        from transformers import AutoModelForImageTextToText

        device = resolve_device(self.device)
        model = AutoModelForImageTextToText.from_pretrained(
            self.model_path, dtype=resolve_dtype(self.dtype, device), device_map=device
        )
        if self.adapter_path is not None:
            model = merge_adapter(model, self.adapter_path)
        return model.eval()

    # -- answering ------------------------------------------------------------------------

    def answer(self, items: Sequence[Query]) -> list[Answer]:
        """One answer per item, in order, ``batch_size`` items per generate call."""
        if not items:
            return []
        from medhall.llm.progress import ItemProgress

        self.load()
        answers: list[Answer] = []
        with ItemProgress(len(items), f"answering ({self.name})", unit="answers") as bar:
            for start in range(0, len(items), self.batch_size):
                batch = items[start : start + self.batch_size]
                answers.extend(self._answer_batch(batch))
                bar.advance(len(batch))
        return answers

    def _answer_batch(self, batch: Sequence[Query]) -> list[Answer]:
        """Answer one batch: prepare each item, then generate per group (with / without image)."""
        results: list[Answer | None] = [None] * len(batch)
        prompts: list[_Prompt] = []
        for index, query in enumerate(batch):
            started = time.perf_counter()
            try:
                prompts.append(self._prompt(index, query))
            except Exception as error:  # noqa: BLE001 - one bad item never stops the batch
                results[index] = Answer.failure(query.qa_id, error, time.perf_counter() - started)
        for group in _groups(prompts):
            for prompt, answer in zip(group, self._answer_group(batch, group), strict=True):
                results[prompt.index] = answer
        assert all(a is not None for a in results), "every item is answered or failed"
        return results  # type: ignore[return-value]

    def _answer_group(self, batch: Sequence[Query], group: list[_Prompt]) -> list[Answer]:
        """Generate for ``group`` at once; when that fails, one by one so only culprits fail."""
        started = time.perf_counter()
        try:
            generated = self._generate([p.conversation for p in group])
        except Exception as error:  # noqa: BLE001
            if len(group) == 1:
                return [Answer.failure(batch[group[0].index].qa_id, error,
                                       time.perf_counter() - started)]
            return [a for p in group for a in self._answer_group(batch, [p])]
        share = (time.perf_counter() - started) / len(group)
        return [
            Answer(
                qa_id=batch[p.index].qa_id,
                text=g.text,
                latency_s=share,
                meta={"new_tokens": g.new_tokens, "truncated": g.truncated,
                      "batch_size": len(group), "image": p.has_image},
            )
            for p, g in zip(group, generated, strict=True)
        ]

    def _prompt(self, index: int, query: Query) -> _Prompt:
        """The conversation for ``query`` (decoding its image; raises when that fails)."""
        image = None if self.text_only else open_image(query.image)
        content: list[dict[str, Any]] = []
        if image is not None:
            content.append({"type": "image", "image": image})
        content.append({"type": "text", "text": self._clean(query.question)})
        conversation: list[dict[str, Any]] = []
        if self.system_prompt:
            conversation.append(
                {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}
            )
        conversation.append({"role": "user", "content": content})
        return _Prompt(index=index, conversation=conversation, has_image=image is not None)

    def _clean(self, question: str) -> str:
        """The question without image placeholders (``<image>`` from LLaVA-style data)."""
        for placeholder in self._placeholders:
            question = question.replace(placeholder, "")
        return question.strip()

    def _generate(self, conversations: list[list[dict[str, Any]]]) -> list[_Generated]:
        """Greedy generation for a left-padded batch; only the new tokens are decoded."""
        import torch

        model = self._model
        inputs = self._processor.apply_chat_template(
            conversations,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
        ).to(model.device, dtype=model.dtype)
        config = self._generation_config()
        with torch.inference_mode():
            output = model.generate(**inputs, generation_config=config)
        new = output[:, inputs["input_ids"].shape[1] :]
        texts = self._processor.batch_decode(new, skip_special_tokens=True)
        return [
            _continuation(text, row.tolist(), config.eos_token_id)
            for text, row in zip(texts, new, strict=True)
        ]

    def _generation_config(self) -> Any:
        """Greedy decoding, this runner's token limit, the checkpoint's end-of-sequence ids."""
        from transformers import GenerationConfig

        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = self._processor.tokenizer.eos_token_id
        return GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=self._processor.tokenizer.pad_token_id,
        )


def _groups(prompts: list[_Prompt]) -> Iterator[list[_Prompt]]:
    """Prompts with images, then prompts without: a processor call takes one kind."""
    for has_image in (True, False):
        group = [p for p in prompts if p.has_image is has_image]
        if group:
            yield group


def _continuation(text: str, tokens: list[int], eos: int | list[int] | None) -> _Generated:
    """Count the new tokens up to and including end-of-sequence; no end means truncated.

    Padding only follows an end-of-sequence token, so a row without one is all new tokens.
    """
    stops = set(eos if isinstance(eos, list) else [eos]) - {None}
    for position, token in enumerate(tokens):
        if token in stops:
            return _Generated(text=text.strip(), new_tokens=position + 1, truncated=False)
    return _Generated(text=text.strip(), new_tokens=len(tokens), truncated=True)


def open_image(image: str | Path | Image.Image | None) -> Image.Image | None:
    """``None``, or the image as RGB PIL (paths through :func:`medhall.images.load_rgb`)."""
    if image is None:
        return None
    if isinstance(image, str | Path):
        from medhall.images import load_rgb

        return load_rgb(image)
    return image.convert("RGB")


def read_template(template: str | Path) -> str:
    """A chat template given as text, or read from a ``.jinja`` / ``.txt`` file."""
    if isinstance(template, Path) or (
        str(template).endswith((".jinja", ".txt")) and Path(template).is_file()
    ):
        return Path(template).read_text(encoding="utf-8")
    return str(template)


def placeholder_strings(processor: Any) -> tuple[str, ...]:
    """Image/video placeholder tokens of ``processor`` that must not appear in a question."""
    names = ("image_token", "video_token", "start_image_token", "end_image_token")
    found = {getattr(processor, n, None) for n in names} | {"<image>"}
    return tuple(sorted(s for s in found if isinstance(s, str) and s))


def check_checkpoint(path: str) -> None:
    """Raise a short ``FileNotFoundError`` for a local path with no checkpoint (a hub name,
    ``org/name``, is left to the hub)."""
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path
    if looks_local and not (Path(path).expanduser() / "config.json").is_file():
        what = "no such directory" if not Path(path).expanduser().exists() else "no config.json there"
        raise FileNotFoundError(f"no checkpoint at {path} ({what}): give a model directory in Hugging Face "
                                "format (config.json and weights), or a hub name where the hub is reachable")


#: The metadata medhall writes beside an adapter it trained (:mod:`medhall.train.model`).
ADAPTER_META = "medhall_adapter.json"


def default_name(model_path: str | Path, adapter_path: str | Path | None) -> str:
    """The checkpoint's last path part, ``+<adapter>`` when an adapter is applied: for one medhall
    trained, its method, subset and run (``+sft-full-8a6c09e9``: every such folder is called
    ``adapter``), else the adapter folder's name."""
    name = Path(str(model_path).rstrip("/")).name
    if not adapter_path:
        return name
    meta_path = Path(adapter_path) / ADAPTER_META
    try:
        meta = json.loads(meta_path.read_text())
        subset = (meta.get("data") or {}).get("subset") or "data"
        return f"{name}+{meta['method']}-{subset}-{str(meta['train_id']).removeprefix('trn_')[:8]}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{name}+{Path(str(adapter_path).rstrip('/')).name}"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> Any:
    """The ``dtype`` argument of ``from_pretrained``: ``auto`` means float32 on the CPU."""
    import torch

    if dtype == "auto":
        return torch.float32 if device == "cpu" else "auto"
    return getattr(torch, dtype)


def merge_adapter(model: Any, adapter_path: str) -> Any:
    """``model`` with the peft (LoRA) adapter at ``adapter_path`` merged into its weights."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_path).merge_and_unload()


__all__ = ["DTYPES", "DEVICES", "LocalVLM", "default_name", "open_image"]
