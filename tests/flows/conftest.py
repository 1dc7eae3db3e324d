"""One temporary Prefect server (prefect_test_harness) for all flow tests."""

import pytest


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    import os

    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # the heartbeat thread costs ~1 s at the end of every flow run (../shared/OFFLINE.md)
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def flow_home(prefect_server, home, monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(tmp_path / "results"))
    return home
