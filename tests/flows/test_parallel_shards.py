"""Shards run at once (threads by default, or a Dask cluster), give the same dataset as one after
another, and the LLM layer's concurrency limit holds across the shard threads of a process."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from medhall.store import ArtifactStore

SHARDS, SHARD_SIZE = 4, 7  # the 28 sample images
PER_SHARD_BATCH = 2 * SHARD_SIZE  # a shard's largest batch: 2 generation requests an image


@pytest.fixture
def homes(flow_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``use(name)``: a fresh store (its own LLM cache: nothing is answered from another build's)
    holding the sample corpus as ``src``, made MEDHALL_HOME."""
    from medhall import sample
    from medhall.config import get_settings
    from medhall.jobs import ingest_to_store

    captions = sample.materialize(tmp_path / "corpus")

    def use(name: str) -> ArtifactStore:
        root = tmp_path / "homes" / name
        monkeypatch.setenv("MEDHALL_HOME", str(root))
        get_settings(fresh=True)
        store = ArtifactStore(root)
        ingest_to_store("llava_med_captions", [captions], dataset="src", store=store)
        return store

    return use


@pytest.fixture
def lagged(server: Any) -> Any:
    server.configure(responder="medhall", latency=0.3)
    yield server
    server.configure(latency_dist=None, latency=0.0)  # the session server's `server` fixture does not reset these


def _build(server: Any, concurrency: int, dataset: str = "par", **flow_params: Any) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    """Run the flow on the current store; its result and the (start, end) of each shard task run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.build_dataset import build_dataset
    from medhall.endpoints import LLMSettings

    llm = LLMSettings(model="test-model", base_url=server.base_url, text_only=True, concurrency=concurrency, max_attempts=2)
    state = build_dataset(source="src", dataset=dataset, generator="llm", llm_qc=True, questions_per_image=2, llm=llm,
                          shard_size=SHARD_SIZE, test_images=4, exports=["parquet"], return_state=True, **flow_params)
    out = state.result()
    if _SPANS is not None:  # recorded in this process (the task-run events reach the API late, or not at all under load)
        return out, sorted(_SPANS)
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    spans = sorted((r.start_time.timestamp(), r.end_time.timestamp()) for r in runs if r.name.startswith("shard "))
    return out, spans


_SPANS: list[tuple[float, float]] | None = None


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Record (start, end) of every shard's generation in this process (threads runner)."""
    import time

    from medhall import build

    global _SPANS
    real = build.generate_shard

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.time()
        try:
            return real(*args, **kwargs)
        finally:
            assert _SPANS is not None
            _SPANS.append((t0, time.time()))

    monkeypatch.setattr(build, "generate_shard", timed)

    def reset() -> None:
        global _SPANS
        _SPANS = []

    reset()
    yield reset
    _SPANS = None


def test_shards_overlap_match_the_sequential_build_and_share_the_llm_limit(homes: Any, lagged: Any, spans: Any) -> None:
    stores = [homes("seq")]
    seq, seq_spans = _build(lagged, 64, "seq", shards_in_flight=1)  # the old way: one shard after another
    seq_peak = lagged.stats()["max_in_flight"]
    assert len(seq_spans) == SHARDS and seq["shards_run"] == SHARDS
    assert all(a[1] <= b[0] for a, b in zip(seq_spans, seq_spans[1:], strict=False))  # never two at once
    assert seq_peak <= PER_SHARD_BATCH

    lagged.reset()
    spans()
    stores.append(homes("par"))
    par, par_spans = _build(lagged, 64, "par")  # default: threads, 8 shards in flight
    par_peak = lagged.stats()["max_in_flight"]
    assert len(par_spans) == SHARDS
    assert max(s for s, _ in par_spans) < min(e for _, e in par_spans)  # all four were running together
    assert par_peak > PER_SHARD_BATCH  # more in flight than one shard can ask
    shard_phase = lambda spans: max(e for _, e in spans) - min(s for s, _ in spans)  # noqa: E731
    assert shard_phase(par_spans) < 0.6 * shard_phase(seq_spans)
    columns = ["qa_id", "image_id", "question", "answer", "kind", "category"]
    tables = [s.get("instructions", d).read(columns=columns).sort_by("qa_id") for s, d in zip(stores, ("seq", "par"), strict=True)]
    assert tables[0].num_rows == SHARDS * SHARD_SIZE * 2 and tables[0].equals(tables[1])  # the same pairs
    assert par["outcome"]["failed"] == {} and seq["outcome"]["failed"] == {}

    lagged.reset()
    homes("limited")
    limited, _ = _build(lagged, 5, "limited", shards_in_flight=SHARDS)  # 4 shards x 14 requests, at most 5 in flight
    assert lagged.stats()["max_in_flight"] == 5
    assert limited["outcome"]["failed"] == {}


def test_threads_calling_one_client_share_its_concurrency(lagged: Any, tmp_path: Path) -> None:
    from medhall.llm import ChatRequest, LLMClient, OpenAICompatBackend

    lagged.configure(latency=0.05)
    backend = OpenAICompatBackend(base_url=lagged.base_url, model="test-model", api_key="sk-test")
    results: list[int] = []
    with LLMClient(backend, cache=tmp_path / "cache.sqlite", max_concurrency=3) as client:
        def one(t: int) -> None:
            out = client.run([ChatRequest.simple(f"thread {t} item {i}", max_tokens=8) for i in range(12)], progress=False)
            results.append(sum(r.ok for r in out))

        threads = [threading.Thread(target=one, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [12] * 4
    assert lagged.stats()["max_in_flight"] == 3  # 4 threads x 12 requests, never more than 3 at once


def test_shards_of_one_build_lease_one_client_and_close_it(homes: Any, lagged: Any) -> None:
    from medhall.build import BuildConfig, shared_client
    from medhall.endpoints import LLMSettings
    from medhall.llm.shared import held

    src = homes("lease")
    cfg = BuildConfig(source="src", dataset="d", generator="llm",
                      llm=LLMSettings(model="test-model", base_url=lagged.base_url))

    with shared_client(cfg, src, "run-a") as a, shared_client(cfg, src, "run-a") as b, shared_client(cfg, src, "run-b") as c:
        assert a is b and a is not c  # one per endpoint settings, store and run
        assert sorted(held().values()) == [1, 2]
    assert held() == {}


def test_unknown_runner_and_bad_options_are_refused() -> None:
    from flows.runners import task_runner_for

    with pytest.raises(ValueError, match="unknown runner"):
        task_runner_for("spark")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="address is for"):
        task_runner_for("threads", address="tcp://127.0.0.1:8786")
    assert task_runner_for("threads", shards_in_flight=3)._max_workers == 3


def test_a_dask_local_cluster_build_matches_the_threads_build(homes: Any, lagged: Any) -> None:
    pytest.importorskip("prefect_dask")
    stores = [homes("thr")]
    threads, _ = _build(lagged, 8, "thr", shards_in_flight=SHARDS)
    lagged.reset()
    stores.append(homes("dsk"))
    dask, _ = _build(lagged, 4, "dsk", runner="dask", workers=2, shards_in_flight=SHARDS)  # 4 per process, 8 in all
    assert dask["shards_run"] == SHARDS and dask["outcome"]["failed"] == {}  # (task-run events may reach the API late)
    assert lagged.stats()["max_in_flight"] <= 8
    columns = ["qa_id", "image_id", "question", "answer", "kind", "category"]
    tables = [s.get("instructions", d).read(columns=columns).sort_by("qa_id") for s, d in zip(stores, ("thr", "dsk"), strict=True)]
    assert tables[0].num_rows == SHARDS * SHARD_SIZE * 2 and tables[0].equals(tables[1])


def test_an_api_models_vqa_shards_run_at_once_within_its_concurrency(flow_home: Path, tmp_path: Path, lagged: Any) -> None:
    import json

    from PIL import Image

    from flows.zero_shot_vqa import zero_shot_vqa

    folder = tmp_path / "vqa"  # images are found beside the benchmark file by default
    folder.mkdir()
    Image.new("RGB", (16, 16), "gray").save(folder / "img.jpg")
    rows = [{"qid": i, "phrase_type": "test_freeform", "image_name": "img.jpg", "question": f"Is finding {i} present?",
             "answer": "yes", "answer_type": "CLOSED"} for i in range(12)]
    path = folder / "VQA_RAD Dataset Public.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    api = {"name": "api-echo", "kind": "api", "settings": {"model": "test-model", "base_url": lagged.base_url,
                                                           "concurrency": 6, "text_only": True}}
    out = zero_shot_vqa(benchmarks=[{"name": "vqa_rad", "path": str(path)}], models=[api], shard_size=3)
    assert out["shards_run"] == 4 and out["counts"]
    stats = lagged.stats()
    assert stats["served"] == 12, (stats["total"], out)
    assert 3 < stats["max_in_flight"] <= 6  # more than one shard of 3 at once, never more than the model's 6
