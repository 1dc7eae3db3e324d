"""The training flows: train_lora through accelerate (logs, metrics, progress and artifacts in
the run; a finished run is not trained twice) and the ablation (each arm trained and evaluated,
Fig. 5 drawn); typed UI forms with descriptions."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("peft")


def test_train_lora_form_is_typed_and_described() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.ablation import ablation
    from flows.train_lora import train_lora

    schema = parameter_schema(train_lora.fn).model_dump()
    props = schema["properties"]
    assert {"config", "accelerate_config", "processes"} <= set(props)
    assert "one_gpu" in str(props["accelerate_config"]) and props["processes"]["description"]
    config = schema["definitions"]["TrainConfig"]["properties"]
    assert all(field.get("description") for field in config.values())  # every field has its help text
    assert config["method"]["enum"] == ["sft", "dpo"]
    form = parameter_schema(ablation.fn).model_dump()
    assert form["properties"]["arms"]["items"]["enum"][:3] == ["positive_only", "negative_only", "no_qc"]
    assert all(form["properties"][p].get("description") for p in ("dataset", "base", "arms", "training", "evaluation"))


def test_train_lora_flow_streams_metrics_and_does_not_train_a_finished_run_twice(flow_home, built_template, store) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.train_lora import train_lora
    from medhall.train.config import load_config

    shutil.copytree(built_template / "store", store.root / "store", dirs_exist_ok=True)
    cfg = load_config(None, ["lora.preset=small"], dataset="sample-instruct", subset="frac_25", base="tiny:llava",
                      max_steps=4, per_device_batch=2)
    state = train_lora(config=cfg, return_state=True)
    assert state.is_completed()
    out = state.result()
    assert out["status"] == "stopped" and out["steps"] == 4 and out["examples"] > 0
    run = store.latest("train_runs", f"train-{out['train_id']}").read().to_pylist()[0]
    assert run["subset"] == "frac_25" and run["steps"] == 4
    again = train_lora(config=cfg)
    assert again["status"] == "already_trained" and again["adapter_dir"] == out["adapter_dir"]

    import asyncio

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(like_=f"train-{out['train_id']}".replace("_", "-"))))

    found = asyncio.run(artifacts())
    tables = [a for a in found if a.type == "table"]
    assert tables and len(tables[0].data if isinstance(tables[0].data, list) else eval(tables[0].data)) == 4  # noqa: S307


def test_ablation_flow_trains_and_evaluates_each_arm_and_draws_fig5(flow_home, built_template, store) -> None:
    import pyarrow.csv as pacsv

    from flows.ablation import ablation

    shutil.copytree(built_template / "store", store.root / "store", dirs_exist_ok=True)
    out = ablation(dataset="sample-instruct", arms=["negative_only", "frac_100"],
                   training={"max_steps": 2, "per_device_batch": 2},
                   evaluation={"max_questions": 4, "max_new_tokens": 8})
    assert set(out["trained"]) == {"negative_only", "full"}  # frac_100 is full
    table = pacsv.read_csv(out["report"]["csv"]).to_pylist()
    assert {r["arm"] for r in table} == {"base", "negative_only", "full"}
    assert {r["model"] for r in table} == {"tiny-llava", "tiny-llava+negative_only", "tiny-llava+full"}
    assert {r["measure"] for r in table} >= {"meteor", "rougeL"} and all(r["n"] > 0 for r in table)
    from PIL import Image

    with Image.open(out["report"]["png"]) as im:
        assert im.size[0] > 1000
    page = open(out["report"]["markdown"]).read()
    assert "+ Negative" in page and "+ MedHallTune" in page
