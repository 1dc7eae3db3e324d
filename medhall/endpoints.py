"""Where LLM calls go: one settings model for every stage that calls an LLM, and the client for it.

The API key is never a setting here: the OpenAI-compatible backend reads it from the
environment (MEDHALL_LLM_API_KEY, else OPENAI_API_KEY), so it cannot reach Prefect parameters,
manifests or rows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medhall.config import get_settings


class LLMSettings(BaseModel):
    """An LLM endpoint and how hard to drive it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Literal["openai", "transformers"] = Field("openai", description="openai: any OpenAI-compatible server (GPT-4o, vLLM, llama.cpp, Ollama); transformers: a local checkpoint.")
    model: str | None = Field(None, description="Model name (openai) or checkpoint directory (transformers); default MEDHALL_LLM_MODEL / the embedded SmolLM2.")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL; default MEDHALL_LLM_BASE_URL (None: api.openai.com).")
    text_only: bool = Field(False, description="Send the caption without the image (as LLaVA-Med's data generation did).")
    concurrency: int = Field(16, ge=1, le=1024, description="Requests in flight at once.")
    requests_per_min: float | None = Field(None, description="Token-bucket limit on requests per minute.")
    tokens_per_min: float | None = Field(None, description="Token-bucket limit on tokens per minute.")
    max_cost_usd: float | None = Field(None, description="Budget cap: calls that could exceed it are not sent.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds one attempt may take before it is abandoned (and retried).")
    max_attempts: int = Field(4, ge=1, le=20, description="Attempts per request, the first included (rate limits, "
                              "5xx, timeouts and dropped connections are retried; 400/401/403/404/422 are not).")
    max_retry_after_s: float = Field(60.0, ge=0, description="The longest a server's Retry-After is honoured "
                                     "(longer asks are capped and logged).")

    @field_validator("base_url")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        from medhall.llm.backends.openai_compat import check_url
        from medhall.llm.errors import ConfigError

        try:
            return check_url(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None

    def resolved_model(self) -> str | None:
        return self.model or (get_settings().llm_model if self.backend == "openai" else None)

    def resolved_url(self) -> str | None:
        """The endpoint without credentials (None for a local model)."""
        if self.backend != "openai":
            return None
        import os

        from medhall.llm.backends.openai_compat import check_url, redacted_url

        url = self.base_url or get_settings().llm_base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        return redacted_url(check_url(url) or "")

    def identity(self) -> dict[str, object]:
        """What decides the answers (part of cache and shard keys, and of a judge's identity):
        backend, endpoint, model, text mode."""
        return {"backend": self.backend, "endpoint": self.resolved_url(), "model": self.resolved_model(),
                "text_only": self.text_only}


def make_client(settings: LLMSettings, *, run_id: str | None = None, home=None):
    """An :class:`medhall.llm.LLMClient` for these settings (cache under the store root)."""
    from medhall.llm import LLMClient, OpenAICompatBackend, TransformersBackend

    if settings.backend == "openai":
        env = get_settings()
        backend = OpenAICompatBackend(
            base_url=settings.base_url or env.llm_base_url, model=settings.resolved_model(),
            timeout=settings.timeout_s, max_connections=max(settings.concurrency, 8), text_only=settings.text_only,
        )
    else:
        backend = TransformersBackend(settings.model) if settings.model else TransformersBackend()
    cache = (home or get_settings().resolved_home()) / "llm" / "cache.sqlite"
    cache.parent.mkdir(parents=True, exist_ok=True)
    return LLMClient(
        backend, cache=cache, run_id=run_id, max_concurrency=settings.concurrency,
        requests_per_min=settings.requests_per_min, tokens_per_min=settings.tokens_per_min,
        request_timeout_s=settings.timeout_s, max_cost_usd=settings.max_cost_usd, max_attempts=settings.max_attempts,
        max_retry_after_s=settings.max_retry_after_s,
    )
