"""Training launched as a subprocess: accelerate's command line, events and output streamed,
a crash told apart from an error the run explained (only a crash is worth a retry)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from medhall.train.config import load_config
from medhall.train.launch import EVENT, LaunchError, command, config_path, launch


def test_the_command_is_accelerate_launch_of_the_train_module(tmp_path) -> None:
    cfg = load_config(None, ["lora.r=4", "lora.preset=custom", "lora.alpha=8", "lora.dropout=0",
                             "lora.target_modules=q_proj"], dataset="d", base="tiny:llava")
    cmd, result = command(cfg, tmp_path / "w", processes=2)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--num_processes" in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("-m", 3) + 1] == "medhall.train"
    assert result == tmp_path / "w" / "result.json"
    written = (tmp_path / "w" / "train_config.json").read_text()
    assert load_config(tmp_path / "w" / "train_config.json") == cfg and '"r": 4' in written
    cmd, _ = command(cfg, tmp_path / "w", accelerate_config="one_gpu")
    assert cmd[cmd.index("--config_file") + 1].endswith("one_gpu.yaml")
    with pytest.raises(ValueError, match="unknown accelerate config 'nope'"):
        config_path("nope")


def script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "s.py"
    path.write_text(body)
    return [sys.executable, str(path)]


def test_events_and_lines_stream_and_the_result_is_read(tmp_path) -> None:
    result = tmp_path / "r.json"
    cmd = script(tmp_path, f"""
import json
print("hello")
print({EVENT!r} + json.dumps({{"step": 1, "max_steps": 2, "loss": 3.5}}))
print({EVENT!r} + "not json")
open({str(result)!r}, "w").write(json.dumps({{"train_id": "t"}}))
""")
    lines, events = [], []
    out = launch(cmd, result, on_line=lines.append, on_event=events.append)
    assert out.result == {"train_id": "t"} and events == [{"step": 1, "max_steps": 2, "loss": 3.5}]
    assert lines == ["hello", EVENT + "not json"]  # a broken event line is shown, not lost


def test_a_crash_is_retryable_and_an_explained_error_is_not(tmp_path) -> None:
    crash = script(tmp_path, "import os, signal\nprint('step 3')\nos.kill(os.getpid(), signal.SIGKILL)\n")
    with pytest.raises(LaunchError, match="code -9:\nstep 3") as e:
        launch(crash, tmp_path / "r.json")
    assert e.value.retryable
    explained = script(tmp_path, "import sys\nprint('error: no dataset x in the store')\nsys.exit(1)\n")
    with pytest.raises(LaunchError, match="no dataset x") as e:
        launch(explained, tmp_path / "r.json")
    assert not e.value.retryable
    silent = script(tmp_path, "print('done')\n")  # exit 0 but no result: not a success
    with pytest.raises(LaunchError, match="code 0"):
        launch(silent, tmp_path / "r.json")
