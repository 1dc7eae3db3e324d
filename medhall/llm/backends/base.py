"""The one small interface every backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from medhall.llm.types import BackendResponse, ChatRequest


@runtime_checkable
class Backend(Protocol):
    """Makes one attempt at one request. No retries, caching or rate limits here: the client does those.

    ``complete`` gets a request whose ``model`` is filled in. It returns the response (including
    ``finish_reason == "length"``: judging it is the client's job) or raises
    :class:`medhall.llm.errors.BackendError` with a kind that says whether a retry may help.
    """

    name: str
    model: str
    supports_json_schema: bool

    async def complete(self, request: ChatRequest) -> BackendResponse: ...

    async def aclose(self) -> None: ...
