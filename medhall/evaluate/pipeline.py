"""The evaluation pipeline: answers from the model under test, the clinical judge, text metrics
and the Table 2 report, as resumable steps over the artifact store.

Steps (each a Prefect task in ``flows/evaluate_model.py``; each callable on its own here):

1. :func:`plan_answers`: the questions to evaluate (the dataset's QC-filtered instructions on
   the images of one split) and the shards still to answer;
2. :func:`answer_shard`: the model's answers to one shard (a local VLM, an API model through
   the LLM layer, the text-only baseline, or imported predictions), written atomically with a
   completion marker; :func:`assemble_predictions` streams finished shards into the
   ``predictions`` artifact;
3. :func:`plan_judging` / :func:`judge_shard` / :func:`assemble_judgments`: the same for the
   clinical judge (only when a judge is configured);
4. :func:`compute_metrics`: METEOR, ROUGE and BERTScore into the ``scores`` artifact;
5. :func:`write_report`: Table 2 (P and N means with bootstrap 95 % intervals, by category and
   modality), Markdown, CSV and PNG under ``<home>/reports/<eval dataset>/``.

:func:`run_eval` runs them in-process; :func:`evaluate_default` is the main job's evaluation
of the embedded text-only baseline. Results go to the eval dataset
:func:`eval_dataset_name` (``<dataset>-<split>-eval-<model>``): one per model, so models never
overwrite each other, and the DuckDB views ``predictions``, ``judgments`` and ``scores`` show
every model side by side. Shard files live under ``<home>/work/<eval dataset>/``; a re-run
with nothing changed answers and judges nothing again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from medhall import atomic, schema
from medhall.endpoints import LLMSettings
from medhall.ids import canonical_json, file_sha256, sha256_hex
from medhall.store import Artifact, ArtifactStore

DONE_SUFFIX = ".done.json"
#: Answer failures that a re-run would repeat (the shard marks them done).
FINAL_ERRORS = ("missing_image", "corrupt_image")
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
REPAIR_NOTE = (
    "Your reply could not be read ({reason}). Reply again in the required format: the first line "
    "is exactly four integers from 1 to 10 separated by spaces (Clinical Accuracy, Clinical "
    "Relevance, Detail Level, Risk Level), then your explanation."
)


class EvalError(RuntimeError):
    """An evaluation that cannot run as configured, explained."""


# --------------------------------------------------------------------------- configuration


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
        data["path_fingerprint"] = _path_fingerprint(spec.path)
        data["adapter_fingerprint"] = _path_fingerprint(spec.adapter) if spec.adapter else None
    elif spec.kind in ("api", "text_llm"):
        data["llm"] = spec.llm.identity()
    elif spec.kind == "import":
        data["files"] = [_path_fingerprint(p) for p in spec.paths]
    return data


def _path_fingerprint(path: str) -> str:
    """A file's SHA-256; a directory's listing (names, sizes, mtimes); else the name itself."""
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    if p.is_dir():
        listing = sorted((str(c.relative_to(p)), c.stat().st_size, c.stat().st_mtime_ns) for c in p.rglob("*") if c.is_file())
        return sha256_hex(canonical_json(listing))
    return f"name:{path}"


def judge_identity(cfg: EvalConfig, client: Any = None) -> dict[str, Any] | None:
    """The judge's identity (None: no judge): endpoint, model, rubric, anchor, attempts."""
    if cfg.judge is None and client is None:
        return None
    from medhall.evaluate.judge import load_rubric

    llm = cfg.judge.identity() if client is None else {"backend": client.backend.name, "model": client.backend.model}
    return {"llm": llm, "rubric": load_rubric(cfg.rubric_version).hash, "baseline": cfg.baseline_model,
            "max_tokens": cfg.judge_max_tokens, "attempts": cfg.judge_attempts}


def judge_model_name(cfg: EvalConfig, client: Any = None) -> str:
    """The judge model written to ``judgments.judge_model``."""
    if client is not None:
        return str(client.backend.model)
    assert cfg.judge is not None
    return cfg.judge.resolved_model() or "smollm2-135m-instruct"


# --------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Questions:
    """The questions of an evaluation, with what the judge and the report need, and the
    fingerprints of the artifacts they came from."""

    table: pa.Table  # qa_id, image_id, question, answer, kind, category, source_qa_id, image_path, caption, modality
    inputs: tuple[str, ...]

    @property
    def qa_ids(self) -> list[str]:
        return self.table.column("qa_id").to_pylist()

    def rows(self, qa_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        t = self.table if qa_ids is None else self.table.filter(pc.is_in(self.table.column("qa_id"), pa.array(list(qa_ids), pa.string())))
        return t.to_pylist()


def load_questions(store: ArtifactStore, cfg: EvalConfig) -> Questions:
    """The dataset's QC-filtered instructions on ``cfg.split``'s images (a seeded sample of
    ``max_questions``), joined with image path, caption and modality; ordered by qa_id."""
    from medhall.jobs import images_source
    from medhall.split import filtered

    instr_art = store.get("instructions", cfg.dataset)
    instr = instr_art.read(columns=["qa_id", "image_id", "question", "answer", "kind", "category", "source_qa_id"])
    inputs = [instr_art.fingerprint]
    if (qc := store.latest("qc_verdicts", cfg.dataset)) is not None:
        instr, inputs = filtered(instr, qc.read()), [*inputs, qc.fingerprint]
    if cfg.split is not None:
        instr, split_fp = _on_split(store, cfg, instr)
        inputs.append(split_fp)
    images_art = store.get("images", images_source(store, cfg.dataset))
    images = images_art.read(columns=["image_id", "image_path", "caption", "modality"])
    table = instr.join(images, "image_id", join_type="left outer")
    table = _ordered(table, cfg)
    if table.num_rows == 0:
        raise EvalError(f"{cfg.dataset} has no questions to evaluate on split {cfg.split!r}")
    return Questions(table, (*inputs, images_art.fingerprint))


def _on_split(store: ArtifactStore, cfg: EvalConfig, instr: pa.Table) -> tuple[pa.Table, str]:
    splits_art = store.latest("splits", cfg.dataset)
    if splits_art is None:
        raise EvalError(f"{cfg.dataset} has no splits table: build it (medhall.build) or evaluate with split=None")
    splits = splits_art.read(columns=["image_id", "split"])
    ids = splits.filter(pc.equal(splits.column("split"), cfg.split)).column("image_id")
    return instr.filter(pc.is_in(instr.column("image_id"), ids)), splits_art.fingerprint


def _ordered(table: pa.Table, cfg: EvalConfig) -> pa.Table:
    """By qa_id; with ``max_questions``, the first of a seeded order (stable as data grows)."""
    ids = table.column("qa_id").to_pylist()
    if cfg.max_questions is not None and cfg.max_questions < len(ids):
        rank = sorted(range(len(ids)), key=lambda i: sha256_hex(f"{cfg.seed}:{ids[i]}"))[: cfg.max_questions]
        table = table.take(pa.array(rank))
    return table.sort_by("qa_id")


def eval_run_id(cfg: EvalConfig, questions: Questions) -> str:
    """Run id: the config and the fingerprints of the questions' artifacts."""
    from medhall.ids import run_id

    return run_id("evaluate", cfg.model_dump(mode="json"), list(questions.inputs))


# --------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class EvalShard:
    key: str
    qa_ids: tuple[str, ...]


@dataclass(frozen=True)
class StagePlan:
    """What a planner decided: where the stage's shards live, which are still to do."""

    work_dir: Path
    run_id: str
    todo: tuple[EvalShard, ...]
    done: int  # questions already finished
    total: int


def answers_dir(store: ArtifactStore, cfg: EvalConfig) -> Path:
    return store.root / "work" / cfg.eval_dataset() / f"answers-{cfg.answer_key()}"


def judge_dir(store: ArtifactStore, cfg: EvalConfig, client: Any = None) -> Path:
    key = sha256_hex(canonical_json([cfg.answer_key(), judge_identity(cfg, client)]))[:16]
    return store.root / "work" / cfg.eval_dataset() / f"judge-{key}"


def finished(work_dir: Path) -> dict[str, list[str]]:
    """Finished shards: key -> the qa_ids it completed (from the completion markers)."""
    return {m.name[: -len(DONE_SUFFIX)]: json.loads(m.read_text())["done"] for m in (work_dir / "shards").glob(f"*{DONE_SUFFIX}")}


def _plan(work_dir: Path, wanted: Sequence[str], shard_size: int, run_id: str) -> StagePlan:
    (work_dir / "shards").mkdir(parents=True, exist_ok=True)
    done = {q for qs in finished(work_dir).values() for q in qs}
    todo_ids = sorted(set(wanted) - done)
    shards = tuple(
        EvalShard(sha256_hex(canonical_json(todo_ids[i : i + shard_size]))[:16], tuple(todo_ids[i : i + shard_size]))
        for i in range(0, len(todo_ids), shard_size)
    )
    return StagePlan(work_dir, run_id, shards, len(set(wanted) & done), len(set(wanted)))




def _write_shard(work_dir: Path, shard: EvalShard, table: pa.Table, done: Sequence[str]) -> Path:
    """The shard's rows, then its completion marker (last: a marker means the rows are there)."""
    out = work_dir / "shards" / f"{shard.key}.parquet"
    atomic.write_parquet(out, table)
    marker = {"done": sorted(done), "failed": sorted(set(shard.qa_ids) - set(done)), "rows": table.num_rows}
    atomic.write_bytes(work_dir / "shards" / f"{shard.key}{DONE_SUFFIX}", json.dumps(marker).encode())
    return out


def _latest_rows(work_dir: Path, keep: set[str]) -> Iterator[pa.Table]:
    """Rows of finished shards for ``keep``'s qa_ids; a qa_id in several shards (a failure
    retried later) keeps its newest row."""
    markers = sorted((work_dir / "shards").glob(f"*{DONE_SUFFIX}"), key=lambda m: m.stat().st_mtime_ns, reverse=True)
    seen: set[str] = set()
    for marker in markers:
        t = pq.read_table(marker.with_name(marker.name[: -len(DONE_SUFFIX)] + ".parquet"))
        ids = t.column("qa_id").to_pylist()
        take = [i for i, q in enumerate(ids) if q in keep and q not in seen]
        seen.update(ids[i] for i in take)
        if take:
            yield t.take(pa.array(take))


# --------------------------------------------------------------------------- answers


def plan_answers(store: ArtifactStore, cfg: EvalConfig) -> StagePlan:
    """The questions not answered yet (and failures worth asking again), in shards."""
    questions = load_questions(store, cfg)
    return _plan(answers_dir(store, cfg), questions.qa_ids, cfg.shard_size, eval_run_id(cfg, questions))


_RUNNERS: dict[str, Any] = {}


def _local_vlm(spec: LocalVLMSpec, name: str) -> Any:
    """One loaded local VLM per process (loading another unloads the previous one)."""
    from medhall.infer import LocalVLM

    key = canonical_json([spec.model_dump(mode="json"), name])
    if key not in _RUNNERS:
        for old in _RUNNERS.values():
            old.unload()
        _RUNNERS.clear()
        _RUNNERS[key] = LocalVLM(spec.path, dtype=spec.dtype, device=spec.device, batch_size=spec.batch_size,
                                 max_new_tokens=spec.max_new_tokens, adapter_path=spec.adapter,
                                 system_prompt=spec.system_prompt, name=name)
    return _RUNNERS[key]


def _api_model(store: ArtifactStore, cfg: EvalConfig, run_id: str, client: Any) -> tuple[Any, Any]:
    """(runner, client to close or None) for an api / text_llm model."""
    from medhall.endpoints import make_client
    from medhall.infer.api import APIModel

    spec = cfg.model
    own = None if client is not None else make_client(spec.llm, run_id=run_id, home=store.root)
    runner = APIModel(client or own, name=cfg.resolved_model_name(), max_tokens=spec.max_tokens,
                      system_prompt=spec.system_prompt, text_only=cfg.text_only(),
                      image_max_side=getattr(spec, "image_max_side", 1024))
    return runner, own


def _imported(cfg: EvalConfig, questions: Questions, qa_ids: Sequence[str], run_id: str) -> tuple[pa.Table, list[Any]]:
    """Imported answers for ``qa_ids``; a question the files do not answer is a failed row."""
    from medhall.evaluate.predictions import QuestionIndex, import_predictions

    rows = questions.rows()
    entries = [(r["kind"], key, r["qa_id"], r["question"]) for r in rows for key in {r["qa_id"], r["source_qa_id"]} if key]
    index = QuestionIndex([*entries, *((None, r["qa_id"], r["qa_id"], r["question"]) for r in rows)])
    tables, problems = [], []
    for path in cfg.model.paths:
        table, probs = import_predictions(path, cfg.resolved_model_name(), index=index, kind=cfg.model.file_kind, run_id=run_id)
        tables.append(table)
        problems += probs
    found = {r["qa_id"]: r for t in tables for r in t.to_pylist()}
    out = []
    for r in questions.rows(qa_ids):
        row = found.get(r["qa_id"]) or _missing_import(cfg, r, run_id)
        out.append(row)
    return schema.from_rows("predictions", out), problems


def _missing_import(cfg: EvalConfig, question: dict[str, Any], run_id: str) -> dict[str, Any]:
    from medhall.evaluate.predictions import prediction_id

    return {"pred_id": prediction_id(cfg.resolved_model_name(), question["qa_id"]), "qa_id": question["qa_id"],
            "model": cfg.resolved_model_name(), "question": question["question"], "answer": None, "status": "failed",
            "error": "not_answered: the imported files have no answer to this question", "origin": "import",
            "run_id": run_id}


def answer_shard(
    store: ArtifactStore, cfg: EvalConfig, work_dir: Path, shard: EvalShard, run_id: str, *, client: Any = None,
) -> pa.Table:
    """The model's answers to one shard, as ``predictions`` rows, written with a completion
    marker. Failed answers are kept (status failed, the reason in ``error``); those that may
    succeed another time are left out of the marker (:func:`final_answers`), so the next run
    asks them again. ``client``: an LLM client for api/text_llm."""
    from medhall.infer import Query, predictions_table

    questions = load_questions(store, cfg)
    rows = questions.rows(shard.qa_ids)
    if cfg.model.kind == "import":
        table, problems = _imported(cfg, questions, shard.qa_ids, run_id)
        _save_problems(work_dir, shard, problems, cfg, run_id)
    else:
        queries = [Query(r["qa_id"], r["question"], None if cfg.text_only() else (r["image_path"] or _absent(r))) for r in rows]
        runner, own = (_local_vlm(cfg.model, cfg.resolved_model_name()), None) if cfg.model.kind == "local_vlm" else _api_model(store, cfg, run_id, client)
        try:
            answers = runner.answer(queries)
        finally:
            if own is not None:
                own.close()
        origin = "local" if cfg.model.kind == "local_vlm" or (cfg.model.kind == "text_llm" and cfg.model.llm.backend == "transformers") else "api"
        table = predictions_table(cfg.resolved_model_name(), queries, answers, origin=origin, run_id=run_id)
    _write_shard(work_dir, shard, table, final_answers(table, imported=cfg.model.kind == "import"))
    return table


def final_answers(predictions: pa.Table, *, imported: bool = False) -> list[str]:
    """qa_ids whose answer will not change on a re-run: ok ones, and failures that are facts
    (a missing or undecodable image; with imported files, anything: the files are in the key).
    Other failures (a failed call, a generation error) are asked again by the next run."""
    return [r["qa_id"] for r in predictions.select(["qa_id", "status", "error"]).to_pylist()
            if imported or r["status"] == "ok" or (r["error"] or "").startswith(FINAL_ERRORS)]


def _absent(row: dict[str, Any]) -> str:
    """A path that does not exist, so the runner fails the item with ``missing_image``."""
    return f"<image {row['image_id']} not on disk>"


def _save_problems(work_dir: Path, shard: EvalShard, problems: list[Any], cfg: EvalConfig, run_id: str) -> None:
    from medhall.evaluate.predictions import problems_table

    table = problems_table(problems, stage="infer", source="import", dataset=cfg.eval_dataset(), run_id=run_id)
    pq.write_table(table, work_dir / "shards" / f"{shard.key}.quarantine.parquet")


def assemble_predictions(store: ArtifactStore, cfg: EvalConfig, work_dir: Path, run_id: str) -> Artifact:
    """Every question's newest answer from the finished shards, as the ``predictions`` artifact."""
    questions = load_questions(store, cfg)
    config = {"evaluate": cfg.model_dump(mode="json"), "answer_key": cfg.answer_key()}
    art = store.write("predictions", _latest_rows(work_dir, set(questions.qa_ids)), dataset=cfg.eval_dataset(),
                      config=config, inputs=list(questions.inputs), run_id=run_id)
    problems = [pq.read_table(p) for p in sorted((work_dir / "shards").glob("*.quarantine.parquet"))]
    if problems:
        store.write("quarantine", problems, dataset=cfg.eval_dataset(), config=config, inputs=list(questions.inputs), run_id=run_id)
    return art


def read_predictions(store: ArtifactStore, cfg: EvalConfig, qa_ids: Sequence[str] | None = None) -> pa.Table:
    """This model's assembled answers (optionally for some questions)."""
    table = store.read("predictions", cfg.eval_dataset())
    table = table.filter(pc.equal(table.column("model"), cfg.resolved_model_name()))
    if qa_ids is not None:
        table = table.filter(pc.is_in(table.column("qa_id"), pa.array(list(qa_ids), pa.string())))
    return table


# --------------------------------------------------------------------------- judge


@dataclass(frozen=True)
class Anchor:
    """A baseline's answer to a question and its judgment: the judge's in-context anchor."""

    model: str
    answer: str
    scores: Any  # JudgeScores


def load_anchors(store: ArtifactStore, model: str, qa_ids: Sequence[str], judge_model: str | None = None) -> dict[str, Anchor]:
    """The baseline ``model``'s ok answers and ok judgments for ``qa_ids``, from any dataset of
    the store (its own evaluation, or release judgments brought in with :func:`import_baseline`);
    judgments by ``judge_model`` are preferred."""
    from medhall.evaluate.judge import AXES, JudgeScores

    wanted = pa.array(list(qa_ids), pa.string())
    answers: dict[str, str] = {}
    judged: dict[str, tuple[bool, Any]] = {}
    for ds in store.datasets():
        for row in _ok_rows(store, "predictions", ds, model, wanted, ["qa_id", "answer"]):
            answers.setdefault(row["qa_id"], row["answer"])
        for row in _ok_rows(store, "judgments", ds, model, wanted, ["qa_id", "judge_model", "explanation", *AXES]):
            preferred = row["judge_model"] == judge_model
            if row["qa_id"] not in judged or (preferred and not judged[row["qa_id"]][0]):
                judged[row["qa_id"]] = (preferred, JudgeScores(**{a: row[a] for a in AXES}, explanation=row["explanation"] or ""))
    return {q: Anchor(model, answers[q], s) for q, (_, s) in judged.items() if answers.get(q)}


def _ok_rows(store: ArtifactStore, table: str, dataset: str, model: str, qa_ids: pa.Array, columns: list[str]) -> list[dict[str, Any]]:
    art = store.latest(table, dataset)
    if art is None:
        return []
    t = art.read(columns=[*columns, "model", "status"])
    mask = pc.and_(pc.and_(pc.equal(t.column("model"), model), pc.equal(t.column("status"), "ok")), pc.is_in(t.column("qa_id"), qa_ids))
    return t.filter(mask).select(columns).to_pylist()


def plan_judging(store: ArtifactStore, cfg: EvalConfig, run_id: str, client: Any = None) -> StagePlan:
    """The ok answers not judged yet, in shards. A judgment that failed for want of a reply (the
    call failed) is judged again; one whose reply did not parse is final for this config."""
    questions = load_questions(store, cfg)
    preds = read_predictions(store, cfg, questions.qa_ids)
    ok = preds.filter(pc.equal(preds.column("status"), "ok")).column("qa_id").to_pylist()
    return _plan(judge_dir(store, cfg, client), ok, cfg.shard_size, run_id)


@dataclass(frozen=True)
class _JudgeItem:
    qa_id: str
    messages: list[dict[str, str]]
    anchor_model: str | None


def judge_shard(
    store: ArtifactStore, cfg: EvalConfig, work_dir: Path, shard: EvalShard, run_id: str, *, client: Any = None,
) -> pa.Table:
    """Judge one shard's answers through the LLM layer (temperature 0, cached), anchored on the
    baseline's judged answer where there is one; every answer gives a ``judgments`` row."""
    from medhall.endpoints import make_client
    from medhall.evaluate.judge import judgment_row, load_rubric

    rubric = load_rubric(cfg.rubric_version)
    judge_model = judge_model_name(cfg, client)
    items = _judge_items(store, cfg, shard, rubric, judge_model)
    own = None if client is not None else make_client(cfg.judge, run_id=run_id, home=store.root)
    try:
        outcomes = _run_async(lambda: _judge_all(client or own, items, cfg, rubric.hash))
    finally:
        if own is not None:
            own.close()
    rows = [judgment_row(qa_id=it.qa_id, model=cfg.resolved_model_name(), judge_model=judge_model, rubric_hash=rubric.hash,
                         outcome=o, anchor_model=it.anchor_model, run_id=run_id) for it, o in zip(items, outcomes, strict=True)]
    table = schema.from_rows("judgments", rows)
    final = [r["qa_id"] for r in rows if r["status"] == "ok" or r["raw"] is not None]
    _write_shard(work_dir, shard, table, final)
    return table


def _judge_items(store: ArtifactStore, cfg: EvalConfig, shard: EvalShard, rubric: Any, judge_model: str) -> list[_JudgeItem]:
    from medhall.evaluate.judge import build_judge_messages

    questions = {r["qa_id"]: r for r in load_questions(store, cfg).rows(shard.qa_ids)}
    answers = {r["qa_id"]: r["answer"] for r in read_predictions(store, cfg, shard.qa_ids).to_pylist() if r["status"] == "ok"}
    anchors: dict[str, Anchor] = {}
    if cfg.baseline_model and cfg.baseline_model != cfg.resolved_model_name():
        anchors = load_anchors(store, cfg.baseline_model, shard.qa_ids, judge_model)
    items = []
    for qa in shard.qa_ids:
        q, anchor = questions[qa], anchors.get(qa)
        messages = build_judge_messages(q["caption"], q["question"], answers[qa], q["answer"],
                                        anchor.answer if anchor else None, anchor.scores if anchor else None, rubric=rubric)
        items.append(_JudgeItem(qa, messages, anchor.model if anchor else None))
    return items


async def _judge_all(client: Any, items: Sequence[_JudgeItem], cfg: EvalConfig, rubric_hash: str) -> list[Any]:
    try:
        return list(await asyncio.gather(*(_judge_one(client, it, cfg, rubric_hash) for it in items)))
    finally:
        await client.backend.aclose()


async def _judge_one(client: Any, item: _JudgeItem, cfg: EvalConfig, rubric_hash: str) -> Any:
    """:func:`judge_with_retries` over the layer: a retry after a reply that did not parse shows
    the judge its reply and the reason (a new request, cached on its own); a retry after a
    failed call resends the request (failures are not cached)."""
    from medhall.evaluate.judge import JudgeParseError, judge_with_retries, parse_judge_reply
    from medhall.llm import ChatRequest, Message

    errors: list[str] = []
    last: list[str] = []

    async def ask(messages: list[dict[str, str]], attempt: int) -> str | None:
        if attempt and last:
            try:
                parse_judge_reply(last[-1])
                reason = "unknown"
            except JudgeParseError as e:
                reason = str(e)
            messages = [*messages, {"role": "assistant", "content": last[-1]}, {"role": "user", "content": REPAIR_NOTE.format(reason=reason)}]
        request = ChatRequest(messages=[Message(role=m["role"], content=m["content"]) for m in messages], temperature=0.0,
                              max_tokens=cfg.judge_max_tokens, stage="judge", template_hash=rubric_hash)
        result = await client.acomplete(request)
        if result.text is not None and (result.ok or result.error_kind == "truncated"):
            last.append(result.text)
            return result.text
        errors.append(f"{result.error_kind or 'failed'}: {result.error or 'no reply'}")
        return None

    outcome = await judge_with_retries(ask, item.messages, cfg.judge_attempts)
    if not outcome.ok and outcome.raw is None and errors:
        outcome = replace(outcome, error=errors[-1])
    return outcome


T = TypeVar("T")


def _run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion, in a worker thread when an event loop is running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]


def assemble_judgments(store: ArtifactStore, cfg: EvalConfig, work_dir: Path, run_id: str) -> Artifact:
    """Every judged answer's newest judgment from the finished shards, as the ``judgments`` artifact."""
    questions = load_questions(store, cfg)
    config = {"evaluate": cfg.model_dump(mode="json"), "judge_dir": work_dir.name}
    pred_fp = store.get("predictions", cfg.eval_dataset()).fingerprint
    return store.write("judgments", _latest_rows(work_dir, set(questions.qa_ids)), dataset=cfg.eval_dataset(),
                       config=config, inputs=[pred_fp], run_id=run_id)


# --------------------------------------------------------------------------- metrics


def compute_metrics(store: ArtifactStore, cfg: EvalConfig, run_id: str) -> tuple[Artifact, list[str]]:
    """Reference-based metrics of this model's answers against the ground truth, as the
    ``scores`` artifact; returns it and the qa_ids left out (failed answers, no reference)."""
    from medhall.evaluate.text_metrics import score_predictions

    questions = load_questions(store, cfg)
    preds = read_predictions(store, cfg, questions.qa_ids)
    refs = {r["qa_id"]: r["answer"] for r in questions.rows()}
    scores, skipped = score_predictions(preds, refs, cfg.metric_names(), run_id=run_id,
                                        bertscore_model=cfg.bertscore_encoder, bertscore_layers=cfg.bertscore_layers,
                                        wordnet_cache=store.root / "cache")
    config = {"evaluate": cfg.model_dump(mode="json"), "metrics": cfg.metric_names()}
    pred_fp = store.get("predictions", cfg.eval_dataset()).fingerprint
    art = store.write("scores", scores, dataset=cfg.eval_dataset(), config=config, inputs=[pred_fp], run_id=run_id)
    return art, skipped


# --------------------------------------------------------------------------- report


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote and the tables it rendered."""

    markdown_path: Path
    csv_path: Path
    png_path: Path
    markdown: str
    table: pa.Table
    comparison: pa.Table | None = None
    compare_paths: dict[str, Path] = field(default_factory=dict)


def reports_dir(store: ArtifactStore, cfg: EvalConfig) -> Path:
    return store.root / "reports" / cfg.eval_dataset()


def _model_tables(store: ArtifactStore, cfg: EvalConfig, model: str, dataset: str, qa_ids: Sequence[str],
                  judge_model: str | None, rubric_hash: str | None) -> tuple[pa.Table | None, pa.Table | None]:
    """(judgments, scores) of ``model`` in ``dataset`` for ``qa_ids``; judgments only by this
    judge and rubric (None when no judge ran); scores of this run's metrics only."""
    wanted = pa.array(list(qa_ids), pa.string())

    def latest(table: str) -> pa.Table | None:
        art = store.latest(table, dataset)
        if art is None:
            return None
        t = art.read()
        return t.filter(pc.and_(pc.equal(t.column("model"), model), pc.is_in(t.column("qa_id"), wanted)))

    judgments = latest("judgments") if judge_model else None
    if judgments is not None:
        judgments = judgments.filter(pc.and_(pc.equal(judgments.column("judge_model"), judge_model),
                                             pc.equal(judgments.column("rubric_hash"), rubric_hash)))
    scores = latest("scores")
    if scores is not None:
        scores = scores.filter(pc.is_in(scores.column("metric"), pa.array(cfg.metric_names(), pa.string())))
    return judgments, scores


def build_report_table(store: ArtifactStore, cfg: EvalConfig, questions: Questions, *, model: str | None = None,
                       dataset: str | None = None, judge_model: str | None = None) -> pa.Table:
    """Table 2 rows (:func:`medhall.evaluate.report.table2`) of one model on the questions."""
    from medhall.evaluate.judge import load_rubric
    from medhall.evaluate.report import table2

    rows = questions.rows()
    judgments, scores = _model_tables(store, cfg, model or cfg.resolved_model_name(), dataset or cfg.eval_dataset(),
                                      questions.qa_ids, judge_model, load_rubric(cfg.rubric_version).hash)
    return table2(judgments, scores, {r["qa_id"]: r["kind"] for r in rows},
                  categories={r["qa_id"]: r["category"] for r in rows}, modalities={r["qa_id"]: r["modality"] for r in rows},
                  n_boot=cfg.n_boot, seed=cfg.seed)


def write_report(store: ArtifactStore, cfg: EvalConfig, run_id: str, *, judge_model: str | None = None,
                 compare_with: str | None = None) -> ReportFiles:
    """Table 2 with intervals, breakdowns and (``compare_with``: another model evaluated on the
    same questions) a side-by-side comparison: Markdown, CSV and PNG under
    ``<home>/reports/<eval dataset>/``. ``judge_model``: the judge of this run (None: no judge)."""
    from medhall.evaluate.report import compare, plot_report, write_csv

    questions = load_questions(store, cfg)
    table = build_report_table(store, cfg, questions, judge_model=judge_model)
    out = reports_dir(store, cfg)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(table, out / "report.csv")
    png_path = plot_report(table, out / "report.png", title=f"{cfg.resolved_model_name()} on {cfg.dataset} ({cfg.split or 'all'})")
    comparison, compare_paths, other_note = None, {}, None
    if compare_with:
        other_ds = eval_dataset_name(cfg.dataset, cfg.split, compare_with, cfg.max_questions)
        if store.latest("predictions", other_ds) is None:
            other_note = f"No evaluation of `{compare_with}` on these questions (eval dataset `{other_ds}`): nothing to compare."
        else:
            other = build_report_table(store, cfg, questions, model=compare_with, dataset=other_ds, judge_model=judge_model)
            comparison = compare(other, table)
            compare_paths = {"csv": write_csv(comparison, out / f"compare-{_slug(compare_with)}.csv"),
                             "png": plot_report(pa.concat_tables([other, table]), out / f"compare-{_slug(compare_with)}.png",
                                                title=f"{compare_with} vs {cfg.resolved_model_name()}")}
    markdown = render_markdown(store, cfg, questions, table, judge_model=judge_model, comparison=comparison,
                               compare_with=compare_with, note=other_note, files={"CSV": csv_path, "chart": png_path, **compare_paths})
    md_path = out / "report.md"
    atomic.write_bytes(md_path, markdown.encode())
    return ReportFiles(md_path, csv_path, png_path, markdown, table, comparison, compare_paths)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def render_markdown(store: ArtifactStore, cfg: EvalConfig, questions: Questions, table: pa.Table, *,
                    judge_model: str | None, comparison: pa.Table | None = None, compare_with: str | None = None,
                    note: str | None = None, files: dict[str, Any] | None = None) -> str:
    """The report in Markdown: what was evaluated and how, Table 2, breakdowns, comparison."""
    from medhall.evaluate.report import markdown_compare, markdown_pn, markdown_table

    preds = read_predictions(store, cfg, questions.qa_ids)
    parts = [_header(cfg, questions, preds), _judge_section(store, cfg, questions, judge_model), _metrics_section(cfg)]
    parts.append("## Table 2 (P = non-hallucination, N = hallucination questions)\n\n" + markdown_pn(table))
    parts.append("## Overall, with bootstrap 95 % intervals\n\n" + markdown_table(table, "overall"))
    for breakdown in ("category", "modality"):
        if any(r == breakdown for r in table.column("breakdown").to_pylist()):
            parts.append(f"## By {breakdown}\n\n" + markdown_table(table, breakdown))
    if comparison is not None:
        parts.append(f"## {compare_with} vs {cfg.resolved_model_name()} (Δ = this run − {compare_with})\n\n"
                     + markdown_compare(comparison, labels=(compare_with or "a", cfg.resolved_model_name())))
    elif note:
        parts.append(f"## Comparison\n\n{note}\n")
    parts.append(_files_section(cfg, files or {}))
    return "\n".join(parts)


def _header(cfg: EvalConfig, questions: Questions, preds: pa.Table) -> str:
    kinds = Counter(r["kind"] for r in questions.rows())
    rows = preds.to_pylist()
    failed = [r for r in rows if r["status"] != "ok"]
    truncated = sum(1 for r in rows if r["meta"] and json.loads(r["meta"]).get("truncated"))
    lines = [f"# Evaluation: {cfg.resolved_model_name()} on {cfg.dataset} ({cfg.split or 'all'} split)", ""]
    if cfg.text_only():
        lines += ["**Text-only baseline: this model did not see the image** (nor the caption). It answered "
                  "from the question alone, so its scores measure language priors, not image understanding.", ""]
    lines += [
        f"- Model: `{cfg.resolved_model_name()}` ({_model_words(cfg)})",
        f"- Questions: {questions.table.num_rows} (P {kinds.get('positive', 0)}, N {kinds.get('negative', 0)})"
        + (f", a seeded sample of {cfg.max_questions}" if cfg.max_questions else ""),
        f"- Answers: {len(rows) - len(failed)} ok, {len(failed)} failed"
        + (f" ({_reasons(r['error'] for r in failed)})" if failed else "")
        + (f"; {truncated} cut at the token limit (kept)" if truncated else ""),
    ]
    missing = questions.table.num_rows - len(rows)
    if missing:
        lines.append(f"- Not answered yet: {missing} (an unfinished run; re-run to complete)")
    return "\n".join(lines) + "\n"


def _model_words(cfg: EvalConfig) -> str:
    spec = cfg.model
    if spec.kind == "local_vlm":
        return f"local VLM `{spec.path}`" + (f" + adapter `{spec.adapter}`" if spec.adapter else "") + ", greedy"
    if spec.kind == "import":
        return f"answers imported from {len(spec.paths)} file(s)"
    where = "embedded local model" if spec.llm.backend == "transformers" else f"OpenAI-compatible endpoint ({spec.llm.base_url or 'MEDHALL_LLM_BASE_URL'})"
    return f"{where}, temperature 0, at most {spec.max_tokens} tokens"


def _reasons(errors: Any) -> str:
    counts = Counter((e or "unknown").split(":", 1)[0] for e in errors)
    return ", ".join(f"{k}: {v}" for k, v in counts.most_common())


def _judge_section(store: ArtifactStore, cfg: EvalConfig, questions: Questions, judge_model: str | None) -> str:
    if judge_model is None:
        return ("## Clinical judge: not run\n\n**The judge scores need a judge endpoint** and were not computed: "
                "Clinical Accuracy, Clinical Relevance, Detail Level and Risk Level (the paper's GPT-4o judge). "
                f"To add them, {JUDGE_ENV_HELP}.\n")
    from medhall.evaluate.judge import load_rubric

    judgments, _ = _model_tables(store, cfg, cfg.resolved_model_name(), cfg.eval_dataset(), questions.qa_ids,
                                 judge_model, load_rubric(cfg.rubric_version).hash)
    rows = judgments.to_pylist() if judgments is not None else []
    failed = [r for r in rows if r["status"] != "ok"]
    anchored = sum(1 for r in rows if r["anchor_model"])
    lines = [
        "## Clinical judge", "",
        f"- Judge: `{judge_model}`, temperature 0, rubric {cfg.rubric_version} (hash `{load_rubric(cfg.rubric_version).hash}`), "
        f"up to {cfg.judge_attempts} calls per answer",
        f"- Anchor: {anchored} of {len(rows)} judgments anchored on `{cfg.baseline_model}`'s judged answer"
        if cfg.baseline_model else "- Anchor: none (judged without a sample answer; `anchor_model` is null)",
        f"- Judgments: {len(rows) - len(failed)} ok, **{len(failed)} failed**"
        + (f" ({_reasons(_judge_reason(r) for r in failed)}); failed judgments are counted in the tables' "
           "`failed` column and never averaged in (raw replies in `judgments.raw`)" if failed else ""),
    ]
    return "\n".join(lines) + "\n"


def _judge_reason(row: dict[str, Any]) -> str:
    error = row.get("error") or ""
    return error.removeprefix("parse failed: ") or "unknown"


def _metrics_section(cfg: EvalConfig) -> str:
    from medhall.evaluate.report import MEASURE_LABELS
    from medhall.evaluate.text_metrics import bertscore_params

    names = cfg.metric_names()
    labels = {"meteor": "METEOR", "bertscore_f1": "BERTScore F1"}
    shown = ", ".join(labels.get(n, MEASURE_LABELS.get(n, n)) for n in names)
    lines = ["## Reference-based metrics (no judge needed)", "", f"- Computed: {shown}"]
    if "bertscore_f1" in names:
        p = bertscore_params(cfg.bertscore_encoder, cfg.bertscore_layers)
        lines.append(f"- BERTScore encoder: `{p['encoder']}` (layer {p['num_layers']}, {p['encoder_origin']}); "
                     "values from different encoders are not comparable (the paper used roberta-large)")
    return "\n".join(lines) + "\n"


def _files_section(cfg: EvalConfig, files: dict[str, Any]) -> str:
    view = re.sub(r"[^A-Za-z0-9_]", "_", cfg.eval_dataset())
    lines = ["## Files and queries", ""] + [f"- {k}: `{v}`" for k, v in files.items()]
    lines += [f"- Rows: `medhall sql \"select * from scores__{view}\"` (also `predictions__{view}`, `judgments__{view}`)"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- whole runs


@dataclass
class EvalResult:
    """What :func:`run_eval` did and wrote."""

    eval_dataset: str
    run_id: str
    model: str
    artifacts: dict[str, Artifact]
    report: ReportFiles
    answered: int  # answers computed in this run (0 on a resumed, finished run)
    judged: int  # judgments computed in this run
    skipped_metrics: list[str]
    seconds: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        """A plain summary (paths as strings, artifacts by name)."""
        return {
            "eval_dataset": self.eval_dataset, "run_id": self.run_id, "model": self.model,
            "artifacts": {k: a.name for k, a in self.artifacts.items()},
            "report": str(self.report.markdown_path), "csv": str(self.report.csv_path), "png": str(self.report.png_path),
            "answered": self.answered, "judged": self.judged, "skipped_metrics": len(self.skipped_metrics),
            "seconds": self.seconds,
        }


def run_eval(store: ArtifactStore, cfg: EvalConfig, *, client: Any = None, judge_client: Any = None,
             compare_with: str | None = None, max_shards: int | None = None) -> EvalResult:
    """The whole evaluation in one process (what the flow does with tasks).

    ``client``: an :class:`medhall.llm.LLMClient` for an api / text_llm model under test;
    ``judge_client``: one for the judge (judging runs when ``cfg.judge`` or this is given);
    ``max_shards``: stop answering after that many shards (as a killed run would).
    """
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    plan = plan_answers(store, cfg)
    for i, shard in enumerate(plan.todo):
        if max_shards is not None and i >= max_shards:
            raise EvalError(f"stopped after {i} answer shard(s) (max_shards)")
        answer_shard(store, cfg, plan.work_dir, shard, plan.run_id, client=client)
    arts = {"predictions": assemble_predictions(store, cfg, plan.work_dir, plan.run_id)}
    seconds["answers"] = time.perf_counter() - t0
    judged, judge_model = 0, None
    if cfg.judge is not None or judge_client is not None:
        t1 = time.perf_counter()
        judge_model = judge_model_name(cfg, judge_client)
        jplan = plan_judging(store, cfg, plan.run_id, judge_client)
        for shard in jplan.todo:
            judged += judge_shard(store, cfg, jplan.work_dir, shard, plan.run_id, client=judge_client).num_rows
        arts["judgments"] = assemble_judgments(store, cfg, jplan.work_dir, plan.run_id)
        seconds["judge"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    arts["scores"], skipped = compute_metrics(store, cfg, plan.run_id)
    seconds["metrics"] = time.perf_counter() - t2
    if (ledger := write_ledger(store, cfg, plan.run_id, client or judge_client)) is not None:
        arts["llm_calls"] = ledger
    t3 = time.perf_counter()
    report = write_report(store, cfg, plan.run_id, judge_model=judge_model, compare_with=compare_with)
    seconds["report"] = time.perf_counter() - t3
    seconds["total"] = time.perf_counter() - t0
    answered = sum(len(s.qa_ids) for s in plan.todo)
    return EvalResult(cfg.eval_dataset(), plan.run_id, cfg.resolved_model_name(), arts, report, answered, judged, skipped, seconds)


def write_ledger(store: ArtifactStore, cfg: EvalConfig, run_id: str, client: Any = None) -> Artifact | None:
    """This run's LLM calls (from ``client``'s cache, else the store's) as ``llm_calls`` rows."""
    from medhall.schema import from_rows

    if client is not None:
        rows = client.ledger_table(client.run_id)
    else:
        path = store.root / "llm" / "cache.sqlite"
        if not path.exists():
            return None
        from medhall.llm import ResponseCache

        cache = ResponseCache(path)
        try:
            rows = from_rows("llm_calls", cache.ledger_rows(run_id))
        finally:
            cache.close()
    if rows.num_rows == 0:
        return None
    return store.write("llm_calls", rows, dataset=cfg.eval_dataset(), config={"evaluate": cfg.model_dump(mode="json")}, run_id=run_id)


def import_baseline(store: ArtifactStore, dataset: str, files: Sequence[str | Path], *, model: str | None = None,
                    judge_model: str | None = None) -> str:
    """Bring a baseline's answers and judge outputs from MedHallTune release prediction files
    (``llava-med-prediction-*-GPT4o-eval-filtered.jsonl``) into the store, so that
    ``baseline_model`` can anchor the judge; returns the dataset written
    (``<dataset>-baseline-<model>``)."""
    from medhall.evaluate.predictions import (
        RELEASE_JUDGE,
        RELEASE_MODEL,
        import_predictions,
        import_release_judgments,
    )

    model, judge_model = model or RELEASE_MODEL, judge_model or RELEASE_JUDGE
    target = f"{dataset}-baseline-{_slug(model)}"[:64]
    preds = pa.concat_tables([import_predictions(f, model)[0] for f in files])
    judgments = pa.concat_tables([import_release_judgments(f, judge_model, model) for f in files])
    inputs = [file_sha256(f) for f in files]
    config = {"files": [str(f) for f in files], "model": model, "judge_model": judge_model}
    store.write("predictions", preds, dataset=target, config=config, inputs=inputs)
    store.write("judgments", judgments, dataset=target, config=config, inputs=inputs)
    return target


def default_eval_config(dataset: str = "sample-instruct", *, judge: LLMSettings | None = None,
                        max_questions: int | None = None) -> EvalConfig:
    """The main job's evaluation: the embedded SmolLM2 text-only baseline on the test split,
    at most 48 new tokens per answer, METEOR + ROUGE + BERTScore (shipped MiniLM)."""
    return EvalConfig(dataset=dataset, split="test", model=TextLLMSpec(max_tokens=48), judge=judge,
                      metrics=DEFAULT_METRICS, max_questions=max_questions)


def evaluate_default(store: ArtifactStore, dataset: str = "sample-instruct", *, judge: LLMSettings | None = None,
                     max_questions: int | None = None) -> dict[str, Any]:
    """The main job's evaluation on the embedded default (after :func:`medhall.jobs.run_default`):
    the embedded SmolLM2-135M-Instruct answers the test split's questions without the image (a
    text-only baseline), scored with METEOR, ROUGE-1/2/L and BERTScore; the report says which
    scores need a judge endpoint and how to give one (``judge``: run the judge too).
    ``max_questions`` caps the questions (a seeded sample). Returns :meth:`EvalResult.as_dict`
    plus ``summary`` (the Table 2 P&N line) and ``judge_help``."""
    from medhall.evaluate.report import markdown_pn

    result = run_eval(store, default_eval_config(dataset, judge=judge, max_questions=max_questions))
    out = result.as_dict()
    out["summary"] = markdown_pn(result.report.table)
    out["judge_help"] = None if judge else f"Judge scores need a judge endpoint: {JUDGE_ENV_HELP}."
    return out


__all__ = [
    "APISpec",
    "EvalConfig",
    "EvalError",
    "EvalResult",
    "ImportSpec",
    "LocalVLMSpec",
    "ModelSpec",
    "TextLLMSpec",
    "answer_shard",
    "assemble_judgments",
    "assemble_predictions",
    "compute_metrics",
    "default_eval_config",
    "eval_dataset_name",
    "evaluate_default",
    "import_baseline",
    "judge_shard",
    "load_anchors",
    "load_questions",
    "plan_answers",
    "plan_judging",
    "run_eval",
    "write_ledger",
    "write_report",
]
