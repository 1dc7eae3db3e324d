"""APIModel: the runner protocol over the LLM layer (FakeBackend; the HTTP path is in test_openai_path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medhall.infer import Query, Runner
from medhall.infer.api import APIModel
from medhall.llm import FakeReply, fault


def _image(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "scan.png"
    Image.new("RGB", (40, 30), (120, 60, 30)).save(path)
    return path


def test_requests_answers_and_failures(fake_client: Any, tmp_path: Path) -> None:
    def script(request: Any) -> Any:
        text = request.messages[-1].text()
        if "long" in text:
            return FakeReply("cut off here", finish_reason="length")
        if "refused" in text:
            return fault("400")
        return "a lesion in the liver"

    client = fake_client(script, model="vlm")
    runner = APIModel(client, name="api-vlm", max_tokens=32, system_prompt="You are a radiologist.")
    assert isinstance(runner, Runner)
    image = _image(tmp_path)
    answers = runner.answer([
        Query("q1", "<image>\nWhat is shown?", image),
        Query("q2", "Is it long?", None),
        Query("q3", "refused?", image),
        Query("q4", "Where?", tmp_path / "absent.png"),
    ])
    assert [a.qa_id for a in answers] == ["q1", "q2", "q3", "q4"]
    assert answers[0].ok and answers[0].text == "a lesion in the liver" and answers[0].meta["image"] is True
    assert answers[1].ok and answers[1].meta["truncated"] is True  # kept, as LocalVLM keeps it
    assert answers[2].error.startswith("bad_request:")
    assert answers[3].error.startswith("missing_image:")
    sent = client.backend.requests
    assert len(sent) == 3  # the missing image was never sent
    first = sent[0]
    assert first.stage == "infer" and first.temperature == 0 and first.max_tokens == 32
    assert first.messages[0].role == "system" and len(first.messages[1].images()) == 1
    assert "<image>" not in first.messages[1].text()


def test_text_only_never_reads_the_image(fake_client: Any, tmp_path: Path) -> None:
    client = fake_client("an answer", model="text-llm")
    runner = APIModel(client, name="text", text_only=True)
    answers = runner.answer([Query("q1", "What is shown?", tmp_path / "absent.png")])
    assert answers[0].ok and answers[0].meta["image"] is False
    assert client.backend.requests[0].messages[-1].images() == []
    assert runner.settings()["text_only"] is True
