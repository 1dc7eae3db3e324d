"""Exceptions of the LLM layer. Messages never contain an API key (see :func:`scrub`)."""

from __future__ import annotations

import re

# Kinds of backend failure that a retry can cure.
RETRYABLE_KINDS = frozenset({"rate_limit", "server", "timeout", "connection", "malformed"})
_KEYLIKE = re.compile(r"(Bearer\s+)\S+|\b(sk-[A-Za-z0-9_\-]{6,})", re.I)


class LLMError(Exception):
    """Base class of the layer's errors."""


class ConfigError(LLMError):
    """The layer is misconfigured (no key, no model, unknown backend)."""


class BackendError(LLMError):
    """One failed attempt, classified.

    ``kind`` is one of rate_limit, server, timeout, connection, malformed (retried) or
    auth, permission, not_found, bad_request, unsupported, unsupported_format, refused, backend,
    budget, unreachable (not retried).
    """

    def __init__(self, message: str, *, kind: str, status: int | None = None,
                 retry_after: float | None = None, retryable: bool | None = None, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent  # False: refused before the request left (budget, an unreachable endpoint)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.retryable = kind in RETRYABLE_KINDS if retryable is None else retryable

    def __str__(self) -> str:
        return self.args[0]


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with every given secret, bearer token and ``sk-...`` key replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _KEYLIKE.sub(lambda m: (m.group(1) or "") + "***", text)
