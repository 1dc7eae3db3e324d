"""The answers stage: the model under test answers the questions, shard by shard.

:func:`plan_answers` plans the questions not answered yet (:mod:`medhall.shards`);
:func:`answer_shard` runs a local VLM, an API model, the text-only baseline or imports
answers made elsewhere, and writes the shard with its completion marker; failures that may
succeed another time are left undone, so the next run asks them again;
:func:`assemble_predictions` streams each question's newest answer into ``predictions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medhall import schema, shards
from medhall.evaluate.config import EvalConfig, LocalVLMSpec
from medhall.evaluate.questions import Questions, eval_run_id, load_questions
from medhall.ids import canonical_json
from medhall.shards import Shard
from medhall.store import Artifact, ArtifactStore

#: Answer failures that a re-run would repeat (the shard marks them done).
FINAL_ERRORS = ("missing_image", "corrupt_image")


@dataclass(frozen=True)
class StagePlan:
    """What a planner decided: where the stage's shards live, which are still to do."""

    work_dir: Path
    run_id: str
    todo: tuple[Shard, ...]  # keys and ids: qa_ids
    done: int  # questions already finished
    total: int


def plan_stage(work_dir: Path, qa_ids: Sequence[str], shard_size: int, run_id: str) -> StagePlan:
    """The questions of ``qa_ids`` no finished shard of ``work_dir`` did, in shards."""
    p = shards.plan(work_dir, ((q, q) for q in qa_ids), shard_size)
    return StagePlan(p.work_dir, run_id, p.todo, p.units_done, p.units)


def qa_shard(key: str, qa_ids: Sequence[str]) -> Shard:
    """The shard ``key`` of these questions (as a task receives it)."""
    return Shard(key, tuple(qa_ids), tuple(qa_ids))


def answers_dir(store: ArtifactStore, cfg: EvalConfig) -> Path:
    return store.root / "work" / cfg.eval_dataset() / f"answers-{cfg.answer_key()}"


def plan_answers(store: ArtifactStore, cfg: EvalConfig) -> StagePlan:
    """The questions not answered yet (and failures worth asking again), in shards."""
    questions = load_questions(store, cfg)
    return plan_stage(answers_dir(store, cfg), questions.qa_ids, cfg.shard_size, eval_run_id(cfg, questions))


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
    store: ArtifactStore, cfg: EvalConfig, work_dir: Path, shard: Shard, run_id: str, *, client: Any = None,
) -> pa.Table:
    """The model's answers to one shard, as ``predictions`` rows, written with a completion
    marker. Failed answers are kept (status failed, the reason in ``error``); those that may
    succeed another time are left out of the marker (:func:`final_answers`), so the next run
    asks them again. ``client``: an LLM client for api/text_llm."""
    from medhall.infer import Query, predictions_table

    questions = load_questions(store, cfg)
    rows = questions.rows(shard.ids)
    outputs: dict[str | None, pa.Table] = {}
    if cfg.model.kind == "import":
        table, problems = _imported(cfg, questions, shard.ids, run_id)
        outputs["quarantine"] = _problems(problems, cfg, run_id)
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
    done = final_answers(table, imported=cfg.model.kind == "import")
    shards.write(work_dir, shard, {None: table, **outputs}, done=done, failed=set(shard.ids) - set(done))
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


def _problems(problems: list[Any], cfg: EvalConfig, run_id: str) -> pa.Table:
    from medhall.evaluate.predictions import problems_table

    return problems_table(problems, stage="infer", source="import", dataset=cfg.eval_dataset(), run_id=run_id)


def assemble_predictions(store: ArtifactStore, cfg: EvalConfig, work_dir: Path, run_id: str) -> Artifact:
    """Every question's newest answer from the finished shards, as the ``predictions`` artifact."""
    questions = load_questions(store, cfg)
    config = {"evaluate": cfg.model_dump(mode="json"), "answer_key": cfg.answer_key()}
    art = store.write("predictions", shards.read(work_dir, questions.qa_ids, id_column="qa_id"), dataset=cfg.eval_dataset(),
                      config=config, inputs=list(questions.inputs), run_id=run_id)
    paths = sorted(shards.output_path(work_dir, m.key, "quarantine") for m in shards.finished(work_dir))
    problems = [pq.read_table(p) for p in paths if p.exists()]
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


