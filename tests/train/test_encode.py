"""The encoder: the model's own chat template, loss on the assistant's tokens only (token by
token), truncation and drops counted, padding."""

from __future__ import annotations

import pytest

from medhall.train.data import Example, Turn
from medhall.train.encode import IGNORE, Collator, EncodeError, Encoder

torch = pytest.importorskip("torch")


def processor_of(path: str):
    from medhall.infer.processors import load_processor

    return load_processor(path)


def labelled_spans(enc: dict) -> list[list[int]]:
    """Runs of consecutive labelled positions, as token id lists."""
    runs, current = [], []
    for tok, lab in zip(enc["input_ids"].tolist(), enc["labels"].tolist(), strict=True):
        if lab == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            assert lab == tok  # a label is the token itself (the model shifts)
            current.append(tok)
    return runs + ([current] if current else [])


@pytest.mark.parametrize(("family", "lead", "end"), [("llava", " ", "</s>"), ("qwen2_vl", "", "<|im_end|>\n")])
def test_only_the_answers_and_their_end_of_turn_are_labelled(tiny_bases, family, lead, end) -> None:
    from PIL import Image

    proc = processor_of(tiny_bases[family])
    enc = Encoder(proc, max_length=4096)
    ex = Example("x", (Turn("<image>\nIs there a mass?", "No, there is no mass."),
                       Turn("What modality is it?", "It is a CT scan.")), "k")
    out = enc.encode(ex, Image.new("RGB", (28, 28)))
    tok = proc.tokenizer
    spans = labelled_spans(out)
    assert [tok.decode(s) for s in spans] == [f"{lead}No, there is no mass.{end}", f"{lead}It is a CT scan.{end}"]
    # everything else is masked: the questions, the image tokens, the template's scaffolding
    masked = [t for t, lab in zip(out["input_ids"].tolist(), out["labels"].tolist(), strict=True) if lab == IGNORE]
    text = tok.decode(masked)
    assert "Is there a mass?" in text and "What modality is it?" in text
    assert "no mass" not in text and "CT scan" not in text
    image_token = proc.tokenizer.convert_tokens_to_ids(proc.image_token)
    assert image_token in masked and image_token not in [t for s in spans for t in s]
    assert "<image>" not in tok.decode(out["input_ids"]).replace(proc.image_token, "")  # the data's placeholder is dropped
    assert out["labels"].shape == out["input_ids"].shape == out["attention_mask"].shape


def test_label_positions_token_by_token_on_llava(tiny_bases) -> None:
    """Every position checked: labelled exactly from the first answer token to the end-of-sequence."""
    from PIL import Image

    proc = processor_of(tiny_bases["llava"])
    out = Encoder(proc).encode(Example("x", (Turn("Is it normal?", "Yes."),), "k"), Image.new("RGB", (28, 28)))
    ids, labels = out["input_ids"].tolist(), out["labels"].tolist()
    prompt = proc(text=[proc.apply_chat_template(Encoder(proc).messages([("Is it normal?", "Yes.")])[:1],
                                                 tokenize=False, add_generation_prompt=True)],
                  images=[Image.new("RGB", (28, 28))], return_tensors="pt")["input_ids"][0].tolist()
    n = len(prompt)
    assert ids[:n] == prompt
    assert labels == [IGNORE] * n + ids[n:]
    assert ids[-1] == proc.tokenizer.eos_token_id  # the model learns to stop


def test_over_long_examples_are_truncated_in_the_answer_or_dropped_and_counted(tiny_bases) -> None:
    from PIL import Image

    proc = processor_of(tiny_bases["llava"])
    long = Example("x", (Turn("Describe it.", "word " * 200),), "k")
    img = Image.new("RGB", (28, 28))
    full = Encoder(proc, max_length=4096).encode(long, img)["input_ids"].shape[0]
    trunc = Encoder(proc, max_length=40)
    out = trunc.encode(long, img)
    assert out["input_ids"].shape[0] == 40 == out["labels"].shape[0] and full > 40
    assert trunc.report.truncated == 1 and trunc.report.longest == full
    assert (out["labels"] != IGNORE).any()  # some answer tokens kept
    drop = Encoder(proc, max_length=40, overflow="drop")
    assert drop.encode(long, img) is None and drop.report.dropped == {"too_long": 1}
    tiny = Encoder(proc, max_length=16)  # even the image and the question do not fit
    assert tiny.encode(long, img) is None and tiny.report.dropped == {"prompt_too_long": 1}
    quiet = Encoder(proc, max_length=40)
    quiet.encode(long, img, count=False)
    assert quiet.report.truncated == 0


def test_a_template_without_a_stable_prefix_is_refused(tiny_bases) -> None:
    from PIL import Image

    proc = processor_of(tiny_bases["llava"])
    proc.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}{% if add_generation_prompt %}!{% endif %}"
    with pytest.raises(EncodeError, match="prefix"):
        Encoder(proc).encode(Example("x", (Turn("q", "a"),), "k"), Image.new("RGB", (28, 28)))


def test_collator_pads_on_the_right_and_concatenates_images(tiny_bases) -> None:
    from PIL import Image

    proc = processor_of(tiny_bases["qwen2_vl"])
    enc = Encoder(proc)
    a = enc.encode(Example("x", (Turn("Is there a mass?", "No."),), "k"), Image.new("RGB", (28, 28)))
    b = enc.encode(Example("y", (Turn("What is shown?", "A CT scan of the chest."),), "k"), Image.new("RGB", (56, 28)))
    batch = Collator(proc.tokenizer.pad_token_id)([a, b])
    n = max(a["input_ids"].shape[0], b["input_ids"].shape[0])
    assert batch["input_ids"].shape == (2, n) and batch["labels"].shape == (2, n)
    short = 0 if a["input_ids"].shape[0] < n else 1
    k = [a, b][short]["input_ids"].shape[0]
    assert batch["attention_mask"][short, k:].sum() == 0 and (batch["labels"][short, k:] == IGNORE).all()
    assert (batch["input_ids"][short, k:] == proc.tokenizer.pad_token_id).all()
    assert batch["pixel_values"].shape[0] == a["pixel_values"].shape[0] + b["pixel_values"].shape[0]
    assert batch["image_grid_thw"].shape == (2, 3)
