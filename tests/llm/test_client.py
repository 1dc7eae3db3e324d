"""The client's behaviour over the scripted fake backend: cache, dedup, retries, structure, budget, ledger."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import BaseModel

from medhall.llm import (
    ChatRequest,
    FakeBackend,
    FakeReply,
    LLMClient,
    Message,
    PriceTable,
    fault,
    request_key,
)
from medhall.schema import LLM_CALLS


class Verdict(BaseModel):
    verdict: str
    score: int


def reqs(n: int, prefix: str = "q", **kwargs: object) -> list[ChatRequest]:
    return [ChatRequest.simple(f"{prefix} {i}", **kwargs) for i in range(n)]


def client(tmp_path: Path, backend: FakeBackend, **kwargs: object) -> LLMClient:
    kwargs.setdefault("backoff_initial_s", 0.001)
    kwargs.setdefault("backoff_max_s", 0.01)
    return LLMClient(backend, cache=tmp_path / "cache.sqlite", **kwargs)


def test_results_in_input_order_and_rerun_makes_no_calls(tmp_path: Path) -> None:
    backend = FakeBackend(latency=0.002)
    c = client(tmp_path, backend, max_concurrency=8)
    first = c.run(reqs(40), progress=False)
    assert [r.status for r in first] == ["ok"] * 40
    assert backend.total_calls == 40
    again = client(tmp_path, FakeBackend(latency=0.002))  # a new process would see the same file
    second = again.run(reqs(40), progress=False)
    assert again.backend.total_calls == 0
    assert [r.status for r in second] == ["cached"] * 40
    assert [r.text for r in second] == [r.text for r in first]
    assert all(r.attempts == 0 and r.cost_usd == 0 for r in second)


def test_identical_requests_in_one_batch_are_sent_once(tmp_path: Path) -> None:
    backend = FakeBackend(latency=0.02)
    results = client(tmp_path, backend).run([ChatRequest.simple("same")] * 10, progress=False)
    assert backend.total_calls == 1
    assert sorted(r.status for r in results) == ["cached"] * 9 + ["ok"]
    assert len({r.text for r in results}) == 1


def test_nondeterministic_requests_are_not_cached_unless_asked(tmp_path: Path) -> None:
    backend = FakeBackend()
    c = client(tmp_path, backend)
    hot = ChatRequest.simple("creative", temperature=0.8)
    c.run([hot, hot], progress=False)
    c.run([hot], progress=False)
    assert backend.total_calls == 3
    c.run([hot.model_copy(update={"cache": True})] * 2, progress=False)
    c.run([hot.model_copy(update={"cache": True})], progress=False)
    assert backend.total_calls == 4
    seeded = ChatRequest.simple("creative", temperature=0.8, seed=7)
    c.run([seeded], progress=False)
    c.run([seeded], progress=False)
    assert backend.total_calls == 5
    cold = ChatRequest.simple("deterministic but uncached", cache=False)
    c.run([cold], progress=False)
    c.run([cold], progress=False)
    assert backend.total_calls == 7


def test_cache_key_ignores_concurrency_but_not_request_content(tmp_path: Path) -> None:
    backend = FakeBackend()
    client(tmp_path, backend, max_concurrency=1).run(reqs(5), progress=False)
    client(tmp_path, backend, max_concurrency=32).run(reqs(5), progress=False)
    assert backend.total_calls == 5
    base = ChatRequest.simple("x")
    key = request_key(base, backend="fake", model="m")
    variants = [base.model_copy(update=u) for u in ({"template_hash": "t2"}, {"max_tokens": 9}, {"seed": 1},
                                                     {"stop": ["\n"]}, {"temperature": 0.5})]
    keys = {request_key(v, backend="fake", model="m") for v in variants}
    assert key not in keys and len(keys) == len(variants)
    assert request_key(base, backend="fake", model="other") != key
    assert request_key(base.model_copy(update={"stage": "judge", "cache": True}), backend="fake", model="m") == key


def test_transient_faults_are_retried_and_permanent_ones_are_not(tmp_path: Path) -> None:
    backend = FakeBackend({
        "flaky": [fault("500"), fault("timeout"), fault("connection"), "recovered"],
        "denied": fault("401"),
        "gone": fault("404"),
    })
    c = client(tmp_path, backend)
    flaky, denied, gone = c.run([ChatRequest.simple(p) for p in ("flaky", "denied", "gone")], progress=False)
    assert (flaky.status, flaky.text, flaky.attempts) == ("ok", "recovered", 4)
    assert (denied.status, denied.error_kind, denied.attempts) == ("failed", "auth", 1)
    assert (gone.status, gone.error_kind, gone.attempts) == ("failed", "not_found", 1)


def test_retries_stop_after_max_attempts_with_the_last_reason(tmp_path: Path) -> None:
    backend = FakeBackend({"down": fault("503")})
    (result,) = client(tmp_path, backend, max_attempts=3).run([ChatRequest.simple("down")], progress=False)
    assert (result.status, result.attempts, result.error_kind) == ("failed", 3, "server")
    assert "503" in (result.error or "")


def test_failures_are_not_cached_so_a_rerun_retries_them(tmp_path: Path) -> None:
    backend = FakeBackend({"once": [fault("500"), fault("500"), "finally"]})
    c = client(tmp_path, backend, max_attempts=2)
    (r1,) = c.run([ChatRequest.simple("once")], progress=False)
    assert r1.status == "failed"
    (r2,) = c.run([ChatRequest.simple("once")], progress=False)
    assert (r2.status, r2.text) == ("ok", "finally")
    (r3,) = c.run([ChatRequest.simple("once")], progress=False)
    assert r3.status == "cached" and backend.total_calls == 3


def test_truncated_output_is_a_failure_that_keeps_the_raw_text(tmp_path: Path) -> None:
    backend = FakeBackend({"long": FakeReply("half an ans", finish_reason="length")})
    c = client(tmp_path, backend)
    (r,) = c.run([ChatRequest.simple("long")], progress=False)
    assert (r.status, r.error_kind, r.text, r.attempts) == ("failed", "truncated", "half an ans", 1)
    c.run([ChatRequest.simple("long")], progress=False)
    assert backend.total_calls == 2  # not cached


def test_structured_output_validates_and_repairs_once(tmp_path: Path) -> None:
    good = '{"verdict": "correct", "score": 8}'
    backend = FakeBackend(lambda req: good if "could not be used" in req.messages[-1].text()
                          else ("```json\n" + good + "\n```" if "fenced" in req.messages[-1].text() else "not json"))
    c = client(tmp_path, backend)
    repaired, fenced = c.run([ChatRequest.simple("judge this"), ChatRequest.simple("fenced")], Verdict,
                             progress=False)
    assert repaired.ok and repaired.parsed == Verdict(verdict="correct", score=8)
    assert repaired.attempts == 2  # the first reply and the repair
    assert fenced.ok and fenced.parsed.score == 8 and fenced.attempts == 1
    (repair,) = [r for r in backend.requests if "could not be used" in r.messages[-1].text()]
    assert repair.messages[-2].content == "not json"  # the invalid reply, then the schema to follow
    assert '"verdict"' in repair.messages[-1].text()


def test_structured_output_failure_is_recorded_with_raw_text_never_a_value(tmp_path: Path) -> None:
    backend = FakeBackend({"": '{"verdict": "maybe"}'})
    c = client(tmp_path, backend)
    (r,) = c.run([ChatRequest.simple("judge")], Verdict, progress=False)
    assert r.status == "failed" and r.parsed is None
    assert r.error_kind == "invalid_output" and "Verdict" in (r.error or "")
    assert r.text == '{"verdict": "maybe"}'
    assert backend.total_calls == 2  # one repair, no more
    statuses = c.ledger_table().column("status").to_pylist()
    assert statuses == ["failed", "failed"]


def test_json_schema_response_format_is_sent_when_supported(tmp_path: Path) -> None:
    backend = FakeBackend({"": '{"verdict": "ok", "score": 1}'}, supports_json_schema=True)
    (r,) = client(tmp_path, backend).run([ChatRequest.simple("x")], Verdict, progress=False)
    assert r.ok
    fmt = backend.requests[0].response_format
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"]["title"] == "Verdict"


def test_budget_stops_new_calls_before_it_is_exceeded(tmp_path: Path) -> None:
    prices = PriceTable({"fake-model": {"input": 1000.0, "output": 1000.0}})
    backend = FakeBackend(FakeReply("done", prompt_tokens=10, completion_tokens=10))
    # worst case per call: (estimated prompt + 16 max tokens) * $1000/1M ~ $0.02; actual $0.02
    c = client(tmp_path, backend, prices=prices, max_cost_usd=0.1, max_concurrency=1)
    results = c.run(reqs(10, max_tokens=16), progress=False)
    statuses = [r.status for r in results]
    done = statuses.count("ok")
    assert 1 <= done < 10 and statuses.count("budget_exceeded") == 10 - done
    assert statuses == ["ok"] * done + ["budget_exceeded"] * (10 - done)  # once stopped, stays stopped
    assert c.spent_usd <= 0.1
    assert "budget cap of $0.1000 reached" in (results[-1].error or "")
    ledger = c.ledger_table()
    assert ledger.column("status").to_pylist().count("budget_exceeded") == 10 - done
    assert c.run(reqs(1, "more", max_tokens=16), progress=False)[0].status == "budget_exceeded"  # sticky
    # nothing done is lost: with a bigger budget a re-run pays only for the rest
    c.max_cost_usd = 10.0
    again = c.run(reqs(10, max_tokens=16), progress=False)
    assert [r.status for r in again] == ["cached"] * done + ["ok"] * (10 - done)
    assert backend.total_calls == 10 and c.budget_error is None


def test_ledger_has_every_call_in_the_llm_calls_schema(tmp_path: Path) -> None:
    backend = FakeBackend({"bad": fault("400")})
    c = client(tmp_path, backend, run_id="run_test", prices={"fake-model": (2.0, 4.0)})
    c.run([ChatRequest.simple("good", stage="judge"), ChatRequest.simple("bad", stage="judge")], progress=False)
    c.run([ChatRequest.simple("good", stage="judge")], progress=False)
    table = c.ledger_table(run_id="run_test")
    assert isinstance(table, pa.Table) and table.schema.equals(LLM_CALLS, check_metadata=False)
    rows = table.to_pylist()
    assert sorted(r["status"] for r in rows[:2]) == ["failed", "ok"] and len(rows) == 3
    ok = next(r for r in rows if r["status"] == "ok")
    assert ok["stage"] == "judge" and ok["backend"] == "fake" and ok["model"] == "fake-model"
    assert ok["attempts"] == 1 and ok["prompt_tokens"] > 0 and ok["completion_tokens"] > 0
    assert ok["cost_usd"] == pytest.approx((ok["prompt_tokens"] * 2 + ok["completion_tokens"] * 4) / 1e6)
    assert ok["started_at"] is not None and ok["latency_s"] >= 0
    failed = next(r for r in rows if r["status"] == "failed")
    assert "400" in failed["error"] and failed["cost_usd"] == 0
    cached = rows[-1]
    assert (cached["status"], cached["attempts"], cached["cost_usd"]) == ("cached", 0, 0.0)
    assert cached["call_id"] == ok["call_id"]


def test_concurrency_is_bounded(tmp_path: Path) -> None:
    in_flight = peak = 0

    class Counting(FakeBackend):
        async def complete(self, request: ChatRequest):  # type: ignore[override]
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await super().complete(request)
            finally:
                in_flight -= 1

    client(tmp_path, Counting(latency=0.01), max_concurrency=5).run(reqs(40), progress=False)
    assert peak == 5


def test_requests_per_minute_limit_spaces_calls(tmp_path: Path) -> None:
    c = client(tmp_path, FakeBackend(), requests_per_min=600, max_concurrency=50)  # 10/s, burst 10
    t0 = time.perf_counter()
    c.run(reqs(20), progress=False)
    assert 0.8 < time.perf_counter() - t0 < 3.0  # 10 at once, 10 more over ~1 s


def test_429_retry_after_is_honoured(tmp_path: Path) -> None:
    backend = FakeBackend({"slow down": [fault("429", retry_after=0.3), "ok"]})
    t0 = time.perf_counter()
    (r,) = client(tmp_path, backend).run([ChatRequest.simple("slow down")], progress=False)
    assert r.ok and r.attempts == 2 and time.perf_counter() - t0 >= 0.3


def test_client_timeout_and_unexpected_backend_errors_become_failures(tmp_path: Path) -> None:
    backend = FakeBackend({"hang": FakeReply("late", delay=5.0), "bug": ValueError("boom")})
    c = client(tmp_path, backend, request_timeout_s=0.05, max_attempts=2)
    hang, bug = c.run([ChatRequest.simple("hang"), ChatRequest.simple("bug")], progress=False)
    assert (hang.status, hang.error_kind, hang.attempts) == ("failed", "timeout", 2)
    assert (bug.status, bug.error_kind, bug.attempts) == ("failed", "backend", 1) and "boom" in bug.error


def test_acomplete_and_run_inside_a_running_loop(tmp_path: Path) -> None:
    c = client(tmp_path, FakeBackend())

    async def main() -> tuple[str, str]:
        single = await c.acomplete(ChatRequest.simple("a"))
        (from_run,) = c.run([ChatRequest.simple("b")], progress=False)  # loop running: worker thread
        return single.status, from_run.status

    assert asyncio.run(main()) == ("ok", "ok")


def test_progress_display_reports_done_tokens_and_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    c = client(tmp_path, FakeBackend(), prices={"fake-model": (1.0, 1.0)})
    c.run(reqs(5), progress=True)
    assert capsys.readouterr().err == ""  # not a terminal: logs and pipes stay clean
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    c.run(reqs(5, prefix="p"), progress=True)
    err = capsys.readouterr().err
    assert "5/5" in err and "tok" in err and "$" in err


def test_multimodal_messages_key_on_image_hash(tmp_path: Path) -> None:
    import io

    from PIL import Image

    from medhall.llm import ImagePart

    def png(color: str) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), color).save(buf, format="PNG")
        return buf.getvalue()

    red, blue = ImagePart.from_image(png("red")), ImagePart.from_image(png("blue"))
    ask = lambda img: ChatRequest(messages=[Message.user("what is this?", img)])  # noqa: E731
    assert request_key(ask(red), backend="b", model="m") != request_key(ask(blue), backend="b", model="m")
    assert request_key(ask(red), backend="b", model="m") == request_key(ask(ImagePart.from_image(png("red"))),
                                                                       backend="b", model="m")
    backend = FakeBackend()
    client(tmp_path, backend).run([ask(red), ask(red), ask(blue)], progress=False)
    assert backend.total_calls == 2
