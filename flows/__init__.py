"""Prefect flows composing the tasks in ``tasks/``: ingest_corpus, build_default, ...

:func:`run` is how the ``medhall`` command starts a flow: it finds this function through the
``medhall`` entry point ``flows`` (pyproject.toml), so the library never imports the layers
above it (``medhall/`` <- ``tasks/`` <- ``flows/`` <- ``deployments/``).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: Flow name -> module under ``flows/`` that defines it.
FLOWS = {
    "ablation": "flows.ablation",
    "build_default": "flows.default",
    "build_dataset": "flows.build_dataset",
    "evaluate_model": "flows.evaluate_model",
    "ingest_corpus": "flows.ingest",
    "train_lora": "flows.train_lora",
    "zero_shot_vqa": "flows.zero_shot_vqa",
}


def run(name: str, **params: Any) -> Any:
    """Run flow ``name`` with ``params``, without the heartbeat thread (it costs about 1 s at
    the end of every run)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    flow_fn = getattr(import_module(FLOWS[name]), name)
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return flow_fn(**params)
