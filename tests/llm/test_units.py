"""Pieces of the layer on their own: token bucket, pricing, images, cache store."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import pytest

from medhall.llm import (
    BackendResponse,
    ChatRequest,
    PriceTable,
    RateLimiter,
    ResponseCache,
    encode_image,
)
from medhall.llm.backends.openai_compat import parse_completion, retry_after_seconds
from medhall.llm.errors import BackendError


def test_token_bucket_limits_requests_and_tokens() -> None:
    async def timed(limiter: RateLimiter, n: int, tokens: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await limiter.acquire(tokens)
        return time.perf_counter() - t0

    assert asyncio.run(timed(RateLimiter(requests_per_min=1200), 20, 0)) < 0.2  # the burst (20/s, 1 s)
    assert 0.4 < asyncio.run(timed(RateLimiter(requests_per_min=1200), 30, 0)) < 1.0  # 10 more at 20/s
    assert 0.4 < asyncio.run(timed(RateLimiter(tokens_per_min=60_000), 3, 500)) < 1.0  # 1000 tok/s, bucket 1000


def test_pause_stops_everyone_until_retry_after() -> None:
    async def main() -> list[float]:
        limiter = RateLimiter()
        limiter.pause(0.3)
        t0 = time.perf_counter()

        async def one() -> float:
            await limiter.acquire()
            return time.perf_counter() - t0

        return await asyncio.gather(*(one() for _ in range(5)))

    assert min(asyncio.run(main())) >= 0.29


def test_refund_returns_unused_tokens() -> None:
    limiter = RateLimiter(tokens_per_min=6000)  # 100 tok/s, bucket 100
    asyncio.run(limiter.acquire(100))
    limiter.refund(80)
    assert limiter.tokens is not None and limiter.tokens.level == pytest.approx(80, abs=2)


def test_price_table_prefix_override_and_file(tmp_path: Path) -> None:
    table = PriceTable()
    assert table.cost("gpt-4o", 1_000_000, 1_000_000) == pytest.approx(12.5)
    assert table.price("gpt-4o-2024-08-06") == table.price("gpt-4o")
    assert table.price("gpt-4o-mini-2024-07-18").input_per_m == 0.15  # longest prefix wins
    assert table.cost("SmolLM2-135M-Instruct", 10**6, 10**6) == 0.0
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  gpt-4o: {input: 5, output: 20}\ndefault: {input: 1, output: 2}\n")
    custom = PriceTable.from_file(path)
    assert custom.cost("gpt-4o", 10**6, 0) == 5 and custom.cost("unknown", 0, 10**6) == 2
    (tmp_path / "p.json").write_text(json.dumps({"my-model": {"input": 3, "output": 4}}))
    assert PriceTable.from_file(tmp_path / "p.json").cost("my-model", 10**6, 10**6) == 7


def _png(size: tuple[int, int], color: str = "red") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_images_are_resized_encoded_once_and_hashed_by_content(tmp_path: Path) -> None:
    import hashlib

    data = _png((3000, 1500))
    enc = encode_image(data, max_side=1024)
    assert (enc.width, enc.height) == (1024, 512)
    assert enc.sha256 == hashlib.sha256(data).hexdigest()
    assert enc.data_url.startswith("data:image/jpeg;base64,")
    assert encode_image(data, max_side=1024) is enc  # memoised
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert encode_image(path, max_side=1024).data_url == enc.data_url
    png = encode_image(data, max_side=256, fmt="PNG")
    assert png.data_url.startswith("data:image/png;base64,") and png.encoding == "PNG:256"


def test_dicom_images_are_decoded() -> None:
    pydicom_data = pytest.importorskip("pydicom.data")
    path = pydicom_data.get_testdata_file("CT_small.dcm")
    enc = encode_image(path, max_side=64)
    assert enc.width == 64 and enc.data_url.startswith("data:image/jpeg;base64,")


def test_cache_store_round_trip_and_ledger(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")
    row = {"call_id": "k1", "run_id": "r", "status": "ok", "attempts": 1, "started_at": time.time()}
    cache.record(row, BackendResponse("text", "stop", 3, 4), backend="fake")
    assert cache.get("k1") == BackendResponse("text", "stop", 3, 4) and "k1" in cache
    assert cache.get("k2") is None
    cache.record({**row, "call_id": "k2", "status": "failed", "error": "boom"})  # not cached
    assert cache.get("k2") is None
    other = ResponseCache(tmp_path / "c.sqlite")  # another handle (e.g. another process) sees it
    assert [r["status"] for r in other.ledger_rows("r")] == ["ok", "failed"]
    journal = other._connect().execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"
    cache.close()


def test_parse_completion_and_retry_after() -> None:
    body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    assert parse_completion(json.dumps(body).encode(), "x") == BackendResponse("hi", "stop", 5, 1)
    for bad in (b'{"choices": [', b'{"choices": []}', b'[1]'):
        with pytest.raises(BackendError) as err:
            parse_completion(bad, "x")
        assert err.value.kind == "malformed" and err.value.retryable
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({}) is None


def test_request_helpers() -> None:
    req = ChatRequest.simple("hi", system="be brief", temperature=0.7)
    assert [m.role for m in req.messages] == ["system", "user"] and not req.deterministic
    assert ChatRequest.simple("hi", temperature=0.7, seed=1).deterministic


def test_quiet_gc_is_undone_after_the_batch() -> None:
    import gc

    from medhall.llm.client import quiet_gc

    before = gc.get_threshold()
    with quiet_gc():
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[2] >= 100
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
