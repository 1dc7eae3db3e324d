"""Training as a subprocess through ``accelerate launch``, its output streamed line by line.

The Prefect flows train this way (never in the flow's own process): ``accelerate launch`` starts
one process per device with the config kept in ``medhall/train/accelerate/`` (:data:`CONFIGS`),
each runs ``python -m medhall.train`` (the ``medhall train`` command), and rank 0 prints one
``medhall-event {json}`` line per logging step (:func:`events_callback`) and writes the run's
result as JSON (``--result-json``), which :func:`launch` reads back. A run that dies is started
again the same way and resumes from its last checkpoint (the train id, and so the output
folder, is the same).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medhall.errors import MedhallError
from medhall.train.config import TrainConfig

EVENT = "medhall-event "
CONFIG_DIR = Path(__file__).parent / "accelerate"
#: Named accelerate configs kept in the repo (``auto``: accelerate's defaults for this machine).
CONFIGS = {
    "one_gpu": "one_gpu.yaml",
    "eight_gpu_zero2": "eight_gpu_zero2.yaml",
    "eight_gpu_fsdp": "eight_gpu_fsdp.yaml",
    "cpu_2proc": "cpu_2proc.yaml",
}


class LaunchError(MedhallError, RuntimeError):
    """The training subprocess failed; the message has its last lines. ``retryable``: it died
    (a signal, a crash) rather than stopping with an error it explained (an ``error:`` line:
    bad data, config or model, which a retry would meet again). accelerate turns every
    failure of its child into exit code 1, so the output tells them apart, not the code."""

    def __init__(self, message: str, returncode: int, explained: bool) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.retryable = not explained


def config_path(name: str) -> Path:
    """A named config's file, or ``name`` itself when it is a path to a YAML file."""
    if name in CONFIGS:
        return CONFIG_DIR / CONFIGS[name]
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"unknown accelerate config {name!r}: use one of {', '.join(CONFIGS)} or a YAML file")
    return path


def events_callback() -> Any:
    """A ``TrainerCallback`` printing ``medhall-event {"step", "max_steps", "epoch", metrics...}``
    on rank 0 at every logging step (what a flow parses for its progress and logs)."""
    from transformers import TrainerCallback

    class Events(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
            if state.is_world_process_zero:
                values = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float)}
                print(EVENT + json.dumps({"step": state.global_step, "max_steps": state.max_steps, **values}), flush=True)

    return Events()


def command(cfg: TrainConfig, work_dir: Path, *, accelerate_config: str | None = None,
            processes: int = 1) -> tuple[list[str], Path]:
    """The ``accelerate launch`` command line for ``cfg`` and where its result JSON will be.
    ``accelerate_config``: a name of :data:`CONFIGS` or a YAML file; None: ``processes`` processes
    on this machine (CPU when there is no GPU)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    cfg_file, result = work_dir / "train_config.json", work_dir / "result.json"
    cfg_file.write_text(cfg.model_dump_json(indent=2))
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cmd += ["--config_file", str(config_path(accelerate_config))]
    else:
        cmd += ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]
        if processes > 1:
            # torchrun's launcher: N local processes. ``--cpu`` (and MULTI_CPU) would start ONE
            # process and leave the rest to mpirun (accelerate 1.16); without CUDA each process
            # trains on the CPU over gloo (see accelerate/cpu_2proc.yaml).
            cmd += ["--multi_gpu", "--main_process_port", "0"]
    cmd += ["-m", "medhall.train", cfg.dataset, "--config", str(cfg_file), "--result-json", str(result), "--events"]
    return cmd, result


@dataclass
class Launched:
    result: dict[str, Any]
    events: list[dict[str, Any]]
    lines: int


def launch(cmd: list[str], result_path: Path, *, on_line: Callable[[str], None] | None = None,
           on_event: Callable[[dict[str, Any]], None] | None = None, env: dict[str, str] | None = None) -> Launched:
    """Run ``cmd``, handing each output line to ``on_line`` and each event to ``on_event``; the
    result JSON, or :class:`LaunchError` with the last lines when it fails."""
    result_path.unlink(missing_ok=True)
    events, tail, n, explained = [], [], 0, False
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={**os.environ, **(env or {})})
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line, n = line.rstrip("\n"), n + 1
            if line.startswith(EVENT):
                try:
                    event = json.loads(line[len(EVENT):])
                except json.JSONDecodeError:
                    event = None
                if event is not None:
                    events.append(event)
                    if on_event:
                        on_event(event)
                    continue
            tail = [*tail[-19:], line]
            explained = explained or line.startswith("error:")
            if on_line:
                on_line(line)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0 or not result_path.exists():
        last = "\n".join(t for t in tail if t.strip())
        raise LaunchError(f"training exited with code {rc}" + (f":\n{last}" if last else ""), rc, explained)
    return Launched(json.loads(result_path.read_text()), events, n)


__all__ = ["CONFIGS", "EVENT", "LaunchError", "Launched", "command", "config_path", "events_callback", "launch"]
