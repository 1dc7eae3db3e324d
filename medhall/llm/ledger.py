"""A run's LLM calls into the store: the ``llm_calls`` table of the dataset the run wrote.

Every call the layer makes is recorded (in the cache's ledger) with the client's ``run_id``;
:func:`write_ledger` copies one run's rows into the store, so ``medhall sql`` shows what a build
or an evaluation asked, what it paid, and what came from the cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medhall.store import Artifact, ArtifactStore


def write_ledger(store: ArtifactStore, dataset: str, run_id: str, config: dict[str, Any],
                 client: Any = None) -> Artifact | None:
    """Run ``run_id``'s ledger rows as a version of ``llm_calls`` for ``dataset`` (from the store's
    own cache; with ``client``, that client's rows under its own ``run_id``); None when the run
    made no LLM call."""
    from medhall.llm.cache import ResponseCache
    from medhall.schema import from_rows

    if client is not None:
        rows = client.ledger_table(client.run_id)
    else:
        path = Path(store.root) / "llm" / "cache.sqlite"
        if not path.exists():
            return None
        cache = ResponseCache(path)
        try:
            rows = from_rows("llm_calls", cache.ledger_rows(run_id))
        finally:
            cache.close()
    if rows.num_rows == 0:
        return None
    return store.write("llm_calls", rows, dataset=dataset, config=config, run_id=run_id)


__all__ = ["write_ledger"]
