"""The LLM request layer shared by generation, QC, judging and API-model inference.

One async interface over three backends (OpenAI-compatible HTTP, local transformers, a
scripted fake), with concurrency, rate limits, retries, a durable content-addressed cache, a
ledger of every call with its cost, a budget cap and structured output written once, in
:class:`LLMClient`. See docs/llm.md.
"""

from medhall.llm.backends import (
    Backend,
    FakeBackend,
    FakeReply,
    OpenAICompatBackend,
    TransformersBackend,
    fault,
)
from medhall.llm.cache import ResponseCache, request_key
from medhall.llm.client import LLMClient, default_cache_path
from medhall.llm.errors import BackendError, ConfigError, LLMError
from medhall.llm.images import encode_image
from medhall.llm.pricing import Price, PriceTable
from medhall.llm.ratelimit import RateLimiter
from medhall.llm.types import (
    BackendResponse,
    ChatRequest,
    ChatResult,
    ImagePart,
    Message,
    TextPart,
    Usage,
)

__all__ = [
    "Backend", "BackendError", "BackendResponse", "ChatRequest", "ChatResult", "ConfigError", "FakeBackend",
    "FakeReply", "ImagePart", "LLMClient", "LLMError", "Message", "OpenAICompatBackend", "Price", "PriceTable",
    "RateLimiter", "ResponseCache", "TextPart", "TransformersBackend", "Usage", "default_cache_path",
    "encode_image", "fault", "request_key",
]
