"""Test tools that ship with the library (as ``prefect.testing`` does): scripted LLM replies.

:func:`scripted_reply` answers medhall's own generation and QC prompts with valid JSON built
from the prompt (the caption's words), so the real pipeline runs end to end against the
fake backend or the local OpenAI-compatible test server. It is not a generator: it writes
placeholder pairs, and it is used only by tests and benchmarks.
"""

from __future__ import annotations

import json
import re

NEGATIVE = ("nonexistent_object", "object_manipulation", "knowledge_distortion")
POSITIVE = ("captioning", "finding_recognition", "modality_anatomy", "clinical_reasoning", "other")
STYLES = ("direct", "casual", "clinician", "patient", "leading")
_N = re.compile(r"Write (\d+) (NON-HALLUCINATION|HALLUCINATION) questions")
_CAPTION = re.compile(r"Figure caption \(ground truth\):\s*(.*?)(?:\n\nQuestion:|\Z)", re.S)


def _caption(prompt: str) -> str:
    m = _CAPTION.search(prompt)
    return (m.group(1).strip() if m else "") or "the image"


def scripted_reply(prompt: str) -> str | None:
    """A valid reply to a medhall generation or QC prompt (JSON) or judge prompt (scores and an
    explanation); None for any other prompt."""
    caption = _caption(prompt)
    first = caption.split(".")[0][:120]
    if (m := _N.search(prompt)) is not None:
        n, negative = int(m.group(1)), m.group(2) == "HALLUCINATION"
        cats = NEGATIVE if negative else POSITIVE
        pairs = []
        for i in range(n):
            cat = cats[i % len(cats)]
            if negative:
                q = f"Is the implanted device number {i + 1} visible near the lesion?"
                a = f"No, there is no implanted device in this image; it shows {first.lower()}."
            else:
                q = f"What does this image show (aspect {i + 1})?"
                a = f"The image shows {first.lower()}."
            pairs.append({"question": q, "answer": a, "category": cat, "style": STYLES[i % len(STYLES)]})
        return json.dumps({"pairs": pairs})
    if '"judgement"' in prompt:
        return json.dumps({"reason": f"The answer agrees with the caption ({first[:60]}).", "judgement": "correct"})
    if "Clinical Accuracy" in prompt and "[Ground Truth Answer]" in prompt:  # the clinical judge's rubric
        return "7 8 6 9\nThe answer is mostly correct and relevant but could be more detailed."
    return None


def fake_script(request) -> str | None:
    """A :class:`medhall.llm.FakeBackend` script answering medhall's prompts."""
    return scripted_reply(request.messages[-1].text() if request.messages else "")
