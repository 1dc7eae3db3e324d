"""Building instruction datasets: offline and through the real OpenAI client against a local server."""

import json

import pyarrow.parquet as pq
import pytest

from medhall.build import BuildConfig, prepare, run_build
from medhall.endpoints import LLMSettings
from medhall.qc.rules import RULES
from medhall.schema import NEGATIVE_CATEGORIES
from medhall.store import query


def _one(store, sql):
    return query(store, sql).to_pylist()


def _check_dataset(store, dataset, out, *, min_positive_tasks=3):
    dataset = dataset.replace("-", "_")  # view names: medhall.store.catalog
    cats = {(r["kind"], r["category"]) for r in _one(store, f"select distinct kind, category from instructions__{dataset}")}
    assert {c for k, c in cats if k == "negative"} == set(NEGATIVE_CATEGORIES)
    assert len({c for k, c in cats if k == "positive"}) >= min_positive_tasks
    # every pair has QC verdicts from every rule
    rules = _one(store, f"select count(distinct q.check) n from qc_verdicts__{dataset} q where q.check like 'rule:%'")
    assert rules[0]["n"] == len(RULES) == 5  # injection is the fifth
    missing = _one(store, f"select count(*) n from instructions__{dataset} i anti join qc_verdicts__{dataset} q using (qa_id)")
    assert missing[0]["n"] == 0
    # the split is by image: no image in both
    leak = _one(store, f"select image_id from splits__{dataset} group by 1 having count(distinct split) > 1")
    assert leak == []
    assert _one(store, f"select count(*) n from splits__{dataset} where split = 'test'")[0]["n"] == 6
    # every export exists and parses
    exports = out["exports"]["filtered"]
    assert set(exports) == {"llava", "llamafactory", "medhalltune", "parquet"}
    for paths in exports.values():
        for p in paths:
            if p.suffix == ".json":
                assert isinstance(json.loads(p.read_text()), list | dict)
            elif p.suffix == ".jsonl":
                lines = [json.loads(line) for line in p.read_text().splitlines()]
                assert lines and {"question_id", "image", "text", "gpt4_answer", "fig_caption"} <= set(lines[0])
            elif p.suffix == ".parquet":
                assert pq.read_table(p).num_rows > 0
    subsets = set(out["exports"]) - {"filtered"}
    assert {"positive_only", "negative_only", "no_qc", "frac_25", "frac_50", "frac_75", "frac_100"} <= subsets


def test_offline_build_produces_every_category_verdicts_split_and_exports(corpus_store):
    cfg = BuildConfig(source="src", dataset="built", test_images=6, shard_size=8)
    out = run_build(corpus_store, cfg)
    _check_dataset(corpus_store, "built", out)
    assert out["instructions"].rows >= 200  # 28 images x ~10
    gens = _one(corpus_store, "select distinct generator, template_hash from instructions__built")
    assert len(gens) == 1 and gens[0]["generator"] == "offline-v1" and gens[0]["template_hash"]


def test_a_killed_build_resumes_with_only_the_unfinished_shards(corpus_store):
    cfg = BuildConfig(source="src", dataset="resumed", test_images=6, shard_size=8)
    partial = run_build(corpus_store, cfg, max_shards=2)  # as if killed after two shards
    assert partial["stopped_after"] == 2 and len(partial["plan"].todo) == 4
    plan = prepare(corpus_store, cfg)
    assert plan.done == 2 and len(plan.todo) == 2  # only the unfinished shards are planned
    resumed = run_build(corpus_store, cfg)
    clean = run_build(corpus_store, cfg.model_copy(update={"dataset": "clean"}))
    a = _one(corpus_store, "select qa_id from instructions__resumed order by 1")
    b = _one(corpus_store, "select qa_id from instructions__clean order by 1")
    assert a == b and resumed["instructions"].rows == clean["instructions"].rows


def test_adding_images_generates_only_the_new_ones(corpus_store, tmp_path):
    from PIL import Image

    from medhall.jobs import ingest_to_store

    cfg = BuildConfig(source="grow", dataset="grown", test_images=2, shard_size=100)
    first_dir = tmp_path / "grow"
    first_dir.mkdir()
    rows = []
    for i in range(4):
        Image.new("L", (64, 64), 20 + 40 * i).save(first_dir / f"{i}.png")
        rows.append({"pair_id": f"p{i}", "fig_caption": f"Axial CT of the chest showing a small nodule in the left lung, case {i}.", "image": f"{i}.png"})
    src = first_dir / "captions.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ingest_to_store("llava_med_captions", [src], dataset="grow", store=corpus_store)
    run_build(corpus_store, cfg)
    for i in (4, 5):
        Image.new("L", (64, 64), 20 + 40 * i).save(first_dir / f"{i}.png")
        rows.append({"pair_id": f"p{i}", "fig_caption": f"Chest radiograph with right pleural effusion, case {i}.", "image": f"{i}.png"})
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ingest_to_store("llava_med_captions", [src], dataset="grow", store=corpus_store)
    plan = prepare(corpus_store, cfg)
    assert plan.done == 1 and len(plan.todo) == 1 and len(plan.todo[0].ids) == 2
    out = run_build(corpus_store, cfg)
    imgs = _one(corpus_store, "select count(distinct image_id) n from instructions__grown")
    assert imgs[0]["n"] == 6 and out["instructions"].version == 2


@pytest.fixture
def llm_client(server, tmp_path):
    """The real OpenAI client path against the local server (fast backoff for the tests)."""
    from medhall.llm import LLMClient, OpenAICompatBackend

    def make(**kw):
        backend = OpenAICompatBackend(base_url=server.base_url, model="test-model", api_key="sk-test-build", timeout=5.0)
        kw.setdefault("max_attempts", 3)
        return LLMClient(backend, cache=tmp_path / "llm.sqlite", backoff_initial_s=0.01, backoff_max_s=0.05, **kw)

    return make


def test_llm_build_against_a_local_openai_compatible_server(corpus_store, server, llm_client):
    server.configure(responder="medhall")
    cfg = BuildConfig(
        source="src", dataset="llm-built", generator="llm", llm=LLMSettings(model="test-model"),
        llm_qc=True, test_images=6, shard_size=10, questions_per_image=6,
    )
    out = run_build(corpus_store, cfg, client=llm_client())
    _check_dataset(corpus_store, "llm-built", out, min_positive_tasks=3)
    stats = server.stats()
    # 28 images x 2 generation requests + one QC request per pair; images went as data URLs
    assert stats["images"] >= 28 * 2
    checks = _one(corpus_store, "select verdict, count(*) n from qc_verdicts__llm_built where \"check\" = 'llm:self_check' group by 1")
    assert checks == [{"verdict": "correct", "n": out["instructions"].rows}]
    gen = _one(corpus_store, "select distinct generator from instructions__llm_built")
    assert gen == [{"generator": "openai:test-model"}]
    # a re-run from scratch of the same build pays for nothing: every request comes from the cache
    server.reset()
    run_build(corpus_store, cfg.model_copy(update={"dataset": "llm-again"}), client=llm_client())
    assert server.stats()["total"] == 0


def test_llm_failures_are_quarantined_and_retried_by_the_next_run(corpus_store, server, llm_client):
    server.configure(responder="medhall", fault_rate=1.0, fault_kinds=["500"])
    cfg = BuildConfig(source="src", dataset="flaky", generator="llm", llm=LLMSettings(model="test-model"),
                      test_images=6, shard_size=14, questions_per_image=4)
    out = run_build(corpus_store, cfg, client=llm_client(max_attempts=2))
    assert out["instructions"].rows == 0 and out["quarantine"].rows == 56  # 28 images x 2 requests
    q = _one(corpus_store, "select reason, count(distinct record_id) images, count(*) n from quarantine__flaky group by 1")
    assert len(q) == 1 and q[0]["reason"] == "llm_server" and q[0]["images"] == 28
    raw = _one(corpus_store, "select detail from quarantine__flaky limit 1")[0]["detail"]
    assert "500" in raw
    assert sum(len(s.ids) for s in prepare(corpus_store, cfg).todo) == 28  # failed images are not done
    server.configure(fault_rate=0.0)
    out = run_build(corpus_store, cfg, client=llm_client())
    assert out["quarantine"].rows == 0 and out["instructions"].rows > 0
    assert _one(corpus_store, "select count(distinct image_id) n from instructions__flaky")[0]["n"] == 28
