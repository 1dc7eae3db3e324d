"""LLM backends: OpenAI-compatible HTTP, local transformers, and a scripted fake."""

from medhall.llm.backends.base import Backend
from medhall.llm.backends.fake import FakeBackend, FakeReply, fault
from medhall.llm.backends.openai_compat import OpenAICompatBackend
from medhall.llm.backends.transformers_local import TransformersBackend

__all__ = ["Backend", "FakeBackend", "FakeReply", "OpenAICompatBackend", "TransformersBackend", "fault"]
