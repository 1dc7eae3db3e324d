"""The judge stage: the clinical LLM judge scores each ok answer, shard by shard.

Anchored on a baseline's judged answer where there is one (the paper's practice), through the
LLM layer (temperature 0, cached, retried); a reply that does not parse is shown to the judge
with the reason and asked again, and stored as a failed judgment with its raw text if it
never parses. Shards follow :mod:`medhall.shards`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from medhall import schema, shards
from medhall.evaluate.answers import StagePlan, plan_stage, read_predictions
from medhall.evaluate.config import EvalConfig, judge_identity, judge_model_name
from medhall.evaluate.questions import load_questions
from medhall.ids import canonical_json, sha256_hex
from medhall.shards import Shard
from medhall.store import Artifact, ArtifactStore

REPAIR_NOTE = (
    "Your reply could not be read ({reason}). Reply again in the required format: the first line "
    "is exactly four integers from 1 to 10 separated by spaces (Clinical Accuracy, Clinical "
    "Relevance, Detail Level, Risk Level), then your explanation."
)



def judge_dir(store: ArtifactStore, cfg: EvalConfig, client: Any = None) -> Path:
    """The judge stage's work folder, keyed by the answers, the judge and the reply-parsing
    policy (judgments read under an older policy are judged again, mostly from the cache)."""
    from medhall.evaluate.judge import PARSER_VERSION

    key = sha256_hex(canonical_json([cfg.answer_key(), judge_identity(cfg, client), {"parser": PARSER_VERSION}]))[:16]
    return store.root / "work" / cfg.eval_dataset() / f"judge-{key}"


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
    return plan_stage(judge_dir(store, cfg, client), ok, cfg.shard_size, run_id)


@dataclass(frozen=True)
class _JudgeItem:
    qa_id: str
    messages: list[dict[str, str]]
    anchor_model: str | None


def judge_shard(
    store: ArtifactStore, cfg: EvalConfig, work_dir: Path, shard: Shard, run_id: str, *, client: Any = None,
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
    shards.write(work_dir, shard, {None: table}, done=final, failed=set(shard.ids) - set(final))
    return table


def _judge_items(store: ArtifactStore, cfg: EvalConfig, shard: Shard, rubric: Any, judge_model: str) -> list[_JudgeItem]:
    from medhall.evaluate.judge import build_judge_messages

    questions = {r["qa_id"]: r for r in load_questions(store, cfg).rows(shard.ids)}
    answers = {r["qa_id"]: r["answer"] for r in read_predictions(store, cfg, shard.ids).to_pylist() if r["status"] == "ok"}
    anchors: dict[str, Anchor] = {}
    if cfg.baseline_model and cfg.baseline_model != cfg.resolved_model_name():
        anchors = load_anchors(store, cfg.baseline_model, shard.ids, judge_model)
    items = []
    for qa in shard.ids:
        q, anchor = questions[qa], anchors.get(qa)
        messages = build_judge_messages(q["caption"], q["question"], answers[qa], q["answer"],
                                        anchor.answer if anchor else None, anchor.scores if anchor else None, rubric=rubric)
        items.append(_JudgeItem(qa, messages, anchor.model if anchor else None))
    return items


async def _judge_all(client: Any, items: Sequence[_JudgeItem], cfg: EvalConfig, rubric_hash: str) -> list[Any]:
    from medhall.llm.progress import ItemProgress

    with ItemProgress(len(items), "judging", unit="judgments") as bar:
        async def one(item: _JudgeItem) -> Any:
            outcome = await _judge_one(client, item, cfg, rubric_hash)
            bar.advance()
            return outcome

        try:
            return list(await asyncio.gather(*(one(it) for it in items)))
        finally:
            await client.backend.aclose()


async def _judge_one(client: Any, item: _JudgeItem, cfg: EvalConfig, rubric_hash: str) -> Any:
    """:func:`judge_with_retries` over the layer: a retry after a reply that did not parse shows
    the judge its reply and the reason (a new request, cached on its own); a retry after a
    failed call resends the request (failures are not cached). A reply cut at max_tokens
    (finish_reason "length") is kept as the raw reply but never parsed (``truncated_reply``)."""
    from medhall.evaluate.judge import JudgeParseError, JudgeReply, judge_with_retries, parse_reply
    from medhall.llm import ChatRequest, Message

    errors: list[str] = []
    last: list[JudgeReply] = []

    async def ask(messages: list[dict[str, str]], attempt: int) -> JudgeReply | None:
        if attempt and last:
            try:
                parse_reply(last[-1])
                reason = "unknown"
            except JudgeParseError as e:
                reason = str(e)
            messages = [*messages, {"role": "assistant", "content": last[-1].text},
                        {"role": "user", "content": REPAIR_NOTE.format(reason=reason)}]
        request = ChatRequest(messages=[Message(role=m["role"], content=m["content"]) for m in messages], temperature=0.0,
                              max_tokens=cfg.judge_max_tokens, stage="judge", template_hash=rubric_hash)
        result = await client.acomplete(request)
        if result.text is not None and (result.ok or result.error_kind == "truncated"):
            truncated = result.error_kind == "truncated" or result.finish_reason == "length"
            last.append(JudgeReply(result.text, "length" if truncated else result.finish_reason))
            return last[-1]
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
    return store.write("judgments", shards.read(work_dir, questions.qa_ids, id_column="qa_id"), dataset=cfg.eval_dataset(),
                       config=config, inputs=[pred_fp], run_id=run_id)


