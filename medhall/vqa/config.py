"""Zero-shot VQA configuration, and the keys that decide where answers live and when they
are reused.

:class:`VQAConfig` (benchmarks as :class:`BenchmarkSpec`, models as :class:`ModelSpec`) is
everything that decides a run. :func:`model_key` hashes what decides a model's answers (kind,
checkpoint and adapter with their file fingerprints, generation settings; not the model's
display name, batch size or device) and names its work folder; :func:`item_key` hashes what
the model is shown of an item (prompt, the image's presence and size), so a changed question
or an image that appears is asked again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medhall.ids import canonical_json, file_sha256, sha256_hex
from medhall.vqa.data import VQAItem, prompt_for
from medhall.vqa.loaders import benchmark_key

#: Runner settings that do not change the answers, left out of the model key.
NOT_IDENTITY: frozenset[str] = frozenset(
    {
        "batch_size",
        "device",
        "concurrency",
        "requests_per_min",
        "tokens_per_min",
        "max_cost_usd",
        "timeout_s",
        "name",
    }
)
#: Files up to this size are fingerprinted by content, larger ones (weights) by size and mtime.
CONTENT_FINGERPRINT_LIMIT = 64 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# Configuration


class BenchmarkSpec(BaseModel):
    """One benchmark file (or folder) to ask, in the form its authors publish it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        ...,
        description="Benchmark: vqa_rad, pathvqa, slake, pmc_vqa, omnimedvqa, llava_med_test (aliases such as VQA-RAD work).",
    )
    path: str = Field(..., description="The benchmark's file (or a folder of its files).")
    image_root: str | None = Field(
        None,
        description="Folder the items' image paths are relative to (default: the file's folder).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description='Loader keyword options, e.g. {"split": null} for all of VQA-RAD.',
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return benchmark_key(name)

    def images_dir(self) -> Path:
        """Where the items' relative image paths start."""
        if self.image_root:
            return Path(self.image_root)
        p = Path(self.path)
        return p if p.is_dir() else p.parent


class ModelSpec(BaseModel):
    """One model under test, and how to make its runner."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(..., min_length=1, description="Name in the predictions, scores and Table 3.")
    kind: Literal["local_vlm", "api"] = Field(
        "local_vlm",
        description="local_vlm: medhall.infer.LocalVLM; api: medhall.infer.api.APIModel.",
    )
    path: str | None = Field(None, description="Checkpoint directory or hub name (local_vlm).")
    adapter: str | None = Field(
        None, description="LoRA adapter directory, merged after loading (local_vlm)."
    )
    base: str | None = Field(
        None,
        description="For a fine-tuned model: the name of its base model (its Table 3 row follows the base's).",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Runner options: dtype, device, batch_size, max_new_tokens, system_prompt, ... (api: the APIModel's options).",
    )

    @model_validator(mode="after")
    def _runner_inputs(self) -> ModelSpec:
        if self.kind == "local_vlm" and not self.path:
            raise ValueError(f"model {self.name!r}: a local_vlm needs a path")
        if self.base == self.name:
            raise ValueError(f"model {self.name!r} cannot be its own base")
        return self


class VQAConfig(BaseModel):
    """Everything that decides a zero-shot VQA run (recorded in the artifacts' manifests)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    benchmarks: tuple[BenchmarkSpec, ...] = Field(..., min_length=1)
    models: tuple[ModelSpec, ...] = Field(..., min_length=1)
    closed_variant: Literal["gated", "run_eval", "run_eval_batch"] = Field(
        "gated", description="LLaVA-Med closed-question rule (docs/vqa.md)."
    )
    max_new_tokens: int = Field(
        128, ge=1, description="Generation limit, unless a model's settings give one."
    )
    shard_size: int = Field(
        256, ge=1, description="Questions per shard (one task, one completion marker)."
    )
    dataset: str = Field(
        "vqa",
        min_length=1,
        description="Dataset the predictions, scores and quarantine tables are written to.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> VQAConfig:
        _unique("model", [m.name for m in self.models])
        _unique("benchmark", [b.name for b in self.benchmarks])
        names = {m.name for m in self.models}
        for m in self.models:
            if m.base is not None and m.base not in names:
                raise ValueError(f"model {m.name!r}: its base {m.base!r} is not one of the models")
        return self

    def model(self, name: str) -> ModelSpec:
        """The model named ``name``."""
        return _by_name(self.models, name, "model")

    def benchmark(self, name: str) -> BenchmarkSpec:
        """The benchmark named ``name`` (any spelling :func:`benchmark_key` accepts)."""
        return _by_name(self.benchmarks, benchmark_key(name), "benchmark")

    def base_of(self) -> dict[str, str]:
        """Fine-tuned model -> its base model."""
        return {m.name: m.base for m in self.models if m.base}


def _unique(what: str, names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(repeated)}")


def _by_name(specs: Iterable[Any], name: str, what: str) -> Any:
    for s in specs:
        if s.name == name:
            return s
    raise KeyError(f"no {what} named {name!r} in the configuration")


def load_config(path: str | os.PathLike[str], **overrides: Any) -> VQAConfig:
    """A :class:`VQAConfig` from a JSON file (``{"benchmarks": [...], "models": [...], ...}``),
    with ``overrides`` (e.g. ``dataset=``, ``shard_size=``; ``None`` values are ignored)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return VQAConfig.model_validate(
        {**data, **{k: v for k, v in overrides.items() if v is not None}}
    )



# --------------------------------------------------------------------------------------------
# Fingerprints and keys


def path_fingerprint(path: str | os.PathLike[str] | None) -> str | None:
    """A file's or folder's fingerprint: content hashes of files up to
    :data:`CONTENT_FINGERPRINT_LIMIT`, size and mtime of larger ones; ``ref:<path>`` for a path
    that is not on disk (a hub name); ``None`` for ``None``."""
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        return _file_fingerprint(p)
    if p.is_dir():
        files = sorted(c for c in p.rglob("*") if c.is_file())
        return sha256_hex(
            canonical_json([(str(c.relative_to(p)), _file_fingerprint(c)) for c in files])
        )
    return f"ref:{path}"


def _file_fingerprint(p: Path) -> str:
    st = p.stat()
    if st.st_size <= CONTENT_FINGERPRINT_LIMIT:
        return file_sha256(p)
    return f"size:{st.st_size}:mtime:{st.st_mtime_ns}"


def model_identity(spec: ModelSpec, cfg: VQAConfig) -> dict[str, Any]:
    """What decides the model's answers: kind, files (with fingerprints), generation settings."""
    settings = {k: v for k, v in spec.settings.items() if k not in NOT_IDENTITY}
    settings.setdefault("max_new_tokens", cfg.max_new_tokens)
    if spec.kind == "api":  # the endpoint's model may come from the environment
        settings["endpoint"] = api_parts(spec, cfg)[0].identity()
    files = {
        "path": spec.path,
        "adapter": spec.adapter,
        "chat_template": settings.get("chat_template"),
    }
    fingerprints = {
        k: path_fingerprint(v)
        for k, v in files.items()
        if isinstance(v, str) and (k != "chat_template" or Path(v).is_file())
    }
    return {
        "kind": spec.kind,
        "path": spec.path,
        "adapter": spec.adapter,
        "settings": settings,
        "files": fingerprints,
    }


def model_key(spec: ModelSpec, cfg: VQAConfig) -> str:
    """16 hex of the hash of :func:`model_identity`: names the model's work folder."""
    return sha256_hex(canonical_json(model_identity(spec, cfg)))[:16]


def image_path(item: VQAItem, images_dir: Path) -> Path | None:
    """The item's image file (``None`` for an image embedded in a Parquet row)."""
    if item.meta.get("image_parquet"):
        return None
    p = Path(item.image_ref)
    return p if p.is_absolute() else images_dir / p


def _image_stamp(item: VQAItem, images_dir: Path) -> int | str | None:
    """``embedded``, the image file's size, or ``None`` when it is missing."""
    path = image_path(item, images_dir)
    if path is None:
        return "embedded"
    try:
        return path.stat().st_size
    except OSError:
        return None


def item_key(item: VQAItem, images_dir: Path) -> str:
    """``<item_id>:<12 hex>`` of what the model is shown: the prompt and the image's presence
    and size. A changed question or a missing image that appears gives a new key."""
    shown = canonical_json([prompt_for(item), _image_stamp(item, images_dir)])
    return f"{item.item_id}:{sha256_hex(shown)[:12]}"


def api_parts(spec: ModelSpec, cfg: VQAConfig) -> tuple[Any, dict[str, Any]]:
    """An ``api`` model's settings split into the endpoint (:class:`medhall.endpoints.LLMSettings`:
    ``backend``, ``model``, ``base_url``, ``concurrency``, rate limits, ``max_cost_usd``,
    ``timeout_s``) and the :class:`medhall.infer.api.APIModel` options (``system_prompt``,
    ``image_max_side``, ``text_only``; ``max_new_tokens`` becomes ``max_tokens``). Here, not
    in :mod:`medhall.vqa.runners`, because the endpoint is part of :func:`model_identity`."""
    from medhall.endpoints import LLMSettings

    settings = dict(spec.settings)
    max_tokens = settings.pop("max_new_tokens", cfg.max_new_tokens)
    endpoint = {k: v for k, v in settings.items() if k in LLMSettings.model_fields}
    options = {
        k: v for k, v in settings.items() if k not in LLMSettings.model_fields or k == "text_only"
    }
    return LLMSettings(**endpoint), {**options, "max_tokens": max_tokens}


__all__ = [
    "CONTENT_FINGERPRINT_LIMIT",
    "NOT_IDENTITY",
    "BenchmarkSpec",
    "ModelSpec",
    "VQAConfig",
    "api_parts",
    "image_path",
    "item_key",
    "load_config",
    "model_identity",
    "model_key",
    "path_fingerprint",
]
