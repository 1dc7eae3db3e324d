"""A local OpenAI-compatible chat-completions server for tests and benchmarks.

Runs in its own process (``python tests/llm/server.py --port 0``) so that the client under
test gets a core of its own. It speaks just enough HTTP/1.1 (keep-alive, Content-Length) over
a bare :mod:`asyncio` protocol to serve hundreds of requests per second on one core.

Faults are scripted per request by a directive in the last user message,
``[[fault:429,500]]`` (attempt 1 gets a 429, attempt 2 a 500, later attempts succeed), or
drawn at random per attempt with ``fault_rate`` (deterministic in the body and the attempt
number). Fault kinds:

- ``429`` (with ``Retry-After: <retry_after>``), ``500``, ``503``, ``400``, ``404``;
- ``hang``: say nothing for ``hang_s`` seconds (past the client's timeout), then close;
- ``drop``: close the connection without answering;
- ``malformed``: a 200 whose body is not JSON;
- ``length``: a 200 whose completion is cut short (``finish_reason == "length"``).

``[[reply:TEXT]]`` makes the completion exactly TEXT (e.g. a JSON object). Requests with a
wrong bearer key get a 401 whose body quotes the key they sent, as some servers do, so tests
can prove the client scrubs it.

Latency: ``latency`` seconds for every request (default 0), or, with ``latency_dist =
"lognormal"``, a heavy-tailed draw per attempt with mean ``latency_mean`` and 99th percentile
``latency_p99`` (deterministic in the seed, the body and the attempt number, so that two runs
of the same requests meet the same latencies), optionally capped at ``latency_max``.

Control endpoints: ``POST /_config`` (JSON of :class:`Config` fields), ``GET /_stats``,
``POST /_reset``. Stats count attempts and successful (billable) completions per body hash
and per prompt, so tests can assert that nothing was paid twice; they also count image parts
sent as data URLs and keep the last request body, the chat requests in progress now and at most
since the last reset (``in_flight``, ``max_in_flight``), and the latencies slept (``latency_n``,
``latency_sum``, ``latency_max``, and each one in arrival order: ``latencies``), and when the
first chat request came and the last response left (``first_request_at``, ``last_response_at``).

:class:`ServerProcess` starts and drives it from tests and benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

DIRECTIVE = re.compile(r"\[\[(fault|reply):(.*?)\]\]", re.S)
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Config:
    """Server behaviour, changeable at run time through ``POST /_config``."""

    latency: float = 0.0
    #: None: ``latency`` for every request; "lognormal": drawn per attempt (see the module doc).
    latency_dist: str | None = None
    latency_mean: float = 1.0
    latency_p99: float = 10.0
    latency_max: float | None = None
    fault_rate: float = 0.0
    fault_kinds: list[str] = field(default_factory=lambda: ["429", "500", "drop", "malformed", "hang"])
    retry_after: str = "0.05"
    hang_s: float = 30.0
    api_key: str | None = None
    json_schema: bool = True
    #: response_format types accepted (None: every one, when json_schema is true); a refused one
    #: gets ``format_status`` with the message llama.cpp / vLLM give ("... json_schema ...").
    response_formats: list[str] | None = None
    format_status: int = 400
    #: what ``GET /v1/models`` reports for the served model (None: the route answers 404, as
    #: on servers without it); e.g. {"root": "/models/a.gguf", "meta": {"n_params": 7}}.
    model_info: dict[str, Any] | None = None
    seed: int = 0
    #: "medhall": answer medhall's generation / QC prompts with valid JSON
    #: (:func:`medhall.testing.scripted_reply`); other prompts get the usual echo.
    responder: str | None = None


@dataclass
class Counts:
    attempts: int = 0
    served: int = 0


class State:
    """Configuration and per-body / per-prompt request counts."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.by_body: dict[str, Counts] = defaultdict(Counts)
        self.by_prompt: dict[str, Counts] = defaultdict(Counts)
        self.total = 0
        self.response_formats = 0
        self.format_types: dict[str, int] = {}
        self.images = 0
        self.last_body: dict[str, Any] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.latency_n = 0
        self.latency_sum = 0.0
        self.latency_max = 0.0
        self.latencies: list[float] = []
        self.first_request_at: float | None = None  # time.time() of the first chat request since the reset
        self.last_response_at: float | None = None  # and of the last chat response

    def stats(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "served": sum(c.served for c in self.by_body.values()),
            "response_formats": self.response_formats,
            "format_types": self.format_types,
            "images": self.images,
            "last_body": self.last_body,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "latency_n": self.latency_n,
            "latency_sum": self.latency_sum,
            "latency_max": self.latency_max,
            "latencies": self.latencies,
            "first_request_at": self.first_request_at,
            "last_response_at": self.last_response_at,
            "by_body": {k: asdict(v) for k, v in self.by_body.items()},
            "by_prompt": {k: asdict(v) for k, v in self.by_prompt.items()},
        }


def _prompt(body: dict[str, Any]) -> str:
    """Text of the last user message."""
    for msg in reversed(body.get("messages", [])):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def _random_fault(cfg: Config, body_hash: str, attempt: int) -> str | None:
    if cfg.fault_rate <= 0:
        return None
    digest = hashlib.sha256(f"{cfg.seed}:{body_hash}:{attempt}".encode()).digest()
    if int.from_bytes(digest[:8], "big") / 2**64 >= cfg.fault_rate:
        return None
    return cfg.fault_kinds[digest[8] % len(cfg.fault_kinds)]


def lognormal_params(mean: float, p99: float) -> tuple[float, float]:
    """(mu, sigma) of the lognormal with this mean and 99th percentile (the lighter-tailed root)."""
    import math
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.99)
    # mu = ln(mean) - sigma^2 / 2 and mu + z sigma = ln(p99): sigma^2 / 2 - z sigma + ln(p99 / mean) = 0
    disc = z * z - 2 * math.log(p99 / mean)
    if disc < 0:
        raise ValueError(f"no lognormal has mean {mean} and p99 {p99}")
    sigma = z - math.sqrt(disc)
    return math.log(mean) - sigma * sigma / 2, sigma


def _latency(cfg: Config, body_hash: str, attempt: int) -> float:
    if cfg.latency_dist is None:
        return cfg.latency
    if cfg.latency_dist != "lognormal":
        raise ValueError(f"unknown latency_dist {cfg.latency_dist!r}")
    import math
    from statistics import NormalDist

    mu, sigma = lognormal_params(cfg.latency_mean, cfg.latency_p99)
    digest = hashlib.sha256(f"latency:{cfg.seed}:{body_hash}:{attempt}".encode()).digest()
    u = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64
    value = math.exp(mu + sigma * NormalDist().inv_cdf(u))
    return min(value, cfg.latency_max) if cfg.latency_max is not None else value


def _completion(body: dict[str, Any], content: str, finish: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "local"),
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": len(json.dumps(body.get("messages", []))) // 4 + 1,
                  "completion_tokens": len(content) // 4 + 1,
                  "total_tokens": 0},
    }


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "code": code}}


def _respond(cfg: Config, prompt: str) -> str | None:
    if cfg.responder == "medhall":
        from medhall.testing import scripted_reply

        return scripted_reply(prompt)
    return None


class App:
    """Routes one parsed HTTP request to a response (status, headers, body) or a drop."""

    def __init__(self, state: State) -> None:
        self.state = state

    async def handle(self, method: str, path: str, headers: dict[str, str],
                     raw: bytes) -> tuple[int, dict[str, str], bytes] | None:
        if path.endswith("/_stats"):
            return 200, {}, json.dumps(self.state.stats()).encode()
        if path.endswith("/_reset"):
            self.state.reset()
            return 200, {}, b"{}"
        if path.endswith("/_config"):
            self.state.config = Config(**{**asdict(self.state.config), **json.loads(raw or b"{}")})
            return 200, {}, json.dumps(asdict(self.state.config)).encode()
        if method == "POST" and path.endswith("/chat/completions"):
            st = self.state
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
            st.first_request_at = st.first_request_at or time.time()
            try:
                return await self.chat(headers, raw)
            finally:
                st.in_flight -= 1
                st.last_response_at = time.time()
        if method == "GET" and path.endswith("/models") and self.state.config.model_info is not None:
            entry = {"id": "test-model", "object": "model", "created": int(time.time()), "owned_by": "local",
                     **self.state.config.model_info}
            return 200, {}, json.dumps({"object": "list", "data": [entry]}).encode()
        return 404, {}, json.dumps(_error(f"no route {path}", "not_found")).encode()

    async def chat(self, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes] | None:
        st, cfg = self.state, self.state.config
        body = json.loads(raw)
        st.last_body = body
        st.images += sum(1 for m in body.get("messages", []) if isinstance(m.get("content"), list)
                         for p in m["content"] if p.get("type") == "image_url"
                         and p["image_url"]["url"].startswith("data:image/"))
        body_hash = hashlib.sha256(raw).hexdigest()
        prompt = _prompt(body)
        counts, pcounts = st.by_body[body_hash], st.by_prompt[prompt]
        counts.attempts += 1
        pcounts.attempts += 1
        st.total += 1
        sent_key = headers.get("authorization", "").removeprefix("Bearer ")
        if cfg.api_key is not None and sent_key != cfg.api_key:
            msg = f"Incorrect API key provided: {sent_key}"
            return 401, {}, json.dumps(_error(msg, "invalid_api_key")).encode()
        if body.get("response_format"):
            st.response_formats += 1
            kind = body["response_format"].get("type")
            st.format_types[kind] = st.format_types.get(kind, 0) + 1
            if not cfg.json_schema:
                return 400, {}, json.dumps(_error("response_format is not supported", "invalid_request")).encode()
            if cfg.response_formats is not None and kind not in cfg.response_formats:
                msg = f"Unsupported response_format type: {kind} (json_schema conversion failed)"
                return cfg.format_status, {}, json.dumps(_error(msg, "server_error")).encode()
        directives = dict(DIRECTIVE.findall(prompt))
        scripted = [f for f in directives.get("fault", "").split(",") if f]
        fault = scripted[counts.attempts - 1] if counts.attempts <= len(scripted) else None
        fault = fault or _random_fault(cfg, body_hash, counts.attempts)
        if fault == "hang":  # never answered: the client times out first
            await asyncio.sleep(cfg.hang_s)
            return None
        if delay := _latency(cfg, body_hash, counts.attempts):
            st.latency_n += 1
            st.latency_sum += delay
            st.latency_max = max(st.latency_max, delay)
            st.latencies.append(delay)
            await asyncio.sleep(delay)
        if fault == "drop":
            return None
        if fault and fault.isdigit():
            extra = {"Retry-After": cfg.retry_after} if fault == "429" else {}
            return int(fault), extra, json.dumps(_error(f"injected {fault}", "injected")).encode()
        if fault == "malformed":
            return 200, {}, b'{"id": "chatcmpl-local", "choices": [{"message": '
        content = directives.get("reply") or _respond(cfg, prompt) or f"echo: {prompt[:80]}"
        if fault == "length":
            return 200, {}, json.dumps(_completion(body, content[: len(content) // 2], "length")).encode()
        counts.served += 1
        pcounts.served += 1
        return 200, {}, json.dumps(_completion(body, content, "stop")).encode()


class HTTPProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1 with keep-alive and Content-Length bodies (no pipelining needed)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            size = int(headers.get("content-length", "0"))
            if len(self.buf) < end + 4 + size:
                return
            body = bytes(self.buf[end + 4 : end + 4 + size])
            del self.buf[: end + 4 + size]
            method, path, _ = lines[0].split(" ", 2)
            asyncio.ensure_future(self.respond(method, path, headers, body))

    async def respond(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        result = await self.app.handle(method, path, headers, body)
        transport = self.transport
        if transport is None:
            return
        if result is None:
            transport.abort()
            return
        status, extra, payload = result
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
                "Content-Type: application/json", f"Content-Length: {len(payload)}"]
        head += [f"{k}: {v}" for k, v in extra.items()]
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)


async def serve(host: str, port: int, config: Config) -> None:
    app = App(State(config))
    server = await asyncio.get_running_loop().create_server(lambda: HTTPProtocol(app), host, port, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


class ServerProcess:
    """Runs the server in a child process; a context manager for tests and benchmarks."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.http = httpx.Client(timeout=10)

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen([sys.executable, __file__, "--port", "0",
                                      "--config", json.dumps(self.config)],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"test server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stdout:
                self.proc.stdout.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def configure(self, **config: Any) -> dict[str, Any]:
        return self.http.post(f"{self.base_url}/_config", json=config).json()

    def stats(self) -> dict[str, Any]:
        return self.http.get(f"{self.base_url}/_stats").json()

    def reset(self) -> None:
        self.http.post(f"{self.base_url}/_reset")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config", default="{}", help="JSON of Config fields")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, Config(**json.loads(args.config))))


if __name__ == "__main__":
    main()
