"""Flows run for real on a temporary Prefect server."""

from pathlib import Path

import pytest
from prefect import flow

from medhall.store import ArtifactStore, query


def test_build_default_flow_writes_tables_stats_and_a_ui_artifact(flow_home):
    from prefect.artifacts import Artifact

    from flows.default import build_default

    result = build_default(evaluate=False)  # evaluate_model has flow tests of its own
    assert result["ok"] is True
    assert result["artifacts"]["images"]["rows"] >= 24
    assert Path(result["stats"]["png"]).exists() and Path(result["catalog"]).exists()
    n = query(ArtifactStore(flow_home), "select count(*) n from images").column("n")[0].as_py()
    assert n == result["artifacts"]["images"]["rows"]
    ui = Artifact.get("sample-stats")
    assert ui is not None and "modality" in str(ui.data)


def test_ingest_task_is_cached_on_input_fingerprints(flow_home, tmp_path):
    from tasks.ingest import ingest_task

    corpus = tmp_path / "corpus"  # its listing is part of the key (images are read from it)
    corpus.mkdir()
    src = corpus / "captions.jsonl"
    src.write_text('{"pair_id": "a", "fig_caption": "Axial CT of the chest.", "image": "a.png"}\n')
    from PIL import Image

    Image.new("L", (64, 64), 30).save(corpus / "a.png")

    @flow
    def once():
        return ingest_task("llava_med_captions", [str(src)], "cached", return_state=True)

    first, second = once(), once()
    assert first.name == "Completed" and second.name == "Cached"
    assert first.result()["artifacts"] == second.result()["artifacts"]
    src.write_text(src.read_text() + '{"pair_id": "b", "fig_caption": "A second CT.", "image": "a.png"}\n')
    third = once()
    assert third.name == "Completed"  # the input changed: the cache key changed


def test_ingest_corpus_flow_on_the_release(flow_home, medhalltune_dir):
    from flows.ingest import ingest_corpus

    files = [str(p) for p in sorted(medhalltune_dir.glob("val_*_qa-filtered.jsonl"))]
    out = ingest_corpus("medhalltune", files, "mht")
    assert out["artifacts"]["instructions"]["rows"] == 2238
    assert out["artifacts"]["images"]["rows"] == 396


def test_deployments_have_schedules_and_ui_parameters():
    pytest.importorskip("prefect")
    from deployments.serve import deployments

    deps = {d.name: d for d in deployments()}
    assert set(deps) == {"build-default", "ingest-corpus", "build-dataset", "evaluate-model", "zero-shot-vqa",
                         "train-lora", "ablation", "judge-agreement"}
    sched = deps["build-default"].schedules[0].schedule
    assert getattr(sched, "cron", None) == "0 3 * * *"
    assert deps["ingest-corpus"].parameters["adapter"] == "medhalltune"
    from prefect.utilities.callables import parameter_schema

    from flows.ingest import ingest_corpus

    ui_form = parameter_schema(ingest_corpus.fn).model_dump()["properties"]
    assert {"adapter", "paths", "dataset", "images_dir"} <= set(ui_form)


def test_prefect_yaml_lists_the_same_deployments_with_valid_entrypoints():
    import importlib

    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "deployments" / "prefect.yaml").read_text())
    from deployments.serve import deployments

    assert {d["name"] for d in spec["deployments"]} == {d.name for d in deployments()}
    for d in spec["deployments"]:
        module, fn = d["entrypoint"].removesuffix(".py").replace("/", ".").split(":")
        assert callable(getattr(importlib.import_module(module.replace(".py", "")), fn))


def test_build_flow_resumes_and_never_trusts_a_cache_whose_work_dir_is_gone(flow_home, tmp_path):
    import shutil

    from flows.build_dataset import build_dataset
    from medhall import sample
    from medhall.build import BuildConfig, work_dir
    from medhall.jobs import ingest_to_store

    store = ArtifactStore(flow_home)
    ingest_to_store("llava_med_captions", [sample.materialize(tmp_path / "c")], dataset="src", store=store)
    params = {"source": "src", "dataset": "flowbuilt", "test_images": 6, "shard_size": 10}
    first = build_dataset(**params)
    assert first["shards_run"] == 3 and first["instructions"]["rows"] > 200
    again = build_dataset(**params)
    assert again["shards_run"] == 0 and again["instructions"] == first["instructions"]
    shutil.rmtree(work_dir(store, BuildConfig(**params)))
    rebuilt = build_dataset(**params)  # the shards really run again: same content, same artifact
    assert rebuilt["shards_run"] == 3 and rebuilt["instructions"]["fingerprint"] == first["instructions"]["fingerprint"]


def test_ingest_with_no_paths_or_nothing_read_never_empties_a_dataset(store, tmp_path) -> None:
    """The ingest-corpus deployment's defaults (paths: []) used to write empty latest versions
    over an ingested dataset and end green."""
    from medhall import sample
    from medhall.jobs import EmptyIngest, ingest_to_store

    captions = sample.materialize(tmp_path / "corpus")
    first = ingest_to_store("llava_med_captions", [captions], dataset="kept", store=store)
    assert first.ok and first.artifacts["images"].rows > 0
    with pytest.raises(EmptyIngest, match="no input files given for kept"):
        ingest_to_store("medhalltune", [], dataset="kept", store=store)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EmptyIngest, match=f"keeps its {first.artifacts['images'].rows} images"):
        ingest_to_store("llava_med_captions", [empty], dataset="kept", store=store)
    assert [a.version for a in store.versions("images", "kept")] == [1]
