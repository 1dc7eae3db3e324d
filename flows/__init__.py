"""Prefect flows composing the tasks in ``tasks/``: ingest_corpus, build_default, ...

:func:`run` is how the ``medhall`` command starts a flow: it finds this function through the
``medhall`` entry point ``flows`` (pyproject.toml), so the library never imports the layers
above it (``medhall/`` <- ``tasks/`` <- ``flows/`` <- ``deployments/``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path
from typing import Any

#: Flow name -> module under ``flows/`` that defines it.
FLOWS = {
    "ablation": "flows.ablation",
    "build_default": "flows.default",
    "build_dataset": "flows.build_dataset",
    "evaluate_model": "flows.evaluate_model",
    "ingest_corpus": "flows.ingest",
    "judge_agreement": "flows.judge_agreement",
    "train_lora": "flows.train_lora",
    "zero_shot_vqa": "flows.zero_shot_vqa",
}


def run(name: str, **params: Any) -> Any:
    """Run flow ``name`` with ``params`` as a command does: without the heartbeat thread (it
    costs about 1 s at the end of every run), stopped at once by Ctrl-C or SIGTERM, and with a
    temporary Prefect server that does not outlive this process (:func:`_stoppable`)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    flow_fn = getattr(import_module(FLOWS[name]), name)
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), _stoppable():
        return flow_fn(**params)


def _children() -> list[int]:
    """Pids of this process's children (Linux /proc; empty elsewhere)."""
    me, out = os.getpid(), []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(line for line in status.read_text().splitlines() if line.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        if int(ppid.split()[1]) == me:
            out.append(int(status.parent.name))
    return out


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """In a child about to exec: get SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the server is stopped by the handlers only
        pass


@contextlib.contextmanager
def _stoppable() -> Iterator[None]:
    """Ctrl-C (SIGINT) or SIGTERM stops the run within a second: the children (the temporary
    Prefect server, a training subprocess) are terminated and the process exits 130 / 143.
    Every stage writes its outputs atomically with its completion marker last, so what finished
    is kept and a re-run resumes. The temporary server is also told to die with this process,
    so a ``kill -9`` leaves no server behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        print("\ninterrupted: stopping now; what was finished is saved, run the same command again to resume",
              file=sys.stderr, flush=True)
        for pid in _children():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        os._exit(128 + signum)

    from prefect.server.api import server as prefect_server

    original = prefect_server.SubprocessASGIServer._run_uvicorn_command

    def with_parent(self: Any) -> Any:
        popen = subprocess.Popen

        def launch(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("preexec_fn", _die_with_parent)
            return popen(*args, **kwargs)

        subprocess.Popen = launch  # type: ignore[misc]
        try:
            return original(self)
        finally:
            subprocess.Popen = popen  # type: ignore[misc]

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    prefect_server.SubprocessASGIServer._run_uvicorn_command = with_parent  # type: ignore[method-assign]
    try:
        yield
    finally:
        prefect_server.SubprocessASGIServer._run_uvicorn_command = original  # type: ignore[method-assign]
        for sig, handler in previous.items():
            signal.signal(sig, handler)
