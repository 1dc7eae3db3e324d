"""The ``judge_agreement`` Prefect flow under a temporary Prefect server (slow: the server starts
in 10-30 s on 2 cores): the judge on the local test server, Prefect artifacts, a re-run judges nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import os

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), prefect_test_harness(server_startup_timeout=120):
        yield


def test_the_flow_publishes_the_agreement_and_resumes(prefect_server, home, monkeypatch, tmp_path: Path,
                                                      medhalltune_dir, server):
    from prefect.client.orchestration import get_client

    from flows.judge_agreement import judge_agreement
    from medhall.endpoints import LLMSettings

    monkeypatch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(tmp_path / "results"))
    server.configure(responder="medhall")
    params = {"judge": LLMSettings(base_url=server.base_url, model="flow-judge"), "n": 30, "n_boot": 50,
              "release_dir": str(medhalltune_dir), "shard_size": 10}
    out = judge_agreement(**params)
    assert out["ok"] and out["judged"] == 30 and out["judge_shards_run"] == 3
    assert Path(out["paths"]["markdown"]).read_text().startswith("# Judge agreement: flow-judge vs gpt-4o")
    served = server.stats()["served"]
    again = judge_agreement(**params)
    assert again["judge_shards_run"] == 0 and server.stats()["served"] == served

    async def keys() -> set[str]:
        async with get_client() as c:
            return {a.key for a in await c.read_artifacts()}

    import asyncio

    found = asyncio.run(keys())
    assert {"agreement-flow-judge-n30-report", "agreement-flow-judge-n30-agreement"} <= found
