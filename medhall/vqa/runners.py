"""Runners of the models under test: how a :class:`~medhall.vqa.config.ModelSpec` becomes a
:class:`medhall.infer.base.Runner`, and a pool that keeps one loaded per model.

``local_vlm`` models get a :class:`medhall.infer.LocalVLM` (loaded on first answer); ``api``
models a :class:`medhall.infer.api.APIModel` on a client of their endpoint
(:func:`medhall.vqa.config.api_parts`). :class:`RunnerPool` makes a model's runner once, so
all its shards are answered by one loaded model, and unloads it before the next model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medhall.vqa.config import ModelSpec, VQAConfig, api_parts, model_key

if TYPE_CHECKING:
    from medhall.infer.base import Answer, Query, Runner

RunnerFactory = Callable[[ModelSpec, VQAConfig], "Runner"]


def local_vlm_runner(spec: ModelSpec, cfg: VQAConfig) -> Runner:
    """A :class:`medhall.infer.LocalVLM` for ``spec`` (nothing is loaded until it answers)."""
    from medhall.infer import LocalVLM

    options = {"max_new_tokens": cfg.max_new_tokens, **spec.settings}
    return LocalVLM(spec.path, adapter_path=spec.adapter, name=spec.name, **options)


@dataclass
class ClientOwningRunner:
    """An API runner with the LLM client made for it: :meth:`unload` closes the client."""

    runner: Any
    client: Any

    @property
    def name(self) -> str:
        return self.runner.name

    def answer(self, items: Sequence[Query]) -> list[Answer]:
        return self.runner.answer(items)

    def settings(self) -> dict[str, Any]:
        return self.runner.settings()

    def unload(self) -> None:
        self.client.close()


def api_runner(spec: ModelSpec, cfg: VQAConfig) -> Runner:
    """A :class:`medhall.infer.api.APIModel` on a client made from :func:`api_parts` (API keys
    come from the environment, never from the config)."""
    from medhall.endpoints import make_client
    from medhall.infer.api import APIModel

    endpoint, options = api_parts(spec, cfg)
    client = make_client(endpoint)
    return ClientOwningRunner(APIModel(client, name=spec.name, **options), client)


RUNNER_FACTORIES: dict[str, RunnerFactory] = {"local_vlm": local_vlm_runner, "api": api_runner}


def make_runner(spec: ModelSpec, cfg: VQAConfig) -> Runner:
    """The runner of ``spec.kind`` (see :data:`RUNNER_FACTORIES`)."""
    return RUNNER_FACTORIES[spec.kind](spec, cfg)


@dataclass
class RunnerPool:
    """At most one runner per model, made on first use and unloaded by :meth:`release`."""

    factory: RunnerFactory = make_runner
    _runners: dict[str, Runner] = field(default_factory=dict, init=False, repr=False)

    def get(self, spec: ModelSpec, cfg: VQAConfig) -> Runner:
        key = f"{spec.name}:{model_key(spec, cfg)}"
        if key not in self._runners:
            self._runners[key] = self.factory(spec, cfg)
        return self._runners[key]

    def release(self, name: str) -> None:
        """Unload and forget the runners of model ``name``."""
        for key in [k for k in self._runners if k.rsplit(":", 1)[0] == name]:
            unload = getattr(self._runners.pop(key), "unload", None)
            if callable(unload):
                unload()

    def release_all(self) -> None:
        for key in list(self._runners):
            self.release(key.rsplit(":", 1)[0])


__all__: Sequence[str] = [
    "RUNNER_FACTORIES",
    "ClientOwningRunner",
    "RunnerFactory",
    "RunnerPool",
    "api_runner",
    "local_vlm_runner",
    "make_runner",
]
