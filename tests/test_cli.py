"""The `medhall` command as a user runs it (typer's CliRunner, an isolated MEDHALL_HOME)."""

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from medhall import __version__
from medhall.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_version_and_help_on_every_command():
    assert run("--version").stdout.strip() == f"medhall {__version__}"
    for cmd in ("demo", "build", "evaluate", "vqa", "ingest", "sample", "stats", "sql", "tables", "schema", "catalog"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Usage" in r.stdout, cmd


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    """One run of the main job shared by the tests below (it takes a few seconds)."""
    home = tmp_path_factory.mktemp("demo")
    r = runner.invoke(app, ["--home", str(home), "demo", "--local", "--eval-questions", "6"], catch_exceptions=False)
    assert r.exit_code == 0, r.stdout
    return home, r.stdout


def test_demo_builds_the_embedded_default(demo_home):
    home, out = demo_home
    assert "catalog" in out and "medhall sql" in out
    # the text-only baseline was evaluated, and the output says what needs a judge
    assert "Evaluation" in out and "text-only" in out.lower() and "MEDHALL_LLM_BASE_URL" in out
    r = run("--home", str(home), "sql", "select metric, count(*) n from scores group by 1 order by 1", "-f", "json")
    metrics = {json.loads(line)["metric"]: json.loads(line)["n"] for line in r.stdout.splitlines()}
    assert {"meteor", "bertscore_f1", "rougeL"} <= set(metrics) and metrics["meteor"] == 6
    r = run("--home", str(home), "sql", "select count(*) n from instructions__sample_instruct", "-f", "json")
    assert json.loads(r.stdout)["n"] >= 200
    images = pq.read_table(next((home / "store" / "sample" / "images").glob("v*/data.parquet")))
    assert images.num_rows >= 24
    assert set(images.column("image_status").to_pylist()) == {"ok"}
    assert len(set(images.column("modality").to_pylist())) >= 6
    assert (home / "reports" / "sample" / "stats.png").stat().st_size > 10_000


def test_sql_answers_after_the_main_job_and_refuses_writes(demo_home):
    home, _ = demo_home
    r = run("--home", str(home), "sql", "select modality, count(*) n from images group by 1 order by 1", "-f", "json")
    assert r.exit_code == 0
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert sum(row["n"] for row in rows) >= 24 and {"CT", "MR"} <= {row["modality"] for row in rows}
    r = run("--home", str(home), "sql", "drop view images")
    assert r.exit_code == 2 and "read-only" in r.stderr
    r = run("--home", str(home), "sql", "select count(*) n from images", "-f", "json")
    assert json.loads(r.stdout)["n"] >= 24


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_sql_writes_files_but_never_into_the_store(demo_home, tmp_path, fmt):
    home, _ = demo_home
    out = tmp_path / f"mods.{fmt}"
    r = run("--home", str(home), "sql", "select modality from images", "--format", fmt, "--out", str(out))
    assert r.exit_code == 0 and out.stat().st_size > 0
    if fmt == "parquet":
        assert pq.read_table(out).num_rows >= 24
    inside = home / "store" / "sample" / "x.csv"
    r = run("--home", str(home), "sql", "select 1", "--format", "csv", "--out", str(inside))
    assert r.exit_code == 2 and not inside.exists()


def test_stats_sample_and_tables(demo_home, tmp_path):
    home, _ = demo_home
    r = run("--home", str(home), "stats", "sample")
    assert r.exit_code == 0 and "modality" in r.stdout
    r = run("--home", str(home), "sample", "sample", "-n", "10", "--out", "sample10", "--seed", "3", "--by", "modality")
    assert r.exit_code == 0
    r = run("--home", str(home), "sql", "select count(distinct modality) m from images__sample", "-f", "json")
    modalities = json.loads(r.stdout)["m"]
    r = run("--home", str(home), "sql", "select count(*) n, count(distinct modality) m from images__sample10", "-f", "json")
    assert json.loads(r.stdout) == {"n": 10, "m": modalities}  # every stratum kept while n allows
    assert "sample10" in run("--home", str(home), "tables").stdout


def test_ingest_exit_code_is_nonzero_only_when_nothing_valid_was_read(tmp_path):
    home = tmp_path / "h"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"pair_id": 1, "fig_caption": ""}\nnot json\n')
    r = run("--home", str(home), "ingest", "llava_med_captions", str(bad), "-d", "bad")
    assert r.exit_code == 1
    r = run("--home", str(home), "sql", "select reason from quarantine order by 1", "-f", "json")
    assert sorted(json.loads(line)["reason"] for line in r.stdout.splitlines()) == ["empty_caption", "malformed_json"]
    r = run("--home", str(home), "ingest", "nope", str(bad), "-d", "bad")
    assert r.exit_code == 2 and "llava_med_captions" in r.stderr
    r = run("--home", str(home), "ingest", "generic", str(tmp_path / "absent.jsonl"), "-d", "x")
    assert r.exit_code == 2 and "not found" in r.stderr


def test_ingest_of_the_real_release(medhalltune_dir, tmp_path):
    home = tmp_path / "h"
    files = sorted(str(p) for p in medhalltune_dir.glob("val_*_qa-filtered.jsonl"))
    r = run("--home", str(home), "ingest", "medhalltune", *files, "-d", "mht")
    assert r.exit_code == 0 and "396 not on disk" in r.stdout
    r = run("--home", str(home), "sql", "select count(*) q, count(distinct image_id) i from instructions", "-f", "json")
    assert json.loads(r.stdout) == {"q": 2238, "i": 396}


def _run_main(monkeypatch, capsys, *args):
    """The installed entry point (medhall.cli.run), as a user's shell calls it."""
    import sys

    from medhall.cli import run as main

    monkeypatch.setattr(sys, "argv", ["medhall", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


def test_expected_problems_are_one_or_two_lines_and_debug_shows_the_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MEDHALL_HOME", str(tmp_path))
    code, out = _run_main(monkeypatch, capsys, "evaluate", "nosuch", "--local")
    assert code == 1 and "error: no instructions table for dataset 'nosuch'" in out
    assert "medhall demo" in out and "Traceback" not in out and len(out.strip().splitlines()) <= 4
    code, out = _run_main(monkeypatch, capsys, "build", "--no-such-option")
    assert code == 2 and "No such option" in out
    from medhall.store.artifacts import StoreError

    monkeypatch.setattr(sys_argv_module(), "argv", ["medhall", "--debug", "evaluate", "nosuch", "--local"])
    from medhall.cli import run as main

    with pytest.raises(StoreError):
        main()


def sys_argv_module():
    import sys

    return sys


def test_an_unexpected_error_says_so_and_ctrl_c_says_how_to_resume(monkeypatch, capsys, tmp_path):
    import medhall.cli as cli

    monkeypatch.setenv("MEDHALL_HOME", str(tmp_path))

    def boom(*a, **k):
        raise TypeError("a bug")

    monkeypatch.setattr(cli, "_store", boom)
    code, out = _run_main(monkeypatch, capsys, "tables")
    assert code == 1 and "unexpected error: TypeError: a bug" in out and "--debug" in out

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_store", interrupt)
    code, out = _run_main(monkeypatch, capsys, "tables")
    assert code == 130 and "interrupted" in out and "run the same command again to resume" in out
