"""Every build outcome is true: against a server that is down, that refuses the key, that rejects
structured output the way llama.cpp does, or whose QC answers fail, the build either succeeds
(falling back) or says what failed, by reason, and exits non-zero; no image is lost."""

from __future__ import annotations

import socket

import pytest

from medhall.build import BuildConfig, outcome, run_build
from medhall.endpoints import LLMSettings
from medhall.store import query


def _one(store, sql):
    return query(store, sql).to_pylist()


@pytest.fixture
def client_for(server, tmp_path):
    from medhall.llm import LLMClient, OpenAICompatBackend

    def make(base_url=None, api_key="sk-test-build", **kw):
        backend = OpenAICompatBackend(base_url=base_url or server.base_url, model="test-model", api_key=api_key,
                                      timeout=5.0)
        kw.setdefault("max_attempts", 3)
        return LLMClient(backend, cache=tmp_path / "llm.sqlite", backoff_initial_s=0.01, backoff_max_s=0.05, **kw)

    return make


def llm_cfg(dataset: str, **kw) -> BuildConfig:
    return BuildConfig(source="src", dataset=dataset, generator="llm", llm=LLMSettings(model="test-model"),
                       test_images=6, shard_size=14, questions_per_image=4, **kw)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_down_fails_the_build_fast_saying_it_cannot_be_reached(corpus_store, client_for) -> None:
    cfg = llm_cfg("down")
    run_build(corpus_store, cfg, client=client_for(f"http://127.0.0.1:{closed_port()}/v1"))
    done = outcome(corpus_store, cfg)
    assert not done.ok and done.pairs == 0 and done.failed_images == 28
    assert set(done.failed) <= {"llm_unreachable", "llm_connection"} and "llm_unreachable" in done.failed
    assert "cannot reach http://127.0.0.1" in done.summary() and "nothing was produced" in done.summary()


def test_a_refused_key_is_not_retried_and_fails_the_build(corpus_store, server, client_for) -> None:
    server.configure(responder="medhall", api_key="the-right-key")
    cfg = llm_cfg("no-key")
    run_build(corpus_store, cfg, client=client_for(api_key="a-wrong-key"))
    assert server.stats()["total"] == 28 * 2  # one attempt per request: a 401 is not retried
    done = outcome(corpus_store, cfg)
    assert not done.ok and done.failed == {"llm_auth": 28}
    assert "authentication failed" in done.summary() and "a-wrong-key" not in done.summary()


def test_a_llama_cpp_like_server_rejecting_json_schema_still_builds_with_qc(corpus_store, server, client_for) -> None:
    server.configure(responder="medhall", response_formats=["json_object"], format_status=500)
    cfg = llm_cfg("llamacpp", llm_qc=True)
    out = run_build(corpus_store, cfg, client=client_for())
    done = outcome(corpus_store, cfg)
    assert done.ok and done.images_with_pairs == 28 and done.failed == {}
    verdicts = _one(corpus_store, "select verdict, count(*) n from qc_verdicts__llamacpp where \"check\" = "
                    "'llm:self_check' group by 1")
    assert verdicts == [{"verdict": "correct", "n": out["instructions"].rows}]
    # refused a few times at first (requests already in flight), then never asked that way again
    assert server.stats()["format_types"]["json_schema"] <= 16


def test_failed_qc_requests_quarantine_their_images_and_nothing_is_lost(corpus_store, server, client_for) -> None:
    server.configure(responder="medhall", fault_rate=0.15, fault_kinds=["500"], seed=3)
    cfg = llm_cfg("flaky-qc", llm_qc=True)
    run_build(corpus_store, cfg, client=client_for(max_attempts=1))
    built = {r["image_id"] for r in _one(corpus_store, "select distinct image_id from instructions__flaky_qc")}
    held = {r["record_id"]: r["reason"] for r in _one(corpus_store, "select record_id, reason from quarantine__flaky_qc")}
    assert built.isdisjoint(held) and len(built | set(held)) == 28  # every image is in one place
    assert "qc_error" in held.values()  # QC failures are on record, not silently dropped
    done = outcome(corpus_store, cfg)
    assert not done.ok and done.failed["qc_error"] >= 1 and done.failed_images == len(held)
    assert outcome(corpus_store, cfg, max_failed_share=1.0).ok  # the threshold is the caller's
    from medhall.build import statistics

    qc = {r["check"]: r for r in statistics(corpus_store, cfg)["qc"].to_pylist()}
    undecided = sum(1 for r in _one(corpus_store, "select reason from quarantine__flaky_qc") if r["reason"] == "qc_error")
    assert qc["llm:self_check"]["errors"] >= 1 and qc["any"]["errors"] >= qc["llm:self_check"]["errors"]
    assert undecided >= 1  # the table and the quarantine agree that the check failed


def test_the_build_command_exits_non_zero_with_the_reason(corpus_store, monkeypatch) -> None:
    from typer.testing import CliRunner

    from medhall.cli import app

    monkeypatch.setenv("MEDHALL_HOME", str(corpus_store.root))
    monkeypatch.setenv("MEDHALL_LLM_API_KEY", "sk-test")
    r = CliRunner().invoke(app, ["build", "-s", "src", "-d", "cli-down", "--generator", "llm", "--model", "m",
                                 "--base-url", f"http://127.0.0.1:{closed_port()}/v1", "--local"])
    assert r.exit_code == 1
    assert "cannot reach" in r.output and "nothing was produced" in r.output and "Traceback" not in r.output


def test_an_llm_build_writes_its_ledger_with_its_run_id(corpus_store, server, monkeypatch) -> None:
    monkeypatch.setenv("MEDHALL_LLM_API_KEY", "sk-test")
    server.configure(responder="medhall")
    cfg = BuildConfig(source="src", dataset="ledgered", generator="llm",
                      llm=LLMSettings(model="test-model", base_url=server.base_url, timeout_s=5), llm_qc=True,
                      test_images=6, shard_size=14, questions_per_image=4)
    out = run_build(corpus_store, cfg)
    calls = _one(corpus_store, "select run_id, status, count(*) n from llm_calls__ledgered group by all")
    assert {r["run_id"] for r in calls} == {out["run_id"]}
    assert sum(r["n"] for r in calls) == server.stats()["served"] and {r["status"] for r in calls} == {"ok"}
