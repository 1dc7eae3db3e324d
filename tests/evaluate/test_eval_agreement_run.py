"""The judge-agreement stage on the real release: GPT-4o's own outputs replayed as the candidate
agree perfectly, a shuffled copy near zero, a judge on the local OpenAI-compatible test server
gives exactly what the server was scripted to give; resumable and cached; the table in DuckDB;
the command."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from medhall.evaluate.agreement_run import AgreementConfig, agreement_dataset, run_agreement
from medhall.evaluate.judge import AXES

CASE = re.compile(r"\[Question\]: (.*?)\n\n\[Answer\]: (.*?)\n \[End of Answer\]\n\n"
                  r"\[Ground Truth Answer\]: (.*?)\n \[End of Ground Truth Answer\]", re.S)
SCRIPTED = dict(zip(AXES, (7.0, 8.0, 6.0, 9.0), strict=True))  # medhall.testing.scripted_reply's "7 8 6 9"


def _release_results(release_preds: dict[str, Path], shuffle: bool = False) -> dict[tuple[str, str, str], str]:
    """GPT-4o's raw output of each release answer, keyed by what the judge prompt shows."""
    from medhall.sources.reading import strip_image_token

    rows = [json.loads(line) for p in release_preds.values() for line in p.read_text().splitlines() if line.strip()]
    keys = [(strip_image_token(r["text"]).strip(), r["answer"].strip(), r["gpt4_answer"].strip()) for r in rows]
    results = [r["result"] for r in rows]
    assert len(set(keys)) == len(keys)
    if shuffle:
        random.Random(0).shuffle(results)
    return dict(zip(keys, results, strict=True))


def _replay(results: dict[tuple[str, str, str], str]) -> Any:
    def script(request: Any) -> str | None:
        m = CASE.search(request.messages[1].text())
        return results.get(m.groups()) if m else None

    return script


@pytest.fixture
def client(tmp_path: Path):
    from medhall.llm import FakeBackend, LLMClient

    made = []

    def make(script: Any, model: str) -> Any:
        made.append(LLMClient(FakeBackend(script, model=model), cache=tmp_path / f"{model}.sqlite"))
        return made[-1]

    yield make
    for c in made:
        c.close()


def _rows(result: Any) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["axis"], r["kind"], r["measure"]): r for r in result.table.to_pylist()}


def test_gpt4o_replayed_as_the_candidate_agrees_perfectly(store, medhalltune_dir, release_preds, client):
    cfg = AgreementConfig(release_dir=str(medhalltune_dir), n=120, n_boot=100)
    result = run_agreement(store, cfg, client=client(_replay(_release_results(release_preds)), "gpt-4o-replay"))
    assert result.ok and result.judged == result.questions == 120 and result.failures == {}
    rows = _rows(result)
    for axis in AXES:
        for kind in ("positive", "negative", "all"):
            for m in ("spearman", "kendall_tau_b", "qwk", "exact", "within1"):
                assert rows[(axis, kind, m)]["value"] == pytest.approx(1.0), (axis, kind, m)
            assert rows[(axis, kind, "bias")]["value"] == 0.0
            assert rows[(axis, kind, "candidate_mean")]["value"] == rows[(axis, kind, "reference_mean")]["value"]
    n_p, n_n = rows[(AXES[0], "positive", "exact")]["n"], rows[(AXES[0], "negative", "exact")]["n"]
    assert n_p + n_n == 120 and n_p > 30 and n_n > 30  # a seeded sample of both kinds
    assert "| gpt-4o (published, all 1110+1128) | 6.28&5.03 | 6.78&5.39 | 5.48&4.84 | 7.39&5.89 |" in result.markdown
    assert result.paths["png"].stat().st_size > 10_000 and result.paths["csv"].exists()
    assert result.dataset == agreement_dataset("gpt-4o-replay", 120)


def test_a_shuffled_copy_agrees_near_zero(store, medhalltune_dir, release_preds, client):
    cfg = AgreementConfig(release_dir=str(medhalltune_dir), n=600, n_boot=200)
    result = run_agreement(store, cfg, client=client(_replay(_release_results(release_preds, shuffle=True)), "shuffled"))
    assert result.judged == 600
    rows = _rows(result)
    for axis in AXES:
        for m in ("spearman", "kendall_tau_b", "qwk"):
            r = rows[(axis, "all", m)]
            assert abs(r["value"]) < 0.12, (axis, m, r)
            assert r["ci_low"] < r["value"] < r["ci_high"]
        assert rows[(axis, "all", "exact")]["value"] < 0.35


def test_a_judge_on_the_local_server_gives_what_it_was_scripted_to(store, medhalltune_dir, server):
    """Every reply is "7 8 6 9" (medhall.testing.scripted_reply): the candidate's row is exactly
    that, its correlations undefined (a constant judge), its bias the distance to GPT-4o's means;
    a re-run sends the server nothing."""
    from medhall.endpoints import LLMSettings
    from medhall.store import query

    server.configure(responder="medhall")
    cfg = AgreementConfig(judge=LLMSettings(base_url=server.base_url, model="local-judge"),
                          release_dir=str(medhalltune_dir), n=40, n_boot=50, shard_size=16)
    result = run_agreement(store, cfg)
    assert result.judged == 40 and result.judged_now == 40 and server.stats()["served"] == 40
    rows = _rows(result)
    for axis, score in SCRIPTED.items():
        for kind in ("positive", "negative", "all"):
            assert rows[(axis, kind, "candidate_mean")]["value"] == score
            assert rows[(axis, kind, "spearman")]["value"] is None and rows[(axis, kind, "kendall_tau_b")]["value"] is None
            ref = rows[(axis, kind, "reference_mean")]["value"]
            assert rows[(axis, kind, "bias")]["value"] == pytest.approx(score - ref)
    assert "| local-judge (these" in result.markdown and "| 7.00&7.00 | 8.00&8.00 | 6.00&6.00 | 9.00&9.00 |" in result.markdown
    before = server.stats()["total"]
    again = run_agreement(store, cfg)
    assert again.judged_now == 0 and server.stats()["total"] == before  # resumed: nothing asked again
    assert again.table.equals(result.table)
    view = result.dataset.replace("-", "_")
    got = query(store, f"select measure, value from judge_agreement__{view} where axis = 'risk_level' "
                       "and kind = 'all' and measure = 'candidate_mean'").to_pylist()
    assert got == [{"measure": "candidate_mean", "value": 9.0}]
    judged = query(store, f"select count(*) n from judgments__{view} where judge_model = 'local-judge'").to_pylist()
    assert judged == [{"n": 40}]


def test_the_command_runs_it_in_process(home, medhalltune_dir, server):
    from typer.testing import CliRunner

    from medhall.cli import app

    server.configure(responder="medhall")
    r = CliRunner().invoke(app, ["--home", str(home), "judge-agreement", "--judge-url", server.base_url, "--judge-model",
                                 "cli-judge", "--n", "12", "--n-boot", "20", "--release", str(medhalltune_dir), "--local"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.stdout
    assert "# Judge agreement: cli-judge vs gpt-4o" in r.stdout and "Spearman ρ" in r.stdout
    assert "cli-judge: 12 of 12 answers judged" in r.stdout


def test_the_command_says_where_the_release_is_missing(home, tmp_path):
    from typer.testing import CliRunner

    from medhall.cli import app

    r = CliRunner().invoke(app, ["--home", str(home), "judge-agreement", "--judge-model", "x", "--release",
                                 str(tmp_path / "nowhere"), "--local"])
    assert r.exit_code == 2 and "release files are not in" in r.output
