"""Settings from the environment (prefix ``MEDHALL_``) with sensible defaults.

Secrets (API keys) are read here as :class:`pydantic.SecretStr`, so they print as ``**********``
and never reach logs, artifacts or Prefect parameters.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    return Path.home() / ".medhall"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDHALL_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="Root of the artifact store.")
    # LLM layer (OpenAI-compatible). The key also falls back to OPENAI_API_KEY.
    llm_base_url: str | None = Field(default=None, description="OpenAI-compatible base URL.")
    llm_model: str = Field(default="gpt-4o", description="Model name sent to the server.")
    llm_api_key: SecretStr | None = Field(default=None, description="API key (never logged).")
    # Disk (docs/store.md, "Disk and housekeeping").
    keep_exports: int = Field(
        default=1,
        ge=1,
        description="Export versions kept per dataset; older ones are removed once a newer one is complete.",
    )
    # Ingest limits (docs/ingest.md, "Limits"): a hostile or broken corpus must not hang a run
    # or exhaust memory. Every image file counts against both limits before it is decoded.
    image_max_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1,
        description="Largest image file read, in bytes (also the most a deflated DICOM may inflate to).",
    )
    image_max_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Most pixels an image may declare in its header before it is decoded: width x height "
        "(Pillow formats), Rows x Columns x frames x samples per pixel (DICOM).",
    )
    ingest_allow_outside_root: bool = Field(
        default=False,
        description="Follow image paths ('../', absolute, symlinks) that resolve outside the images root.",
    )
    ingest_screen_injection: bool = Field(
        default=True,
        description="Quarantine records whose caption, question or answer addresses a model (prompt_injection).",
    )

    def resolved_home(self) -> Path:
        return Path(self.home).expanduser().resolve()


@lru_cache(maxsize=1)
def _cached() -> Settings:
    return Settings()


def get_settings(fresh: bool = False) -> Settings:
    """The process-wide settings; ``fresh=True`` re-reads the environment."""
    if fresh:
        _cached.cache_clear()
    return _cached()
