"""The published LLaVA-Med-v1.5-7B row from the command line: `medhall import-judgments` on the
release's prediction files (answers + GPT-4o judge outputs)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medhall.cli import app

PUBLISHED = "| llava-med-v1.5-7b | 6.28&5.03 | 6.78&5.39 | 5.48&4.84 | 7.39&5.89 |"


def _run(home: Path, *args: str):
    return CliRunner().invoke(app, ["--home", str(home), "import-judgments", *args], catch_exceptions=False)


def test_the_command_prints_the_published_row(home, release_preds, wordnet_cache):
    r = _run(home, *map(str, release_preds.values()))
    assert r.exit_code == 0, r.stdout
    assert PUBLISHED + " 0.38&0.23 |" in r.stdout  # judge means and METEOR, as published
    assert "| llava-med-v1.5-7b | all | positive | Cli. Acc. | 6.279 | [6.147, 6.407] | 1110 | 0 |" in r.stdout
    from medhall.store import ArtifactStore, query

    store = ArtifactStore(home)
    got = query(store, "select count(*) n from judgments__medhalltune_baseline_llava_med_v1_5_7b where status = 'ok'")
    assert got.to_pylist() == [{"n": 2238}]
    assert (home / "reports" / "medhalltune-baseline-llava-med-v1.5-7b" / "report.png").exists()


def test_any_files_in_that_layout_judge_scores_only(home, release_preds, tmp_path):
    """Another model's answers judged by another judge, in the release's layout: named on the
    command line; a reply that does not parse is counted, never averaged in."""
    rows = [json.loads(line) for line in release_preds["negative"].read_text().splitlines()[:3]]
    rows[0]["result"] = "7-8 8 6 9\nundecided"  # a range: the judgment fails
    rows[1]["result"] = "2 3 4 5\nfine"
    rows[2]["result"] = "4 5 6 7\nfine"
    mine = tmp_path / "mymodel-negative.jsonl"
    mine.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = _run(home, str(mine), "--model", "my-vlm", "--judge-model", "qwen-judge", "--no-metrics")
    assert r.exit_code == 0, r.stdout
    assert "| my-vlm | –&3.00 | –&4.00 | –&5.00 | –&6.00 |" in r.stdout
    assert "judgments that did not parse: 1" in r.stdout and "--baseline my-vlm" in r.stdout


def test_missing_files_and_unknown_metrics_are_refused(home, tmp_path):
    r = CliRunner().invoke(app, ["--home", str(home), "import-judgments", str(tmp_path / "none.jsonl")])
    assert r.exit_code == 2 and "not found" in r.output
    r = CliRunner().invoke(app, ["--home", str(home), "import-judgments", str(tmp_path / "x.jsonl"), "--metric", "bleu"])
    assert r.exit_code == 2 and "unknown metric" in r.output
