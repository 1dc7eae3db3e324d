"""SFT with LoRA on tiny LLaVA / Qwen2-VL built from configs: the adapter learns (its weights
change, the loss on a fixed batch falls), reloads in the evaluation's runner and generates like
the merged model, a killed run resumes where its checkpoint left it, and bad input stops with a
message that says what to change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medhall.train.config import load_config

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

COLOURS = ["red", "green", "blue", "white", "black", "yellow", "gray", "purple"]


def llava_file(tmp_path: Path, n: int = 8) -> Path:
    """A LLaVA JSON of ``n`` one-QA records, each image a different colour."""
    from PIL import Image

    records = []
    for i in range(n):
        img = tmp_path / f"img{i}.png"
        Image.new("RGB", (30, 30), COLOURS[i % len(COLOURS)]).save(img)
        records.append({"id": f"r{i}", "image": img.name, "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is this image?"},
            {"from": "gpt", "value": f"The image is {COLOURS[i % len(COLOURS)]}."}]})
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    return path


def config(tmp_path: Path, base: str, *overrides: str, **fields):
    if "dataset" not in fields:
        fields["dataset"] = str(llava_file(tmp_path))
    fields = {"base": base, "lr_scheduler": "constant", "warmup_ratio": 0.0,
              "output_dir": str(tmp_path / "run"), **fields}
    return load_config(None, ["lora.preset=small", "lora.dropout=0", *overrides], **fields)


def adapter_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def losses(out_dir: Path) -> dict[int, float]:
    from medhall.train.trainer import read_metrics

    return {r["step"]: r["value"] for r in read_metrics(out_dir / "metrics.jsonl") if r["metric"] == "loss"}


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_the_loss_on_a_fixed_batch_falls_and_the_lora_weights_change(store, tiny_bases, tmp_path, family) -> None:
    from medhall.train.trainer import run_training

    cfg = config(tmp_path, tiny_bases[family], dataset=str(llava_file(tmp_path, 4)), per_device_batch=4,
                 max_steps=20, learning_rate=3e-3)
    res = run_training(store, cfg)
    curve = losses(res.out_dir)
    assert res.steps == 20 and sorted(curve) == list(range(1, 21))
    assert curve[20] < 0.5 * curve[1]  # every step sees the same 4 examples: the model learns them
    weights = adapter_weights(res.adapter_dir)
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(w.abs().max() > 0 for w in lora_b)  # peft initialises B to zero
    # the projector is trained in full and saved with the adapter (LLaVA's LoRA recipe)
    assert any("multi_modal_projector" in k or "merger" in k for k in weights)
    assert not any("vision_tower" in k or ".visual.blocks" in k for k in weights)  # the vision tower stays frozen


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_an_unfrozen_vision_tower_is_trained_and_saved_with_the_adapter(store, tiny_bases, tmp_path, family) -> None:
    from safetensors.torch import load_file

    from medhall.train.trainer import run_training

    res = run_training(store, config(tmp_path, tiny_bases[family], "freeze_vision=false", max_steps=2,
                                     learning_rate=1e-2))
    tower = "vision_tower" if family == "llava" else "visual"
    saved = {k: w for k, w in adapter_weights(res.adapter_dir).items() if f".{tower}." in k}
    assert saved
    base = load_file(str(next(Path(tiny_bases[family]).glob("*.safetensors"))))
    changed = [k for k, w in saved.items() if (b := base.get(_base_key(k, base))) is not None and not torch.equal(w, b)]
    assert changed  # trained, not only copied


def _base_key(adapter_key: str, base: dict) -> str | None:
    """The base checkpoint's key of an adapter's full-module weight (peft's modules_to_save copy)."""
    tail = adapter_key.replace("base_model.model.", "").replace("modules_to_save.default.", "")
    tail = tail.split("vision_tower.", 1)[-1] if "vision_tower." in tail else tail.split("visual.", 1)[-1]
    return next((k for k in base if k.endswith(tail)), None)


def test_the_adapter_reloads_in_the_evaluation_runner_and_answers_like_the_merged_model(store, tiny_bases, tmp_path) -> None:
    from medhall.infer.base import Query
    from medhall.infer.local_vlm import LocalVLM
    from medhall.train.model import read_metadata
    from medhall.train.trainer import run_training

    res = run_training(store, config(tmp_path, tiny_bases["llava"], "merge=true", max_steps=8, learning_rate=1e-2))
    meta = read_metadata(res.adapter_dir)
    assert meta["base_path"] == tiny_bases["llava"] and meta["family"] == "llava"
    assert meta["data"]["file_sha256"] and meta["medhall_version"] and meta["config"]["lora"]["preset"] == "small"
    query = [Query("q1", "What colour is this image?", str(tmp_path / "img0.png"))]

    def say(**kw) -> str:
        answer = LocalVLM(device="cpu", max_new_tokens=8, **kw).answer(query)[0]
        assert answer.error is None
        return answer.text

    # every adapter folder is called "adapter": the runner names the model by method, data and run
    assert LocalVLM(tiny_bases["llava"], adapter_path=res.adapter_dir).name == f"llava+sft-file-{res.train_id[4:12]}"
    tuned = say(model_path=tiny_bases["llava"], adapter_path=res.adapter_dir)
    assert tuned == say(model_path=res.merged_dir)
    assert tuned != say(model_path=tiny_bases["llava"])


KILLER = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from medhall.store import ArtifactStore
    from medhall.train.config import TrainConfig
    from medhall.train.trainer import run_training

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)

    run_training(ArtifactStore(sys.argv[1]), TrainConfig.model_validate_json(open(sys.argv[2]).read()),
                 callbacks=[Kill()])
""")


def test_a_killed_run_resumes_from_its_last_checkpoint_and_its_curve_continues(store, tiny_bases, tmp_path) -> None:
    from medhall.train.trainer import run_training

    def cfg(name: str):
        return config(tmp_path, tiny_bases["llava"], max_steps=10, per_device_batch=2, save_steps=3,
                      learning_rate=3e-3, output_dir=str(tmp_path / name))

    whole = run_training(store, cfg("whole"))
    killed = cfg("killed")
    (tmp_path / "cfg.json").write_text(killed.model_dump_json())
    (tmp_path / "kill.py").write_text(KILLER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, str(tmp_path / "kill.py"), str(store.root), str(tmp_path / "cfg.json"), "8"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    out = tmp_path / "killed"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert not (out / "adapter").exists() and max(losses(out)) == 7  # logged up to step 7, then killed

    resumed = run_training(store, killed)
    assert Path(resumed.resumed_from).name == "checkpoint-6" and resumed.steps == 10
    curve, reference = losses(out), losses(whole.out_dir)
    assert sorted(curve) == list(range(1, 11))  # steps 7.. redone once: no gap, no duplicate
    # the resumed run restores weights, optimizer, schedule, data order and RNG: the same curve
    assert curve == pytest.approx(reference, rel=1e-4)
    before, after = adapter_weights(whole.adapter_dir), adapter_weights(resumed.adapter_dir)
    assert all(torch.allclose(before[k], after[k], atol=1e-5) for k in before)


def test_a_nan_loss_stops_the_run_with_what_to_change(store, tiny_bases, tmp_path) -> None:
    from transformers import TrainerCallback

    from medhall.train.trainer import TrainError, run_training

    class Poison(TrainerCallback):  # what an overflow does: a weight becomes NaN after step 3
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == 3:
                with torch.no_grad():
                    next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(float("nan"))

    with pytest.raises(TrainError, match=r"the loss became nan at step 4: lower learning_rate \(learning_rate is 0.003\)"):
        run_training(store, config(tmp_path, tiny_bases["llava"], max_steps=10, learning_rate=3e-3),
                     callbacks=[Poison()])


def test_a_model_it_cannot_train_and_an_empty_subset_say_so(store, tiny_bases, tmp_path) -> None:
    from medhall.train.data import DataError, from_store
    from medhall.train.model import ModelError, family_of

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="cannot train a 'bert' model; medhall trains: llava"):
        family_of(str(bert))
    with pytest.raises(DataError, match="no dataset 'nothing'.*build one first"):
        from_store(store, "nothing")
