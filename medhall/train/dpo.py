"""Preference tuning (DPO) on pairs made from the negative instructions, with TRL's ``DPOTrainer``.

A :class:`Pair` is one hallucination (negative) question about one image with two answers:
*chosen*, the correct answer that corrects the false premise (the pair's own ground truth), and
*rejected*, an answer that accepts the premise (:func:`medhall.generate.rejected.rejected_answer`:
the LLM generator's own ``hallucinated_answer``, the offline generator's templates, or a generic
premise-accepting "yes"). Pairs come from a build's train split (any ablation subset; its
negative questions) or from a preference file in TRL's or LLaMA-Factory's format, which
:func:`export_pairs` also writes.

Training stands on TRL's ``DPOTrainer`` (transformers' ``Trainer`` underneath, so mixed precision,
checkpoints, resume and accelerate work as for SFT): with a peft model and no reference model it
uses the base with the adapter switched off as the reference, and its vision collator renders the
prompt with the model's chat template and processes the images batch by batch. Lengths are
measured once up front with medhall's encoder, so pairs over ``max_length`` are dropped or
truncated (TRL keeps the start: the image and question) and counted, never silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medhall.ids import canonical_json, file_sha256, sha256_hex
from medhall.store import ArtifactStore
from medhall.train.data import DataError, Example, Turn, check_images, read_records, store_rows
from medhall.train.encode import IGNORE, Encoder, LengthReport

IMAGE_TOKEN = "<image>"
FORMATS = ("trl", "llamafactory")


@dataclass(frozen=True)
class Pair:
    """One negative question about one image, its correct (chosen) and hallucinated (rejected) answer."""

    image: str  # path
    question: str
    chosen: str
    rejected: str
    key: str  # the image id (store) or the record id (file)
    qa_id: str | None = None
    category: str | None = None
    rejected_source: str = "file"  # generator | template | generic | file

    @property
    def turns(self) -> tuple[Turn, ...]:
        return (Turn(self.question, self.chosen, self.qa_id),)

    def example(self, answer: str) -> Example:
        return Example(self.image, (Turn(self.question, answer, self.qa_id),), self.key)


@dataclass
class PairData:
    """The pairs (``examples``, as :class:`~medhall.train.data.TrainData` names them), what was
    skipped and why, the data's identity, and where the rejected answers came from."""

    examples: list[Pair]
    skipped: Counter[str] = field(default_factory=Counter)
    fingerprint: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    rejected_sources: Counter[str] = field(default_factory=Counter)


def _fingerprint(source: dict[str, Any], pairs: Sequence[Pair]) -> str:
    return sha256_hex(canonical_json([source, "dpo", [[p.key, p.question, p.chosen, p.rejected] for p in pairs]]))


def pairs_from_store(store: ArtifactStore, dataset: str, subset: str = "full") -> PairData:
    """Preference pairs from the negative questions of the build ``dataset``'s train ``subset``."""
    from medhall.generate.rejected import rejected_answer

    rows, source, _ = store_rows(store, dataset, subset, columns=("meta",))
    negatives = [r for r in rows if r["kind"] == "negative"]
    if not negatives:
        raise DataError(f"{dataset}/{subset} has no negative (hallucination) questions to make preference "
                        "pairs from: use a subset with negatives (full, no_qc, negative_only, frac_*)")
    skipped: Counter[str] = Counter()
    pairs = []
    for r in negatives:
        if not r["answer"].strip():
            skipped["no_answer"] += 1
            continue
        text, origin = rejected_answer(r)  # type: ignore[misc]  # negative rows always get one
        pairs.append(Pair(r["image"], r["question"], r["answer"].strip(), text, r["key"], r["qa_id"],
                          r.get("category"), origin))
    kept, bad = check_images(pairs)
    skipped.update(bad)
    return PairData(kept, skipped, _fingerprint(source, kept), source, Counter(p.rejected_source for p in kept))


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise DataError("a message's content must be text or a list of parts")


def _answer(value: Any) -> str:
    """A chosen/rejected value: a ShareGPT turn, a message list (TRL), or text."""
    if isinstance(value, dict):
        return _text(value.get("value", value.get("content")))
    if isinstance(value, list):
        return _text(value[-1].get("content")) if value and isinstance(value[-1], dict) else ""
    if isinstance(value, str):
        return value
    raise DataError("chosen/rejected must be a message, a message list or text")


def _question(rec: dict[str, Any]) -> str:
    prompt = rec.get("prompt", rec.get("conversations", rec.get("messages")))
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt or [] if (m.get("role") or m.get("from")) in ("user", "human")]
    if len(users) != 1:
        raise DataError("one user turn per preference record is supported")
    return _text(users[0].get("content", users[0].get("value")))


def pairs_from_file(path: str | Path, *, image_root: str | Path | None = None) -> PairData:
    """Pairs from a preference file: TRL (``prompt``/``chosen``/``rejected``/``images``, JSON
    lines or a JSON array) or LLaMA-Factory ShareGPT ranking (``conversations``/``chosen``/
    ``rejected``/``images``); a record that does not parse is counted as ``malformed_record``."""
    path = Path(path)
    records = read_records(path, "TRL or LLaMA-Factory preference records")
    root = Path(image_root) if image_root else path.parent
    pairs, skipped = [], Counter()
    for i, rec in enumerate(records):
        try:
            images = rec.get("images") or ([rec["image"]] if rec.get("image") else [])
            if len(images) != 1 or not isinstance(images[0], str):
                raise DataError("one image path per record")
            question = _question(rec).replace(IMAGE_TOKEN, "").strip()
            chosen, rejected = _answer(rec["chosen"]).strip(), _answer(rec["rejected"]).strip()
            if not (question and chosen and rejected):
                raise DataError("empty question or answer")
        except (DataError, AttributeError, KeyError, TypeError):
            skipped["malformed_record"] += 1
            continue
        image = images[0] if Path(images[0]).is_absolute() else str(root / images[0])
        pairs.append(Pair(image, question, chosen, rejected, str(rec.get("id", i))))
    kept, bad = check_images(pairs)
    skipped.update(bad)
    if not kept:
        raise DataError(f"{path}: no usable preference pairs ({dict(skipped) or 'the file is empty'})")
    source = {"dataset": path.name, "subset": "file", "file_sha256": file_sha256(path)}
    return PairData(kept, skipped, _fingerprint({**source, "root": str(root)}, kept), source, Counter(file=len(kept)))


def load_pairs(store: ArtifactStore, dataset: str, subset: str = "full", *,
               image_root: str | None = None) -> PairData:
    """A preference file when ``dataset`` names one, else a build in the store."""
    if dataset.endswith((".json", ".jsonl")) or Path(dataset).is_file():
        return pairs_from_file(dataset, image_root=image_root)
    return pairs_from_store(store, dataset, subset)


# -- lengths ---------------------------------------------------------------------------------


def fit_pairs(pairs: Sequence[Pair], encoder: Encoder) -> tuple[list[Pair], LengthReport]:
    """The pairs that fit ``encoder.max_length`` (or will be truncated after their question) and
    the length report: a pair counts by its longer answer; one whose image and question alone
    do not fit is always dropped."""
    from medhall.images import load_rgb

    measure = Encoder(encoder.processor, max_length=10**9, system_prompt=encoder.system_prompt)
    report, kept = LengthReport(), []
    for p in pairs:
        image = load_rgb(p.image)
        lengths = []
        for answer in (p.chosen, p.rejected):
            enc = measure.encode(p.example(answer), image, count=False)
            labels = enc["labels"].tolist()
            lengths.append((len(labels), next((i for i, v in enumerate(labels) if v != IGNORE), len(labels))))
        n, prompt = max(x[0] for x in lengths), lengths[0][1]
        report.longest = max(report.longest, n)
        if n <= encoder.max_length:
            kept.append(p)
        elif encoder.overflow == "drop" or prompt >= encoder.max_length:
            report.dropped["too_long" if encoder.overflow == "drop" else "prompt_too_long"] += 1
        else:
            report.truncated += 1
            kept.append(p)
    return kept, report


# -- training --------------------------------------------------------------------------------


def messages(question: str, answer: str | None = None) -> list[dict[str, Any]]:
    """The conversational prompt (image + question) or an answer turn, in TRL's format."""
    if answer is None:
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def _records(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """A batch of stored pairs as TRL preference records, the images decoded now."""
    from medhall.images import load_rgb

    qs, cs, rs = batch["question"], batch["chosen"], batch["rejected"]
    return {"images": [[load_rgb(path)] for path in batch["image"]], "prompt": [messages(q) for q in qs],
            "chosen": [messages(q, c) for q, c in zip(qs, cs, strict=True)],
            "rejected": [messages(q, r) for q, r in zip(qs, rs, strict=True)]}


def pair_dataset(pairs: Sequence[Pair]) -> Any:
    """A ``datasets.Dataset`` of the pairs (paths and text) that yields TRL preference records,
    each image decoded when its record is read (never all in memory)."""
    from datasets import Dataset

    table = {k: [getattr(p, k) for p in pairs] for k in ("image", "question", "chosen", "rejected")}
    return Dataset.from_dict(table).with_transform(_records)


def make_trainer(model: Any, processor: Any, args: Any, pairs: Sequence[Pair], callbacks: list[Any]) -> Any:
    """TRL's ``DPOTrainer`` over ``pairs`` with the peft ``model`` (reference: the adapter off)."""
    from trl import DPOTrainer

    return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=pair_dataset(pairs),
                      processing_class=processor, callbacks=callbacks)


# -- export ----------------------------------------------------------------------------------


def _portable(image: str, images_dir: Path) -> str:
    """A path any loader opens: the image itself, or (DICOM, or anything PIL cannot open) its
    windowed RGB rendering as a PNG under ``images_dir``, named by content."""
    from PIL import Image

    try:
        with Image.open(image) as im:
            im.verify()
        return image
    except Exception:  # noqa: BLE001 - DICOM and other formats PIL does not read
        from medhall.images import load_rgb

        out = images_dir / f"{file_sha256(image)[:16]}.png"
        if not out.exists():
            images_dir.mkdir(parents=True, exist_ok=True)
            load_rgb(image).save(out)
        return str(out)


def export_pairs(data: PairData, out_dir: str | Path, fmt: str, *, name: str = "medhall_dpo") -> list[Path]:
    """Write the pairs in TRL's format (``<name>.jsonl``: ``images``, conversational ``prompt``,
    ``chosen``, ``rejected``) or LLaMA-Factory's ShareGPT ranking format (``<name>.json`` with
    its ``dataset_info.json`` entry). Images are absolute paths; DICOM images are rendered to
    PNG under ``images/`` beside the file, since neither tool reads DICOM."""
    from medhall.export.base import write_json_file, write_json_records

    if fmt not in FORMATS:
        raise ValueError(f"unknown preference format {fmt!r}; use one of: {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = {p.image: _portable(str(Path(p.image).resolve()), out / "images") for p in data.examples}
    if fmt == "trl":
        records = ({"id": p.qa_id or p.key, "images": [images[p.image]], "prompt": messages(p.question),
                    "chosen": messages(p.question, p.chosen), "rejected": messages(p.question, p.rejected)}
                   for p in data.examples)
        return [write_json_records(out / f"{name}.jsonl", records, lines=True)]
    records = ({"id": p.qa_id or p.key, "conversations": [{"from": "human", "value": IMAGE_TOKEN + p.question}],
                "chosen": {"from": "gpt", "value": p.chosen}, "rejected": {"from": "gpt", "value": p.rejected},
                "images": [images[p.image]]} for p in data.examples)
    info = {name: {"file_name": f"{name}.json", "formatting": "sharegpt", "ranking": True,
                   "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected",
                               "images": "images"}}}
    return [write_json_records(out / f"{name}.json", records), write_json_file(out / "dataset_info.json", info)]


__all__ = ["FORMATS", "Pair", "PairData", "pair_dataset", "export_pairs", "fit_pairs", "load_pairs", "make_trainer",
           "messages", "pairs_from_file", "pairs_from_store"]
