"""`medhall vqa CONFIG.json --local` as a user runs it."""

import json

from typer.testing import CliRunner

from medhall.cli import app


def test_vqa_command_prints_table3_and_writes_rows(benchmarks, models, tmp_path):
    cfg = tmp_path / "vqa.json"
    cfg.write_text(json.dumps({"benchmarks": benchmarks, "models": models}))
    home = tmp_path / "home"
    # the fixture's benchmarks hold two questions that cannot be answered: by default any failure fails the command
    r = CliRunner().invoke(app, ["--home", str(home), "vqa", str(cfg), "--local", "--dataset", "vqa-cli"], catch_exceptions=False)
    assert r.exit_code == 1 and "more failures than --max-failed 0" in " ".join(r.stderr.split())
    r = CliRunner().invoke(app, ["--home", str(home), "vqa", str(cfg), "--local", "--dataset", "vqa-cli",
                                 "--max-failed", "0.5"], catch_exceptions=False)
    assert r.exit_code == 0, r.stdout
    assert "open" in r.stdout.lower() and "closed" in r.stdout.lower() and "answered" in r.stdout
    r = CliRunner().invoke(app, ["--home", str(home), "sql", "select count(*) n from predictions__vqa_cli", "-f", "json"])
    assert json.loads(r.stdout)["n"] > 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"benchmarks": [{"name": "nope", "path": "x"}], "models": models}))
    r = CliRunner().invoke(app, ["--home", str(home), "vqa", str(bad), "--local"])
    assert r.exit_code == 2 and "nope" in r.stderr
