"""OpenAI-compatible chat completions through the official ``openai`` client.

Works with the OpenAI API (GPT-4o) and local servers that speak the same protocol (vLLM,
llama.cpp server, Ollama). Base URL, model and key come from :func:`medhall.config.get_settings`
(``MEDHALL_LLM_BASE_URL``, ``MEDHALL_LLM_MODEL``, ``MEDHALL_LLM_API_KEY``, falling back to
``OPENAI_API_KEY``). One ``AsyncOpenAI`` client (one connection pool sized for the client's
concurrency) is reused for every request of an event loop; the SDK's own retries are off,
because retrying is the layer's job.

The request goes through ``AsyncOpenAI.post`` (the SDK's documented way to call an endpoint
with a raw body) rather than ``chat.completions.create``: the SDK still builds the request,
authenticates, enforces the timeout and raises its typed errors, but skips re-walking the
messages and building response models, which halves its CPU cost per request. The reply is
parsed here, so a malformed body is classified (and retried) instead of surfacing as a crash.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import re
import time
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import SecretStr

from medhall.llm.errors import BackendError, ConfigError, scrub
from medhall.llm.types import BackendResponse, ChatRequest, ImagePart, Message

KEY_HINT = "check MEDHALL_LLM_API_KEY (or OPENAI_API_KEY)"
#: What a server says when it rejects ``response_format`` (llama.cpp answers 500, vLLM and
#: OpenAI 400 or 422): the client then falls back to a weaker format (see LLMClient).
FORMAT_ERROR = re.compile(r"response_format|json_schema|json schema|schema|grammar|structured output|json_object", re.I)


def check_url(url: str | None) -> str | None:
    """``url``, refused when it carries credentials (keys come from the environment only)."""
    if not url:
        return url
    parts = urlsplit(url)
    query = {k.lower() for k, _ in parse_qsl(parts.query)}
    if parts.username or parts.password or query & {"key", "api_key", "apikey", "token", "access_token"}:
        raise ConfigError("the base URL carries credentials: remove them from the URL and set "
                          "MEDHALL_LLM_API_KEY (keys are read from the environment only)")
    return url


def redacted_url(url: str) -> str:
    """scheme://host:port/path of ``url``: no credentials, no query (what identifies an endpoint)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
NO_KEY = "no-key"  # local servers accept any key; the SDK insists on one


def _resolve_key(api_key: SecretStr | str | None, base_url: str | None) -> SecretStr:
    if isinstance(api_key, str):
        api_key = SecretStr(api_key)
    if api_key is None:  # MEDHALL_LLM_API_KEY first (read fresh: tests and users set it late)
        from medhall.config import get_settings

        api_key = get_settings(fresh=True).llm_api_key
    if api_key is None and os.environ.get("OPENAI_API_KEY"):
        api_key = SecretStr(os.environ["OPENAI_API_KEY"])
    if api_key is None and base_url:
        api_key = SecretStr(NO_KEY)
    if api_key is None or not api_key.get_secret_value():
        raise ConfigError("no API key: set MEDHALL_LLM_API_KEY or OPENAI_API_KEY, "
                          "or MEDHALL_LLM_BASE_URL for a local server that needs none")
    return api_key


def render_messages(messages: list[Message], *, text_only: bool = False) -> list[dict[str, Any]]:
    """Messages in the chat-completions wire format (images as ``image_url`` data URLs)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
        elif text_only:
            if m.images():
                raise BackendError("this backend is text-only but the request has an image", kind="unsupported")
            out.append({"role": m.role, "content": m.text()})
        else:
            out.append({"role": m.role, "content": [_render_part(p) for p in m.content]})
    return out


def _render_part(part: Any) -> dict[str, Any]:
    if isinstance(part, ImagePart):
        image_url: dict[str, Any] = {"url": part.data_url}
        if part.detail:
            image_url["detail"] = part.detail
        return {"type": "image_url", "image_url": image_url}
    return {"type": "text", "text": part.text}


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def parse_completion(raw: bytes, where: str) -> BackendResponse:
    """The first choice's text, finish_reason and usage; a body that is not a completion is malformed."""
    try:
        data = json.loads(raw)
        if "error" in data and "choices" not in data:
            raise BackendError(f"server error at {where}: {str(data['error'])[:200]}", kind="server")
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        message = choice.get("message") or {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise BackendError(f"malformed response body from {where}: {type(exc).__name__}: {exc}"[:300],
                           kind="malformed") from None
    if message.get("refusal"):
        raise BackendError(f"the model refused: {message['refusal'][:200]}", kind="refused", retryable=False)
    return BackendResponse(message.get("content") or "", choice.get("finish_reason"),
                           int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


class OpenAICompatBackend:
    """Chat completions over HTTP with the ``openai`` SDK. The key is held as a SecretStr.

    ``transport``: "httpx" (the SDK's default) or "aiohttp" (the SDK's ``DefaultAioHttpClient``,
    which needs ``aiohttp``: about half the client CPU per request, for busy machines).
    ``text_only`` sends plain-string contents and refuses images (servers and models without
    vision). ``supports_json_schema=False`` for servers that reject ``response_format``: the
    client then validates the reply itself.
    """

    name = "openai"

    def __init__(self, *, base_url: str | None = None, model: str | None = None,
                 api_key: SecretStr | str | None = None, timeout: float = 120.0,
                 max_connections: int = 64, text_only: bool = False,
                 supports_json_schema: bool = True, transport: Literal["httpx", "aiohttp"] = "httpx") -> None:
        if not model:
            raise ConfigError("no model: set MEDHALL_LLM_MODEL or pass model=")
        self.base_url = check_url(base_url)
        self.model = model
        self._api_key = _resolve_key(api_key, base_url)
        self.timeout = timeout
        self.max_connections = max_connections
        self.text_only = text_only
        self.supports_json_schema = supports_json_schema
        self.transport = transport
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}

    @classmethod
    def from_settings(cls, settings: Any = None, **overrides: Any) -> OpenAICompatBackend:
        """Build from :func:`medhall.config.get_settings` (environment ``MEDHALL_LLM_*``)."""
        if settings is None:
            from medhall.config import get_settings

            settings = get_settings()
        kwargs = {"base_url": settings.llm_base_url, "model": settings.llm_model, "api_key": settings.llm_api_key}
        return cls(**{**kwargs, **overrides})

    def __repr__(self) -> str:
        return f"OpenAICompatBackend(base_url={self.where!r}, model={self.model!r}, api_key=SecretStr('**********'))"

    @property
    def where(self) -> str:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"

    @property
    def endpoint(self) -> str:
        """The endpoint without credentials: part of the cache key and of what a judge is."""
        return redacted_url(check_url(self.where) or "")

    async def server_model(self) -> dict[str, Any] | None:
        """What the server reports about ``model`` at ``GET /models`` (id, root, owner, meta; not
        ``created``, which some servers set per request), or None where it reports nothing."""
        try:
            async with asyncio.timeout(min(self.timeout, 10.0)):
                raw = await self._client().get("/models", cast_to=bytes)
            entries = json.loads(raw).get("data") or []
        except Exception:  # noqa: BLE001 - an identity is a bonus: any failure means none
            return None
        for entry in entries:
            if isinstance(entry, dict) and entry.get("id") == self.model:
                return {k: entry[k] for k in ("id", "root", "owned_by", "meta") if k in entry}
        return None

    def _client(self) -> Any:
        """The SDK client of the running event loop (connection pools cannot cross loops)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            import openai

            client = openai.AsyncOpenAI(api_key=self._api_key.get_secret_value(), base_url=self.base_url,
                                        max_retries=0, timeout=self.timeout, http_client=self._http_client())
            self._clients = {lp: c for lp, c in self._clients.items() if not lp.is_closed()}
            self._clients[loop] = client
        return client

    def _http_client(self) -> Any:
        """The SDK's httpx (default) or aiohttp transport, one pool sized for ``max_connections``."""
        import openai

        try:
            import httpx2 as httpx_mod  # the transport package of openai >= 3
        except ImportError:  # pragma: no cover - older SDKs use httpx
            import httpx as httpx_mod

        limits = httpx_mod.Limits(max_connections=self.max_connections,
                                  max_keepalive_connections=self.max_connections)
        timeout = httpx_mod.Timeout(self.timeout, connect=min(self.timeout, 10.0))
        cls = openai.DefaultAioHttpClient if self.transport == "aiohttp" else openai.DefaultAsyncHttpxClient
        return cls(limits=limits, timeout=timeout)

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body sent for ``request``."""
        body: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": render_messages(request.messages, text_only=self.text_only),
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = request.stop
        if request.response_format is not None:
            body["response_format"] = request.response_format
        return body

    async def complete(self, request: ChatRequest) -> BackendResponse:
        import openai

        body = self.body(request)
        error: BackendError | None = None
        try:
            raw = await self._client().post("/chat/completions", body=body, cast_to=bytes)
        except openai.APIError as exc:
            error = self._classify(exc, body["model"], body.get("response_format"))
        if error is not None:  # raised outside the except block: no chained SDK exception
            raise error
        return parse_completion(raw, self.where)

    def _classify(self, exc: Exception, model: str, response_format: dict[str, Any] | None = None) -> BackendError:
        """An SDK error as a BackendError whose message names the cause but never the key."""
        import openai

        where, secret = self.where, self._api_key.get_secret_value()
        if isinstance(exc, openai.APITimeoutError):
            return BackendError(f"timed out after {self.timeout:g}s at {where}", kind="timeout")
        if isinstance(exc, openai.APIConnectionError):
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
            return BackendError(f"connection to {where} failed ({cause})", kind="connection")
        if not isinstance(exc, openai.APIStatusError):
            return BackendError(scrub(f"unexpected response from {where}: {exc}", secret)[:300], kind="malformed")
        status = exc.status_code
        detail = scrub(_server_message(exc), secret)[:200]
        if response_format and status in (400, 422, 500, 501) and FORMAT_ERROR.search(detail):
            return BackendError(f"{where} does not accept response_format {response_format.get('type')!r} "
                                f"({status}): {detail}", kind="unsupported_format", status=status, retryable=False)
        if status == 401:
            return BackendError(f"authentication failed at {where} (401): {KEY_HINT}", kind="auth", status=401)
        if status == 403:
            return BackendError(f"permission denied at {where} (403) for model {model!r}: {KEY_HINT}",
                                kind="permission", status=403)
        if status == 404:
            return BackendError(f"not found at {where} (404): check the base URL and the model name "
                                f"{model!r}: {detail}", kind="not_found", status=404)
        if status == 429:
            return BackendError(f"rate limited at {where} (429): {detail}", kind="rate_limit", status=429,
                                retry_after=retry_after_seconds(exc.response.headers))
        if status >= 500 or status in (408, 409):
            return BackendError(f"server error at {where} ({status}): {detail}", kind="server", status=status)
        return BackendError(f"bad request at {where} ({status}): {detail}", kind="bad_request", status=status)

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.close()


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        return str(err.get("message", err) if isinstance(err, dict) else err)
    return str(body or exc.message)
