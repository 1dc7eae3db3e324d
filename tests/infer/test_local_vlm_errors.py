"""A local VLM that cannot be loaded says why in one line, before anything heavy is imported."""

from __future__ import annotations

import pytest

from medhall.infer.local_vlm import check_checkpoint


def test_a_missing_or_empty_checkpoint_directory_is_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*gone \(no such directory\)"):
        check_checkpoint(str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match=r"no config.json there"):
        check_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    check_checkpoint(str(tmp_path))  # a checkpoint directory passes
    check_checkpoint("llava-hf/llava-1.5-7b-hf")  # a hub name is the hub's to resolve
