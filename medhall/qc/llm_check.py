"""The LLM self-check of MedHallTune's quality control (the paper's Sec. 2.2).

The checker sees only the ground-truth caption (never the image), the question and the answer,
and returns a reason and a judgement, correct or incorrect. Each verdict is a ``qc_verdicts``
row with check ``llm:self_check``. A reply that does not validate (after the layer's repair
retry) or a failed request is recorded as verdict ``error`` with its raw text: it is never
turned into a pass or a fail, and a re-run asks again (successful answers come from the cache).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field, field_validator

from medhall import schema
from medhall.endpoints import LLMSettings, make_client
from medhall.prompts import Templates, load

CHECK = "llm:self_check"


class SelfCheck(BaseModel):
    """The reply schema: a reason, then the judgement."""

    reason: str = Field(min_length=1)
    judgement: Literal["correct", "incorrect"]

    @field_validator("judgement", mode="before")
    @classmethod
    def _normalise(cls, v: Any) -> Any:
        return re.sub(r"[^a-z]", "", v.lower()) if isinstance(v, str) else v


class LLMSelfCheck:
    """Caption-only verification of generated pairs."""

    def __init__(self, client: Any, settings: LLMSettings, *, templates: Templates | None = None) -> None:
        self.client = client
        self.settings = settings
        self.templates = templates or load("qc")
        self.model = settings.resolved_model()

    @staticmethod
    def key_parts(cfg: Any) -> dict[str, Any]:
        settings = cfg.llm or LLMSettings()
        return {"endpoint": settings.identity(), "templates": load("qc").hash}

    @classmethod
    def from_build(cls, cfg: Any, store: Any, client: Any = None) -> LLMSelfCheck:
        settings = cfg.llm or LLMSettings()
        return cls(client or make_client(settings, home=store.root), settings)

    def request(self, caption: str, question: str, answer: str):
        from medhall.llm import ChatRequest

        return ChatRequest.simple(
            self.templates.render("user", caption=caption, question=question, answer=answer),
            system=self.templates.render("system"), model=self.model, temperature=0.0, max_tokens=300,
            template_hash=self.templates.hash, stage="qc",
        )

    def check(self, pairs: pa.Table, images: pa.Table, *, run_id: str | None = None) -> pa.Table:
        """One verdict per pair."""
        if run_id is not None:
            self.client.run_id = run_id  # the ledger rows carry the build's run id
        captions = dict(zip(images.column("image_id").to_pylist(), images.column("caption").to_pylist(), strict=True))
        rows = pairs.select(["qa_id", "image_id", "question", "answer"]).to_pylist()
        requests = [self.request(captions.get(r["image_id"]) or "", r["question"], r["answer"] or "") for r in rows]
        results = self.client.run(requests, SelfCheck, progress=True)
        out = []
        for row, res in zip(rows, results, strict=True):
            if res.ok and res.parsed is not None:
                verdict, reason = res.parsed.judgement, res.parsed.reason
            else:
                verdict, reason = "error", f"{res.error_kind or 'failed'}: {res.error}"
            out.append({
                "qa_id": row["qa_id"], "check": CHECK, "verdict": verdict, "passed": verdict == "correct",
                "reason": reason, "raw": res.text, "judge_model": self.model, "run_id": run_id,
            })
        return schema.from_rows("qc_verdicts", out)


def errors(verdicts: pa.Table) -> pa.Table:
    """The verdicts a re-run should ask again."""
    return verdicts.filter(pc.equal(verdicts.column("verdict"), "error"))
