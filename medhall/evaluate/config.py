"""What decides an evaluation: the model under test, the judge, the metrics, the questions.

:class:`EvalConfig` and the model specs (a local VLM, an API model, the text-only baseline,
imported predictions); the names every table uses (:func:`eval_dataset_name`); the identities
that key the shard folders (:func:`model_identity`, :func:`judge_identity`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from medhall.endpoints import LLMSettings
from medhall.errors import MedhallError
from medhall.ids import canonical_json, path_fingerprint, sha256_hex

DEFAULT_METRICS = ("meteor", "rouge", "bertscore")
METRIC_GROUPS = {"rouge": ("rouge1", "rouge2", "rougeL"), "bertscore": ("bertscore_f1",)}
SMOLLM2_EVAL_NAME = "smollm2-135m-instruct-text-only"
JUDGE_ENV_HELP = (
    "set MEDHALL_LLM_BASE_URL (an OpenAI-compatible server; unset means api.openai.com), "
    "MEDHALL_LLM_MODEL (e.g. gpt-4o, the paper's judge) and, for a hosted API, "
    "MEDHALL_LLM_API_KEY, then run with a judge: `medhall evaluate DATASET --judge-url URL "
    "--judge-model NAME`, the `judge` parameter of the `evaluate_model` Prefect flow, or "
    "`run_eval(store, EvalConfig(..., judge=LLMSettings()))` in Python"
)
class EvalError(MedhallError, RuntimeError):
    """An evaluation that cannot run as configured, explained."""


class LocalVLMSpec(BaseModel):
    """A local transformers VLM (:class:`medhall.infer.LocalVLM`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["local_vlm"] = "local_vlm"
    path: str = Field(..., description="Checkpoint directory (or a hub name where a hub is reachable).")
    adapter: str | None = Field(None, description="A peft LoRA adapter directory merged on top.")
    dtype: str = Field("auto", description="auto, float32, bfloat16 or float16.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    system_prompt: str | None = None


class APISpec(BaseModel):
    """A model behind the LLM layer (GPT-4o, a vLLM / llama.cpp / Ollama server), shown the image."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["api"] = "api"
    llm: LLMSettings = Field(default_factory=LLMSettings, description="Endpoint (key from the environment).")
    max_tokens: int = Field(512, ge=1)
    system_prompt: str | None = None
    image_max_side: int = Field(1024, ge=28)


class TextLLMSpec(BaseModel):
    """The text-only baseline: an LLM asked the question alone (no image, no caption)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["text_llm"] = "text_llm"
    llm: LLMSettings = Field(default_factory=lambda: LLMSettings(backend="transformers"),
                             description="Default: the embedded SmolLM2-135M-Instruct.")
    max_tokens: int = Field(48, ge=1)
    system_prompt: str | None = None


class ImportSpec(BaseModel):
    """Answers made elsewhere: submission JSONL files ``{question_id, image, question, answer}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["import"] = "import"
    paths: tuple[str, ...] = Field(..., min_length=1, description="JSONL files (kind from the file name).")
    file_kind: Literal["positive", "negative"] | None = Field(None, description="Kind of every file, if names do not say.")


ModelSpec = Annotated[LocalVLMSpec | APISpec | TextLLMSpec | ImportSpec, Field(discriminator="kind")]
MODEL_SPEC: TypeAdapter[Any] = TypeAdapter(ModelSpec)


class EvalConfig(BaseModel):
    """Everything that decides an evaluation's output (recorded in the manifests)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = Field(..., description="A built (or ingested) dataset with instructions.")
    split: str | None = Field("test", description="Evaluate the questions on this split's images; None: all.")
    model: ModelSpec = Field(default_factory=TextLLMSpec)
    model_name: str | None = Field(None, description="Name in the tables (default from the model spec).")
    judge: LLMSettings | None = Field(None, description="Judge endpoint; None: no judge scores.")
    judge_max_tokens: int = Field(512, ge=16)
    judge_attempts: int = Field(3, ge=1, le=10, description="Judge calls per answer until a reply parses.")
    rubric_version: str = "v1"
    baseline_model: str | None = Field(None, description="Model whose judged answers anchor the judge.")
    metrics: tuple[str, ...] = DEFAULT_METRICS
    bertscore_encoder: str | None = Field(None, description="None: the shipped all-MiniLM-L6-v2.")
    bertscore_layers: int | None = None
    shard_size: int = Field(200, ge=1)
    max_questions: int | None = Field(None, ge=1, description="Evaluate a seeded sample of this many questions.")
    seed: int = 0
    n_boot: int = Field(1000, ge=10)

    @field_validator("metrics", mode="before")
    @classmethod
    def _known_metrics(cls, value: Any) -> tuple[str, ...]:
        from medhall.evaluate.text_metrics import METRICS

        names = (value,) if isinstance(value, str) else tuple(value)
        unknown = [m for m in names if m not in METRIC_GROUPS and m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: meteor, rouge, bertscore, {', '.join(METRICS)}")
        return names

    @model_validator(mode="after")
    def _import_needs_name(self) -> EvalConfig:
        if self.model.kind == "import" and not self.model_name:
            raise ValueError("imported predictions need model_name")
        return self

    # -- derived ---------------------------------------------------------------------------

    def resolved_model_name(self) -> str:
        """The model's name in every table."""
        return self.model_name or default_model_name(self.model)

    def metric_names(self) -> list[str]:
        """``text_metrics`` names: rouge -> rouge1/2/L, bertscore -> bertscore_f1."""
        return list(dict.fromkeys(n for m in self.metrics for n in METRIC_GROUPS.get(m, (m,))))

    def eval_dataset(self) -> str:
        """Where this evaluation's tables go (see :func:`eval_dataset_name`)."""
        return eval_dataset_name(self.dataset, self.split, self.resolved_model_name(), self.max_questions)

    def answer_key(self) -> str:
        """Hash of what decides the answers: model identity and name, dataset."""
        return sha256_hex(canonical_json({"model": model_identity(self.model), "name": self.resolved_model_name(),
                                          "dataset": self.dataset}))[:16]

    def text_only(self) -> bool:
        """Whether the model under test answers without seeing the image."""
        return self.model.kind == "text_llm" or (self.model.kind == "api" and self.model.llm.text_only)


def default_model_name(spec: Any) -> str:
    """A model's default name: checkpoint dir (+adapter), the API model, ``<model>-text-only``."""
    if spec.kind == "local_vlm":
        from medhall.infer.local_vlm import default_name

        return default_name(spec.path, spec.adapter)
    if spec.kind in ("api", "text_llm"):
        base = spec.llm.resolved_model()
        if spec.llm.backend == "transformers":
            if base is None:
                return SMOLLM2_EVAL_NAME if spec.kind == "text_llm" else "smollm2-135m-instruct"
            base = Path(base.rstrip("/")).name
        text_only = spec.kind == "text_llm" or spec.llm.text_only
        return f"{base or 'api-model'}-text-only" if text_only else (base or "api-model")
    raise EvalError("imported predictions need model_name")


def eval_dataset_name(dataset: str, split: str | None, model: str, max_questions: int | None = None) -> str:
    """``<dataset>-<split|all>[-n<cap>]-eval-<model slug>``, shortened with a hash past 64 chars."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-.") or "model"
    cap = f"-n{max_questions}" if max_questions else ""
    name = f"{dataset}-{split or 'all'}{cap}-eval-{slug}"
    if len(name) > 64:
        name = f"{name[:47]}-{sha256_hex(name)[:16]}"
    return name


def model_identity(spec: Any) -> dict[str, Any]:
    """What decides the answers (not batch size or device; files by content or listing)."""
    data = spec.model_dump(mode="json", exclude={"batch_size", "device"})
    if spec.kind == "local_vlm":
        data["path_fingerprint"] = path_fingerprint(spec.path)
        data["adapter_fingerprint"] = path_fingerprint(spec.adapter) if spec.adapter else None
    elif spec.kind in ("api", "text_llm"):
        data["llm"] = spec.llm.identity()
    elif spec.kind == "import":
        data["files"] = [path_fingerprint(p) for p in spec.paths]
    return data


def judge_identity(cfg: EvalConfig, client: Any = None) -> dict[str, Any] | None:
    """The judge's identity (None: no judge): endpoint, model, rubric, anchor, attempts."""
    if cfg.judge is None and client is None:
        return None
    from medhall.evaluate.judge import load_rubric

    llm = cfg.judge.identity() if client is None else {"backend": client.backend.name, "model": client.backend.model,
                                                       "endpoint": getattr(client.backend, "endpoint", None)}
    return {"llm": llm, "rubric": load_rubric(cfg.rubric_version).hash, "baseline": cfg.baseline_model,
            "max_tokens": cfg.judge_max_tokens, "attempts": cfg.judge_attempts}


def judge_model_name(cfg: EvalConfig, client: Any = None) -> str:
    """The judge model written to ``judgments.judge_model``."""
    if client is not None:
        return str(client.backend.model)
    assert cfg.judge is not None
    return cfg.judge.resolved_model() or "smollm2-135m-instruct"



def slug(name: str) -> str:
    """A model name made safe for file names."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"
