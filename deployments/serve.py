"""Serve medhall's flows as Prefect deployments from one long-running process.

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py

Each deployment shows in the Prefect UI, where a run can be triggered with parameters;
``build-default`` also runs on a schedule. The process executes the runs itself (no work
pool needed); for a work pool and workers use ``deployments/prefect.yaml`` instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.ablation import ablation  # noqa: E402
from flows.build_dataset import build_dataset  # noqa: E402
from flows.default import build_default  # noqa: E402
from flows.evaluate_model import evaluate_model  # noqa: E402
from flows.ingest import ingest_corpus  # noqa: E402
from flows.judge_agreement import judge_agreement  # noqa: E402
from flows.train_lora import train_lora  # noqa: E402
from flows.zero_shot_vqa import zero_shot_vqa  # noqa: E402

REBUILD_CRON = os.environ.get("MEDHALL_REBUILD_CRON", "0 3 * * *")  # 03:00 UTC daily


def deployments() -> list:
    """The deployments this process serves (also used by the tests)."""
    return [
        build_default.to_deployment(
            name="build-default",
            cron=REBUILD_CRON,
            description="Scheduled rebuild of the embedded default dataset.",
            tags=["medhall", "scheduled"],
        ),
        ingest_corpus.to_deployment(
            name="ingest-corpus",
            description="Ingest a corpus file set into a dataset; trigger from the UI with parameters.",
            parameters={"adapter": "medhalltune", "paths": [], "dataset": "medhalltune"},
            tags=["medhall"],
        ),
        build_dataset.to_deployment(
            name="build-dataset",
            description="Generate, QC, split and export an instruction dataset from an ingested corpus.",
            tags=["medhall"],
        ),
        evaluate_model.to_deployment(
            name="evaluate-model",
            description="Answers, clinical judge, METEOR/ROUGE/BERTScore and the Table 2 report for one model.",
            tags=["medhall", "gpu"],
        ),
        judge_agreement.to_deployment(
            name="judge-agreement",
            description="A candidate judge (any OpenAI-compatible server) on the MedHallTune release's LLaVA-Med "
            "answers: agreement with GPT-4o (Spearman, Kendall, weighted kappa, bias, exact/±1) and both leaderboard rows.",
            parameters={"n": 200},
            tags=["medhall"],
        ),
        zero_shot_vqa.to_deployment(
            name="zero-shot-vqa",
            description="Zero-shot medical VQA over models x benchmarks (Table 3).",
            parameters={"benchmarks": [], "models": []},
            tags=["medhall", "gpu"],
        ),
        train_lora.to_deployment(
            name="train-lora",
            description="LoRA fine-tuning (sft) or preference tuning (dpo) of a VLM on a built dataset, "
            "through accelerate; resumes from its last checkpoint.",
            tags=["medhall", "gpu"],
        ),
        ablation.to_deployment(
            name="ablation",
            description="The paper's Fig. 5: the base VLM fine-tuned on each training subset, each evaluated.",
            tags=["medhall", "gpu"],
        ),
    ]


if __name__ == "__main__":  # pragma: no cover
    from prefect import serve

    serve(*deployments())
