"""Shared fixtures: an isolated store per test, the offline environment, ../shared data."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
MEDHALLTUNE = SHARED / "data" / "medhalltune"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh MEDHALL_HOME for the test; settings re-read."""
    from medhall.config import get_settings

    root = tmp_path / "home"
    monkeypatch.setenv("MEDHALL_HOME", str(root))
    get_settings(fresh=True)
    yield root
    get_settings(fresh=True)


@pytest.fixture
def store(home: Path):
    from medhall.store import ArtifactStore

    return ArtifactStore(home)


#: The dataset :func:`built_template` builds from the embedded sample corpus.
BUILT_DATASET = "sample-instruct"


@pytest.fixture(scope="session")
def built_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store root with the sample corpus ingested and the default build made (once per session)."""
    from medhall import sample
    from medhall.build import run_build
    from medhall.jobs import default_build_config, ingest_to_store
    from medhall.store import ArtifactStore

    root = tmp_path_factory.mktemp("built")
    store = ArtifactStore(root)
    captions = sample.materialize(root / "sample_corpus")
    ingest_to_store("llava_med_captions", [captions], dataset="sample", store=store)
    run_build(store, default_build_config("sample", BUILT_DATASET))
    return root


@pytest.fixture
def built(store: Any, built_template: Path) -> Any:
    """The test's own store holding a copy of the built dataset."""
    shutil.copytree(built_template / "store", store.root / "store", dirs_exist_ok=True)
    return store


@pytest.fixture
def medhalltune_dir() -> Path:
    """The real MedHallTune validation files in ../shared; skipped where absent."""
    if not MEDHALLTUNE.is_dir():
        pytest.skip(
            f"{MEDHALLTUNE} not present (a user's own clone without ../shared): "
            "the real-release tests need the MedHallTune files there"
        )
    return MEDHALLTUNE


SERVER_PATH = Path(__file__).resolve().parent / "llm" / "server.py"


def _load_server_module() -> Any:
    """tests/llm/server.py as a module (it is no package)."""
    name = "medhall_llm_test_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SERVER_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses need the module registered before it runs
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def llm_server() -> Iterator[Any]:
    """One local OpenAI-compatible server process (loopback) for the session; tests reconfigure it."""
    with _load_server_module().ServerProcess() as server:
        yield server


@pytest.fixture()
def server(llm_server: Any) -> Any:
    """The session server, reset: no latency, no faults, any key accepted, counts zeroed."""
    llm_server.configure(latency=0.0, fault_rate=0.0, api_key=None, json_schema=True, retry_after="0.05",
                         hang_s=30.0, responder=None, response_formats=None, format_status=400, model_info=None)
    llm_server.reset()
    return llm_server
