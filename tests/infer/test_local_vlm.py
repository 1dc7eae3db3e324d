"""LocalVLM on tiny random-weight checkpoints of every family, loaded with from_pretrained."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medhall.infer import LocalVLM, Query, predictions_table
from medhall.infer.tiny import BUILDERS
from medhall.schema import PREDICTIONS

pytest.importorskip("transformers")

FAMILIES = sorted(BUILDERS)
TOKENS = 8


def runner(model_dir: Path, **options: object) -> LocalVLM:
    return LocalVLM(model_dir, max_new_tokens=TOKENS, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_answers_are_deterministic_and_equal_one_by_one(
    family: str, tiny_models: dict[str, Path], queries: list[Query], texts
) -> None:
    """Left padding is right: a batch of three gives what three single calls give."""
    batched = runner(tiny_models[family], batch_size=3).answer(queries)
    assert all(a.ok and a.text for a in batched), texts(batched)
    assert [a.qa_id for a in batched] == [q.qa_id for q in queries]
    assert all(a.meta["batch_size"] == 3 and a.meta["image"] for a in batched)
    assert all(0 < a.meta["new_tokens"] <= TOKENS and a.latency_s > 0 for a in batched)
    single = runner(tiny_models[family], batch_size=1).answer(queries)  # a fresh load, too
    assert texts(single) == texts(batched)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_image_and_the_system_prompt_reach_the_model(
    family: str, tiny_models: dict[str, Path], queries: list[Query], texts
) -> None:
    same_question = [Query(q.qa_id, "What is shown?", q.image) for q in queries]
    with_images = texts(runner(tiny_models[family]).answer(same_question))
    assert len(set(with_images)) > 1  # one question, three images, not one answer
    blind = runner(tiny_models[family], text_only=True).answer(same_question)
    assert len(set(texts(blind))) == 1 and not blind[0].meta["image"]
    told = runner(tiny_models[family], system_prompt="Answer as a radiologist.", text_only=True)
    assert texts(told.answer(same_question[:1])) != texts(blind[:1])


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_a_bad_image_fails_only_its_item(
    family: str, tiny_models: dict[str, Path], queries: list[Query], tmp_path: Path, texts
) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    mixed = [
        queries[0],
        Query("qa_missing", "Is there a mass?", tmp_path / "absent.png"),
        queries[1],
        Query("qa_corrupt", "Is there a mass?", corrupt),
        Query("qa_blind", "Which organ is imaged?", None),
        queries[2],
    ]
    answers = runner(tiny_models[family], batch_size=4).answer(mixed)
    assert [a.qa_id for a in answers] == [q.qa_id for q in mixed]
    assert answers[1].error.startswith("missing_image:")
    assert answers[3].error.startswith("corrupt_image:")
    assert answers[4].ok and not answers[4].meta["image"]  # no image: asked as text
    clean = runner(tiny_models[family]).answer(queries)
    assert texts([answers[0], answers[2], answers[5]]) == texts(clean)


def test_a_failing_batch_is_answered_item_by_item(
    tiny_models: dict[str, Path], queries: list[Query], monkeypatch: pytest.MonkeyPatch, texts
) -> None:
    vlm = runner(tiny_models["llava"], batch_size=3)
    expected = texts(vlm.answer(queries))
    real_generate = vlm._generate

    def fragile(conversations):  # fails for any batch holding the second question
        if any("fracture" in str(c) for c in conversations):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_generate(conversations)

    monkeypatch.setattr(vlm, "_generate", fragile)
    answers = vlm.answer(queries)
    assert answers[1].error == "RuntimeError: CUDA out of memory (simulated)"
    assert texts([answers[0], answers[2]]) == [expected[0], expected[2]]
    assert answers[0].meta["batch_size"] == 1  # retried alone


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "internvl"])
def test_a_lora_adapter_changes_the_answers(
    family: str, tiny_models: dict[str, Path], queries: list[Query], tmp_path: Path, texts
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_models[family])
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False)  # random, non-zero lora_B
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")

    plain = runner(tiny_models[family]).answer(queries)
    tuned_runner = runner(tiny_models[family], adapter_path=tmp_path / "adapter")
    tuned = tuned_runner.answer(queries)
    assert all(a.ok for a in tuned) and texts(tuned) != texts(plain)
    assert tuned_runner.name == f"{family}+adapter"
    assert type(tuned_runner.model).__name__.endswith("ForConditionalGeneration")  # merged


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_dtype_option(family: str, tiny_models: dict[str, Path], queries: list[Query]) -> None:
    import torch

    assert runner(tiny_models[family]).model.dtype == torch.float32  # auto on the CPU
    half = runner(tiny_models[family], dtype="bfloat16", device="cpu")
    assert half.model.dtype == torch.bfloat16
    assert all(a.ok and a.text for a in half.answer(queries[:2]))
    half.unload()
    assert half._model is None and half.model.dtype == torch.bfloat16  # loads again on use


def test_token_limit_is_recorded_and_rows_fit_the_schema(
    tiny_models: dict[str, Path], queries: list[Query]
) -> None:
    vlm = LocalVLM(tiny_models["qwen2_vl"], max_new_tokens=2)
    answers = vlm.answer(queries)
    assert all(a.meta["new_tokens"] <= 2 for a in answers)
    assert any(a.meta["truncated"] for a in answers)
    table = predictions_table(vlm.name, queries, answers, origin="local", run_id="run_t")
    assert table.schema.equals(PREDICTIONS) and table.column("status").to_pylist() == ["ok"] * 3


def test_a_checkpoint_without_chat_template_needs_one(
    tiny_models: dict[str, Path], queries: list[Query], tmp_path: Path, texts
) -> None:
    from medhall.infer.tiny import LLAVA_TEMPLATE

    bare = tmp_path / "bare"
    shutil.copytree(tiny_models["llava"], bare)
    (bare / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="no chat template"):
        runner(bare).load()
    (tmp_path / "llava.jinja").write_text(LLAVA_TEMPLATE)
    given = runner(bare, chat_template=tmp_path / "llava.jinja").answer(queries)
    assert texts(given) == texts(runner(tiny_models["llava"]).answer(queries))
