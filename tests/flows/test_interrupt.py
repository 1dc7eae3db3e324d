"""Ctrl-C stops a flow-mode command at once and takes its children with it; a kill -9 leaves no
temporary server behind (the children die with the process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import subprocess, sys, time
    import flows
    with flows._stoppable():
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 preexec_fn=flows._die_with_parent)
        print(child.pid, flush=True)
        time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def _start(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(proc.stdout.readline())
    return proc, child


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="children are found through /proc (Linux)")
def test_ctrl_c_stops_at_once_and_stops_the_children(tmp_path) -> None:
    proc, child = _start(tmp_path)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 130 and time.perf_counter() - t0 < 5
    assert "run the same command again to resume" in proc.stderr.read()
    deadline = time.time() + 5
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="Linux parent-death signal")
def test_a_killed_process_leaves_no_child_behind(tmp_path) -> None:
    proc, child = _start(tmp_path)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.time() + 5
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child)
