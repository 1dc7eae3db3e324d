"""Examples into model inputs: the model's own processor and chat template, loss on the
assistant's tokens only.

:class:`Encoder` renders an example's conversation with the processor's chat template and
finds each assistant turn by rendering the conversation up to it: the text of
``messages[:k]`` with the generation prompt is a prefix of the text through the assistant's
reply ``messages[:k+1]``, and what lies between is the reply (its end-of-turn token included).
The same texts go through the processor with the image, so image tokens expand the same way
in all of them; the token counts of the prefixes mark the spans. Labels are -100 everywhere
else (system, user turns, image tokens, template scaffolding). An example longer than
``max_length`` is truncated inside its answers or dropped (``overflow``); one whose image and
first question alone do not fit is always dropped. :class:`Collator` pads a batch on the right.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medhall.train.data import Example

IGNORE = -100
#: Per-token inputs padded along the sequence; every other tensor is concatenated on dim 0.
SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "token_type_ids")


class EncodeError(ValueError):
    """A chat template this encoder cannot split into turns, explained."""


@dataclass
class LengthReport:
    """What happened to examples over ``max_length`` (counted, never silent)."""

    truncated: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    longest: int = 0


class Encoder:
    """Encodes :class:`~medhall.train.data.Example` s for one processor."""

    def __init__(self, processor: Any, *, max_length: int = 2048, overflow: str = "truncate",
                 system_prompt: str | None = None) -> None:
        from medhall.infer.local_vlm import placeholder_strings

        if not getattr(processor, "chat_template", None):
            raise EncodeError("the processor has no chat template: the model cannot be trained with its own format")
        self.processor = processor
        self.max_length = max_length
        self.overflow = overflow
        self.system_prompt = system_prompt
        self._placeholders = placeholder_strings(processor)
        self.report = LengthReport()

    def messages(self, example: Example | Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """The conversation: the image with the first question, then the turns in order."""
        turns = [(t.question, t.answer) for t in example.turns] if isinstance(example, Example) else list(example)
        out: list[dict[str, Any]] = []
        if self.system_prompt:
            out.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        for i, (question, answer) in enumerate(turns):
            content = [{"type": "image"}] if i == 0 else []
            content.append({"type": "text", "text": self._clean(question)})
            out.append({"role": "user", "content": content})
            out.append({"role": "assistant", "content": [{"type": "text", "text": answer.strip()}]})
        return out

    def _clean(self, question: str) -> str:
        for placeholder in self._placeholders:
            question = question.replace(placeholder, "")
        return question.strip()

    def _render(self, messages: list[dict[str, Any]], prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

    def _ids(self, text: str, image: Any) -> dict[str, Any]:
        return self.processor(text=[text], images=[image], return_tensors="pt")

    def spans(self, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[str, str]]]:
        """The full text, and for each assistant turn (text before it, text through it)."""
        full = self._render(messages, False)
        out = []
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before, through = self._render(messages[:k], True), self._render(messages[: k + 1], False)
            if not (through.startswith(before) and full.startswith(through)):
                raise EncodeError("the chat template does not render a conversation as a prefix of its "
                                  "continuation, so assistant turns cannot be located; use another template")
            out.append((before, through))
        return full, out

    def encode(self, example: Example, image: Any, answers: Sequence[str] | None = None, *,
               count: bool = True) -> dict[str, Any] | None:
        """Inputs with labels for ``example`` (``answers`` replace its answers, for DPO); None
        when it is dropped for its length (``count``: recorded in :attr:`report`)."""
        turns = [(t.question, a) for t, a in zip(example.turns, answers, strict=True)] if answers else example
        messages = self.messages(turns)
        full, spans = self.spans(messages)
        batch = self._ids(full, image)
        ids = batch["input_ids"][0]
        counts: dict[str, int] = {}
        for text in {t for span in spans for t in span} - {full}:
            prefix = self._ids(text, image)["input_ids"][0]
            if prefix.shape[0] > ids.shape[0] or not bool((ids[: prefix.shape[0]] == prefix).all()):
                raise EncodeError("tokenizing a conversation prefix changes its tokens (merges across the turn "
                                  "boundary): assistant turns cannot be located token by token")
            counts[text] = prefix.shape[0]
        counts[full] = ids.shape[0]
        labels = ids.new_full(ids.shape, IGNORE)
        for before, through in spans:
            labels[counts[before] : counts[through]] = ids[counts[before] : counts[through]]
        out = {k: v[0] if k in SEQUENCE_KEYS else v for k, v in batch.items()}
        out["labels"] = labels
        return self._fit(out, counts[spans[0][0]], self.report if count else LengthReport())

    def _fit(self, enc: dict[str, Any], first_answer: int, report: LengthReport) -> dict[str, Any] | None:
        n = enc["input_ids"].shape[0]
        report.longest = max(report.longest, n)
        if n <= self.max_length:
            return enc
        if self.overflow == "drop" or first_answer >= self.max_length:
            report.dropped["too_long" if self.overflow == "drop" else "prompt_too_long"] += 1
            return None
        report.truncated += 1
        return {k: v[: self.max_length] if k in SEQUENCE_KEYS else v for k, v in enc.items()}



class Collator:
    """Pads encoded examples on the right into one batch (labels with -100, masks with 0)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = pad_token_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(it["input_ids"].shape[0] for it in items)
        out: dict[str, Any] = {}
        for key in items[0]:
            if key in SEQUENCE_KEYS:
                fill = {"input_ids": self.pad, "labels": IGNORE}.get(key, 0)
                out[key] = torch.stack([torch.nn.functional.pad(it[key], (0, longest - it[key].shape[0]), value=fill)
                                        for it in items])
            else:
                out[key] = torch.cat([it[key] for it in items], dim=0)
        return out


class TrainDataset:
    """A map-style dataset: example ``i`` encoded on demand (its image decoded then)."""

    def __init__(self, examples: Sequence[Example], encoder: Encoder) -> None:
        self.examples = list(examples)
        self.encoder = encoder

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from medhall.images import load_rgb

        example = self.examples[i]
        enc = self.encoder.encode(example, load_rgb(example.image), count=False)
        if enc is None:  # fit() was checked by fit_examples(); a changed file is a new error
            raise EncodeError(f"example {example.key} no longer fits max_length")
        return enc


def fit_examples(examples: Sequence[Example], encoder: Encoder) -> tuple[list[Example], LengthReport]:
    """Encode every example once: those that fit (or were truncated) and the length report."""
    from medhall.images import load_rgb

    kept = [ex for ex in examples if encoder.encode(ex, load_rgb(ex.image)) is not None]
    return kept, encoder.report


__all__ = ["IGNORE", "Collator", "EncodeError", "Encoder", "LengthReport", "TrainDataset", "fit_examples"]
