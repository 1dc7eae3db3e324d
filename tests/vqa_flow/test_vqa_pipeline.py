"""The zero-shot VQA pipeline in one process: tiny models, three benchmark formats, resume."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from medhall.infer.base import Answer, Query
from medhall.shards import finished
from medhall.store import ArtifactStore, query
from medhall.vqa.config import ModelSpec, VQAConfig, model_key
from medhall.vqa.pipeline import plan, run_vqa
from medhall.vqa.runners import make_runner

N_ITEMS = 8  # per model: VQA-RAD 4 (one without its image), SLAKE 2 (English), PMC-VQA 2
pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)

SHARDS = 8  # 4 per model at shard size 2: VQA-RAD 2, SLAKE 1, PMC-VQA 1
MISSING_IMAGE_ITEM = "vqa_rad/104"  # its image file does not exist (conftest)


def _cfg(benchmarks: list[dict], models: list[dict], **kw: Any) -> VQAConfig:
    return VQAConfig(benchmarks=benchmarks, models=models, shard_size=2, **kw)


class Counting:
    """A runner factory that wraps the real runners and records what they were asked."""

    def __init__(self) -> None:
        self.made: list[str] = []
        self.asked: list[str] = []
        self.unloaded: list[str] = []

    def __call__(self, spec: ModelSpec, cfg: VQAConfig) -> Any:
        counter, inner = self, make_runner(spec, cfg)
        self.made.append(spec.name)

        class Wrapped:
            name = inner.name

            def answer(self, items: Sequence[Query]) -> list[Answer]:
                counter.asked.extend(f"{spec.name}:{q.qa_id}" for q in items)
                return inner.answer(items)

            def unload(self) -> None:
                counter.unloaded.append(spec.name)
                inner.unload()

        return Wrapped()


def test_end_to_end_rows_in_duckdb_and_table3(store: ArtifactStore, benchmarks, models) -> None:
    out = run_vqa(store, _cfg(benchmarks, models))
    assert out["predictions"].rows == 2 * N_ITEMS
    assert out["counts"] == {"answered": 2 * N_ITEMS, "failed": 2, "quarantined": 1}
    counts = query(
        store, "select model, status, count(*) n from predictions__vqa group by all order by all"
    ).to_pylist()
    assert counts == [
        {"model": "tiny-base", "status": "failed", "n": 1},
        {"model": "tiny-base", "status": "ok", "n": 7},
        {"model": "tiny-tuned", "status": "failed", "n": 1},
        {"model": "tiny-tuned", "status": "ok", "n": 7},
    ]
    answers = query(
        store, "select model, qa_id, answer from predictions where status = 'ok' order by qa_id"
    ).to_pylist()
    base = {r["qa_id"]: r["answer"] for r in answers if r["model"] == "tiny-base"}
    tuned = {r["qa_id"]: r["answer"] for r in answers if r["model"] == "tiny-tuned"}
    assert base != tuned  # the adapter reached the model
    metrics = query(store, "select distinct metric from scores__vqa").column("metric").to_pylist()
    assert {
        "llava_recall",
        "llava_closed",
        "token_f1",
        "exact_match",
        "closed_strict",
        "choice_acc",
    } <= set(metrics)
    choice = (
        query(store, "select params from scores where metric = 'choice_acc' limit 1")
        .column("params")[0]
        .as_py()
    )
    assert json.loads(choice)["choice_rule"] in {"letter", "text", "nearest", "none"}
    quarantine = query(store, "select stage, source, reason from quarantine__vqa").to_pylist()
    assert quarantine == [{"stage": "vqa", "source": "vqa_rad", "reason": "missing_field"}]
    assert out["skipped"] == {
        "vqa_rad": {"not_test_split": 1},
        "slake": {"non_english": 1},
        "pmc_vqa": {},
    }

    md = Path(out["report"]["markdown"]).read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    for column in (
        "VQA-RAD open",
        "VQA-RAD closed",
        "SLAKE open",
        "SLAKE closed",
        "PMC-VQA choice",
    ):
        assert column in header
    rows = [
        line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| Model")
    ]
    assert [r.split("|")[1].strip() for r in rows] == ["tiny-base", "↳ tiny-tuned"]  # adjacent
    assert Path(out["report"]["csv"]).read_text().startswith("model,base_model,vqa_rad_open")
    assert Path(out["report"]["png"]).read_bytes()[:4] == b"\x89PNG"


def test_a_missing_image_fails_only_its_item(store: ArtifactStore, benchmarks, models) -> None:
    run_vqa(store, _cfg(benchmarks, models[:1]))
    failed = query(
        store, "select qa_id, error from predictions__vqa where status = 'failed'"
    ).to_pylist()
    assert [r["qa_id"] for r in failed] == [MISSING_IMAGE_ITEM]
    assert failed[0]["error"].startswith("missing_image: no such file")
    scored = (
        query(store, f"select count(*) n from scores__vqa where qa_id = '{MISSING_IMAGE_ITEM}'")
        .column("n")[0]
        .as_py()
    )
    assert scored == 0  # unscored, counted as missing in the summary


def test_resume_answers_only_unfinished_shards(store: ArtifactStore, benchmarks, models) -> None:
    cfg = _cfg(benchmarks, models)
    first = Counting()
    stopped = run_vqa(store, cfg, runner_factory=first, max_shards=3)  # "killed" after 3 shards
    assert stopped["stopped"] and stopped["shards_run"] == 3
    assert first.unloaded == ["tiny-base"]  # released even when stopped
    second = Counting()
    out = run_vqa(store, cfg, runner_factory=second)
    assert out["shards_run"] == SHARDS - 3
    assert set(first.asked).isdisjoint(second.asked)  # nothing asked twice
    asked_models = sorted(a.split(":", 1)[0] for a in first.asked + second.asked)
    each = N_ITEMS - 1  # every item but the one whose image is missing
    assert asked_models == ["tiny-base"] * each + ["tiny-tuned"] * each
    both = ["tiny-base", "tiny-tuned"]
    assert second.made == both and second.unloaded == both  # each loaded once, then unloaded
    third = Counting()
    again = run_vqa(store, cfg, runner_factory=third)
    assert third.made == [] and third.asked == [] and again["shards_run"] == 0
    # same content: no new artifact version
    assert again["predictions"].version == out["predictions"].version


def test_an_image_that_appears_is_asked_again(store: ArtifactStore, benchmarks, models) -> None:
    cfg = _cfg(benchmarks, models[:1])
    run_vqa(store, cfg)
    root = Path(benchmarks[0]["image_root"])
    Image.new("RGB", (32, 32), (90, 90, 90)).save(root / "synpic_missing.jpg")
    counting = Counting()
    run_vqa(store, cfg, runner_factory=counting)
    assert counting.asked == [f"tiny-base:{MISSING_IMAGE_ITEM}"]
    status = (
        query(store, f"select status from predictions__vqa where qa_id = '{MISSING_IMAGE_ITEM}'")
        .column("status")
        .to_pylist()
    )
    assert status == ["ok"]


class Flaky:
    """A runner that fails every item with a generation error (not final), or answers "yes"."""

    def __init__(self, fail: bool) -> None:
        self.name, self.fail, self.asked = "flaky", fail, []

    def answer(self, items: Sequence[Query]) -> list[Answer]:
        self.asked.extend(q.qa_id for q in items)
        if self.fail:
            return [Answer.failure(q.qa_id, RuntimeError("CUDA out of memory")) for q in items]
        return [Answer(q.qa_id, "yes") for q in items]


def test_a_shard_whose_items_all_failed_is_asked_again(store: ArtifactStore, benchmarks) -> None:
    cfg = _cfg(benchmarks, [{"name": "flaky", "path": "/no/such/checkpoint"}])
    first = Flaky(fail=True)
    out = run_vqa(store, cfg, runner_factory=lambda spec, c: first)
    assert out["counts"]["failed"] == out["counts"]["answered"] == N_ITEMS
    assert len(first.asked) == N_ITEMS - 1  # the missing image never reaches the model
    # SLAKE's and PMC-VQA's shards (and one of VQA-RAD's) failed whole: same items, same keys,
    # same shard names as before; their markers did not mark them done, so they are re-asked
    assert [len(u.todo) for u in plan(store, cfg).units] == [2, 1, 1]
    second = Flaky(fail=False)
    again = run_vqa(store, cfg, runner_factory=lambda spec, c: second)
    assert again["shards_run"] == 4
    assert sorted(second.asked) == sorted(first.asked)
    assert again["counts"] == {"answered": N_ITEMS, "failed": 1, "quarantined": 1}
    status = query(
        store, "select qa_id, status from predictions__vqa where status = 'failed'"
    ).to_pylist()
    assert status == [{"qa_id": MISSING_IMAGE_ITEM, "status": "failed"}]


class Oracle:
    """A runner that answers with the reference (letters for multiple choice)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.name, self.answers = "oracle", answers

    def answer(self, items: Sequence[Query]) -> list[Answer]:
        return [Answer(q.qa_id, self.answers[q.qa_id]) for q in items]


def test_scores_reach_table3_through_the_metrics(
    store: ArtifactStore, benchmarks, tiny_llava
) -> None:
    from medhall.vqa.pipeline import load

    models = [{"name": "oracle", "path": str(tiny_llava["base"])}]
    cfg = _cfg(benchmarks, models)
    refs = {
        it.item_id: (it.answer_label or it.answer)
        for items in load(cfg).items.values()
        for it in items
    }
    out = run_vqa(store, cfg, runner_factory=lambda spec, c: Oracle(refs))
    rows = {r["model"]: r for r in out["report"]["rows"]}
    assert rows["oracle"]["pmc_vqa_choice"] == "100.00" and rows["oracle"]["slake_open"] == "100.00"
    assert rows["oracle"]["vqa_rad_closed"] == "100.00"  # the missing-image item is left out
    summary = {(r["benchmark"], r["split"], r["metric"]): r["value"] for r in out["summary"]}
    assert summary[("vqa_rad", "closed", "missing")] == 1.0


def test_work_is_keyed_by_what_decides_the_answers(
    store: ArtifactStore, benchmarks, models
) -> None:
    cfg = _cfg(benchmarks, models)
    base, tuned = (cfg.model(n) for n in ("tiny-base", "tiny-tuned"))
    renamed = base.model_copy(
        update={"name": "other", "settings": {**base.settings, "batch_size": 1, "device": "cpu"}}
    )
    assert model_key(renamed, cfg) == model_key(base, cfg)  # name, batch size, device: same answers
    assert model_key(tuned, cfg) != model_key(base, cfg)
    longer = base.model_copy(update={"settings": {"max_new_tokens": 64}})
    assert model_key(longer, cfg) != model_key(base, cfg)
    p = plan(store, cfg)
    assert [len(u.todo) for u in p.units] == [2, 1, 1, 2, 1, 1]
    run_vqa(store, cfg)
    assert all(finished(u.work_dir) for u in p.units)
    assert plan(store, cfg).shards_todo == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"models": [{"name": "a", "path": "/m"}, {"name": "a", "path": "/n"}]}, "unique"),
        ({"models": [{"name": "a", "path": "/m", "base": "zzz"}]}, "base"),
        ({"models": [{"name": "a", "kind": "local_vlm"}]}, "needs a path"),
        ({"benchmarks": [{"name": "no_such_bench", "path": "/x"}]}, "unknown VQA benchmark"),
    ],
)
def test_config_is_checked(change: dict, message: str) -> None:
    from pydantic import ValidationError

    good = {
        "benchmarks": [{"name": "slake", "path": "/x"}],
        "models": [{"name": "a", "path": "/m"}],
    }
    with pytest.raises(ValidationError, match=message):
        VQAConfig(**{**good, **change})


def test_api_models_get_an_api_runner_on_their_endpoint(benchmarks, monkeypatch) -> None:
    monkeypatch.setenv("MEDHALL_LLM_API_KEY", "sk-test")  # read from the environment only
    settings = {
        "model": "gpt-4o",
        "base_url": "http://127.0.0.1:9/v1",
        "concurrency": 4,
        "system_prompt": "Answer briefly.",
        "max_new_tokens": 32,
    }
    models = [{"name": "gpt", "kind": "api", "settings": settings}]
    cfg = VQAConfig(benchmarks=benchmarks, models=models)
    runner = make_runner(cfg.model("gpt"), cfg)  # nothing is sent
    try:
        made = runner.settings()
        assert runner.name == "gpt" and made["backend_model"] == "gpt-4o"
        assert made["max_tokens"] == 32 and made["system_prompt"] == "Answer briefly."
    finally:
        runner.unload()
    faster = cfg.model("gpt").model_copy(update={"settings": {**settings, "concurrency": 64}})
    other = cfg.model("gpt").model_copy(update={"settings": {**settings, "model": "gpt-4o-mini"}})
    assert model_key(faster, cfg) == model_key(cfg.model("gpt"), cfg) != model_key(other, cfg)


def test_the_documented_config_loads(tmp_path: Path) -> None:
    from medhall.vqa.config import load_config

    doc = (Path(__file__).parents[2] / "docs" / "vqa_flow.md").read_text()
    example = doc.split("```json\n", 1)[1].split("```", 1)[0]
    (tmp_path / "vqa.json").write_text(example)
    cfg = load_config(tmp_path / "vqa.json", dataset="vqa-june", shard_size=None)
    assert cfg.dataset == "vqa-june" and cfg.shard_size == 256
    assert cfg.base_of() == {"llava-med-v1.5 + MedHallTune": "llava-med-v1.5"}
    names = [b.name for b in cfg.benchmarks]
    assert names == ["vqa_rad", "slake", "pathvqa", "pmc_vqa", "omnimedvqa"]
