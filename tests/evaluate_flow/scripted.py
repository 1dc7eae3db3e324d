"""Scripted replies of the evaluation-flow tests (a judge that sometimes answers badly)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

DATASET = "sample-instruct"
GOOD = "7 8 6 9\nAccurate, relevant and safe."
BAD = "I am unable to score this answer."


def question_of(request: Any) -> str:
    """The question of a judge request (from the case message, whatever the anchor)."""
    case = next(m.text() for m in request.messages if "[Question]:" in m.text())
    return re.search(r"\[Question\]: (.*)", case).group(1).strip()


def bucket(question: str) -> int:
    """0: the judge replies well; 1: badly, then well when asked again; 2: always badly."""
    return int(hashlib.sha256(question.encode()).hexdigest()[:8], 16) % 3


def judge_script(request: Any) -> str:
    """A FakeBackend script for judge prompts: a mix of parseable and unparseable replies."""
    b = bucket(question_of(request))
    repaired = any(m.role == "assistant" for m in request.messages)
    return GOOD if b == 0 or (b == 1 and repaired) else BAD
