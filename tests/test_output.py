"""One output convention for every command: --format table|json|csv, flat long records, stdout
holding only results, empty selections as empty results, usage errors before any work."""
import csv
import io
import json
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from tests.analysis_fixture import AR, CF, IO, RW, TS, make_run
from tests.conftest import SMALL
from wmg.cli import main

ENV = dict(os.environ, HF_HUB_OFFLINE="1", WMG_PROGRESS_EVERY="0")
TINY = ["--tiny", "--epochs", "1", "--batch-size", "4", "--grad-accum", "1", "--eval-split", "0.25", "--max-new-tokens", "8",
        "--platform", "windows"]


def wmg(args, cwd, **env):
    return subprocess.run([sys.executable, "-m", "wmg", *map(str, args)], cwd=cwd, env=dict(ENV, **env),
                          capture_output=True, text=True, timeout=600)


def parse(fmt: str, text: str) -> list[dict]:
    """The whole of stdout as JSON records or one CSV table; anything else in it fails."""
    if fmt == "json":
        records = json.loads(text)
        assert isinstance(records, list)
        for r in records:
            assert isinstance(r, dict) and all(not isinstance(v, (dict, list)) for v in r.values()), r
        return records
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    assert reader.fieldnames, text[:500]
    for r in rows:  # every line has exactly the header's fields: no banner or note slipped in
        assert None not in r and None not in r.values(), r
    return rows


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """A store whose run lists its models as zeta, alpha (not alphabetical), with different scores:
    zeta: format 3/4, gold 3/4; alpha: format 2/4, gold 1/4."""
    db = str(tmp_path_factory.mktemp("order") / "results.db")
    make_run(db, ["zeta", "alpha"], [RW, AR, CF, IO], [(RW, None), (AR, None), (CF, CF), (None, TS)],
             words=[10, 20, 30, 40], forms=["open"] * 4)
    return db


def invoke(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def test_runs_figures_land_under_their_own_model_in_every_format(two_models):
    """Regression: `wmg runs` printed accuracies in alphabetical model order beside models in run order."""
    want = {"zeta": (0.75, 0.75), "alpha": (0.5, 0.25)}
    for fmt in ("json", "csv"):
        recs = parse(fmt, invoke("runs", "--db", two_models, "--format", fmt).stdout)
        assert [r["model"] for r in recs] == ["zeta", "alpha"]
        got = {r["model"]: (float(r["format_accuracy"]), float(r["gold_accuracy"])) for r in recs}
        assert got == want
    lines = invoke("runs", "--db", two_models).stdout.splitlines()
    zeta = next(l for l in lines if " zeta " in l)
    alpha = next(l for l in lines if " alpha " in l)
    # format, gold type, and gold type on the open-form examples (every example of this store)
    assert zeta.count("75.0% [") == 3 and "50.0% [" in alpha and "25.0% [" in alpha and "75.0% [" not in alpha
    # the same figures by model name in show, analyze models and analyze runs
    recs = [r for r in parse("json", invoke("show", "--run-id", 1, "--db", two_models, "--format", "json").stdout)
            if r["table"] == "models"]
    assert {r["model"]: (r["format_accuracy"], r["gold_accuracy"]) for r in recs} == want
    for cmd in (["analyze", "models", "--run-id", 1], ["analyze", "runs"]):
        recs = parse("csv", invoke(*cmd, "--db", two_models, "--format", "csv").stdout)  # the first table
        assert {r["model"]: (float(r["format_accuracy"]), float(r["gold_accuracy"])) for r in recs} == want


def test_wide_tables_are_long_records(two_models):
    recs = parse("json", invoke("analyze", "by-type", "--run-id", 1, "--db", two_models, "--format", "json").stdout)
    acc = {(r["gold_type"], r["model"]): r["accuracy"] for r in recs
           if r["table"] == "by_type" and r["instruction_form"] == "all"}
    assert acc[(IO, "alpha")] == 0.0 and acc[(RW, "zeta")] == 1.0
    # the person's view of the same table is wide: one column per model
    text = invoke("analyze", "by-type", "--run-id", 1, "--db", two_models, "--table", "by_type").stdout
    lines = text.splitlines()
    header = next(l for l in lines if l.startswith("run_id"))
    assert header.split()[-2:] == ["zeta", "alpha"]
    body = lines[lines.index(header) + 2:]
    body = body[:next(i for i, l in enumerate(body) if l.startswith("note:"))]
    # one row per gold type and instruction form (all, then the one form of these examples),
    # although the models' per-type counts differ
    assert len(body) == 8 and "all" in body[0].split()[:3] and "open" in body[4].split()[:3]
    assert body[0].count("0.0% [0.0, ") == 2  # IO: both wrong (with intervals), the hardest first
    csv_conf = parse("csv", invoke("analyze", "by-type", "--run-id", 1, "--db", two_models, "--format", "csv",
                                   "--table", "confusion").stdout)
    assert set(csv_conf[0]) == {"run_id", "evaluation_id", "model", "gold_label", "predicted_label", "n"}


def test_csv_with_several_tables_prints_one_and_names_the_rest(two_models, tmp_path):
    r = invoke("analyze", "confidence", "--run-id", 1, "--db", two_models, "--format", "csv")
    assert parse("csv", r.stdout)[0]["model"] == "zeta"
    assert "risk_coverage" in r.stderr and "--table" in r.stderr
    out = tmp_path / "tables"
    invoke("analyze", "confidence", "--run-id", 1, "--db", two_models, "--format", "csv", "--out", out)
    assert sorted(p.name for p in out.iterdir()) == ["aurc.csv", "confidence.csv", "risk_coverage.csv"]
    for p in out.iterdir():
        parse("csv", p.read_text())
    bad = CliRunner().invoke(main, ["analyze", "confidence", "--run-id", "1", "--db", two_models, "--table", "nope"])
    assert bad.exit_code == 2


ANALYSES = ["disagreements", "models", "confidence", "by-type", "vote", "agreement"]


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_an_empty_store_is_an_empty_result(tmp_path, fmt):
    db = str(tmp_path / "empty.db")
    commands = [["runs"], ["analyze", "runs"], ["plot", "--all-runs", "--out", tmp_path / "p"]]
    commands += [["analyze", a, "--all-runs"] for a in ANALYSES]
    for cmd in commands:
        r = CliRunner().invoke(main, [*map(str, cmd), "--db", db, "--format", fmt])
        assert r.exit_code == 0, (cmd, r.output)
        assert parse(fmt, r.stdout) == [], cmd


def _leaf_commands(group=main, path=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _leaf_commands(cmd, path + (name,))
        else:
            yield path + (name,), cmd


def test_every_command_that_prints_results_takes_the_three_formats():
    interactive = {("annotate",),  # asks questions; its CSV import/export is the machine path
                   ("datasette",)}  # serves a web page until stopped
    for path, cmd in _leaf_commands():
        if path in interactive:
            continue
        fmt = next((p for p in cmd.params if p.name == "fmt"), None)
        assert fmt is not None, path
        assert list(fmt.type.choices) == ["table", "json", "csv"] + (["toml"] if path == ("show",) else []), path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("walk")
    db = str(work / "results.db")
    r = wmg(["train", "--data", SMALL, "--db", db, "--checkpoints", work / "ck", "--report", work / "r.json",
             *TINY, "--format", "json"], cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    return work, db, r


def test_train_json_stdout_is_the_comparison_and_logs_go_to_stderr(tiny_run):
    work, db, r = tiny_run
    recs = [x for x in parse("json", r.stdout) if x["instruction_form"] == "all" and x["init"] != "baseline"]
    assert [x["model"] for x in recs] == ["flan-t5-small", "distilgpt2"] and {x["run_id"] for x in recs} == {1}
    assert all(x["gold_accuracy_low"] <= x["gold_accuracy"] <= x["gold_accuracy_high"] for x in recs)
    assert "DEVICE SETUP" in r.stderr and "TRAINING MODEL: FLAN-T5-SMALL" in r.stderr
    # not a terminal: no tqdm redraws, plain progress lines and key=value loss lines instead
    assert "\r" not in r.stderr
    assert "flan-t5-small: 4/4 steps (100%), " in r.stderr  # 9 examples and their open-form copies, batch 4
    assert "flan-t5-small: epoch=1 train_loss=" in r.stderr and "{'" not in r.stderr


def test_every_command_json_and_csv_parse_and_stdout_holds_nothing_else(tiny_run, tmp_path):
    work, db, _ = tiny_run
    commands = [
        ["compare", "--run-id", 1, "--max-new-tokens", 8, "--report", tmp_path / "c.json"],
        ["predict", "--run-id", 1, "--max-new-tokens", 8, "--excerpt", "The TON timer delays the coil."],
        ["runs"], ["show", "--run-id", 1], ["analyze", "runs"],
        ["judge", "--run-id", 1, "--judge", "rules"],
        ["plot", "--run-id", 1, "--out", tmp_path / "plots"],
        ["data", "check", SMALL], ["db", "current"], ["db", "upgrade"],
        ["train", "--data", SMALL, "--checkpoints", tmp_path / "ck", "--no-compare", *TINY],
    ] + [["analyze", a, "--run-id", 1] for a in ANALYSES]
    for cmd in commands:  # in-process: click's runner keeps stdout and stderr apart
        for fmt in ("json", "csv"):
            r = CliRunner(env={"WMG_DB": db}).invoke(main, [*map(str, cmd), "--format", fmt])
            assert r.exit_code == 0, (cmd, fmt, r.output[-2000:])
            recs = parse(fmt, r.stdout)
            assert recs, (cmd, fmt)


def test_quiet_leaves_only_the_results(tiny_run, tmp_path):
    work, db, _ = tiny_run
    r = wmg(["compare", "--run-id", 1, "--max-new-tokens", 8, "--report", tmp_path / "q.json", "--db", db,
             "--format", "json", "--quiet"], cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    assert len([x for x in parse("json", r.stdout) if x["instruction_form"] == "all" and x["init"] != "baseline"]) == 2
    r = wmg(["compare", "--run-id", 1, "--max-new-tokens", 8, "--report", tmp_path / "q.json", "--db", db,
             "--quiet"], cwd=tmp_path)  # the table view keeps its summary
    assert r.returncode == 0 and "DEVICE SETUP" not in r.stdout and "Gold-type accuracy by model" in r.stdout


@pytest.mark.parametrize("args, fragment", [
    (["train", "--eval-split", "1.5"], "--eval-split"),
    (["train", "--eval-split", "0"], "--eval-split"),
    (["train", "--examples", "0"], "--examples"),
    (["train", "--examples", "many"], "--examples"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--lr", "0"], "--learning-rate"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--grad-accum", "-1"], "--grad-accum"),
    (["train", "--warmup-ratio", "2"], "--warmup-ratio"),
    (["train", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["compare", "--run-id", "0"], "--run-id"),
    (["analyze", "vote", "--evaluation-id", "x"], "not an evaluation id"),
    (["analyze", "vote"], "nothing selected"),
    (["runs", "--format", "xml"], "--format"),
])
def test_usage_errors_exit_2_before_any_work(tmp_path, args, fragment):
    r = wmg([*args, "--db", tmp_path / "r.db"], cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and r.stderr.count("\n") == 1 and fragment in r.stderr, r.stderr
    assert not (tmp_path / "r.db").exists()


def test_metavars_name_what_they_take():
    text = CliRunner().invoke(main, ["analyze", "vote", "--help"]).output
    assert "--evaluation-id EVALUATION_ID" in text and "--run-id RUN_ID" in text
    text = CliRunner().invoke(main, ["train", "--help"]).output
    assert "--examples N|all|auto" in text and "--data PATH" in text


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg"])
def test_a_postgresql_url_without_its_driver_is_one_line(tmp_path, scheme):
    """Whether or not psycopg is installed here: a package of that name that cannot be imported
    stands in for it."""
    fake = tmp_path / "no_driver" / "psycopg"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n")
    path = os.pathsep.join([str(fake.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    r = wmg(["runs", "--db", f"{scheme}://wmg:secret@127.0.0.1/wmg"], cwd=tmp_path, PYTHONPATH=path)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "psycopg" in r.stderr and "wmg[postgres]" in r.stderr and "secret" not in r.stderr


def test_the_bundled_dataset_is_the_default_from_any_folder(tmp_path):
    (tmp_path / "data").mkdir()  # a data/ folder here is not silently preferred
    (tmp_path / "data" / "weird_machine_gadgets.jsonl").write_text("not the bundled data\n")
    r = wmg(["data", "check", "--format", "json"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = {x["metric"]: x["value"] for x in parse("json", r.stdout) if x["table"] == "summary"}
    assert summary["valid"] == 1584 and summary["path"] != str(tmp_path / "data" / "weird_machine_gadgets.jsonl")
    assert "(the bundled dataset)" in r.stderr


def test_bench_result_as_tables():
    """`wmg bench --format json|csv` (the full run takes minutes; its result shape is checked here)."""
    from wmg import bench
    from wmg.console import render

    side = {"examples_per_s": 2.0, "tokens_per_s": 400.0, "final_loss": 5.0, "seconds": 10.0}
    gen = {"examples_per_s": 1.0, "new_tokens_per_s": 200.0}
    model = {"model": "distilgpt2", "steps": 4, "precision": "bf16", "toolkit_train": side,
             "baseline_train": dict(side, examples_per_s=0.5, tokens_per_s=100.0), "train_speedup": 4.0,
             "loss_difference": 0.1, "toolkit_gen": gen, "baseline_gen": dict(gen, examples_per_s=0.25,
                                                                               new_tokens_per_s=50.0),
             "gen_speedup": 4.0, "identical_outputs": 3, "compared_outputs": 4, "mfu": 0.12, "achieved_tflops": 0.3,
             "differences": [{"example": 2, "toolkit": "a", "baseline": "b"}]}
    res = {"date": "2026-11-28", "quick": True, "precision": "bf16", "machine": {"cpu": "x", "cores": 2},
           "matmul_peak_tflops": {"bf16": 2.4, "fp32": 0.4}, "models": [model], "memory": None}
    tables = bench.tables(res)
    recs = parse("json", render(tables, "json"))
    speed = {r["measure"]: r for r in recs if r["table"] == "results"}
    assert speed["train_examples_per_s"]["ratio"] == 4.0 and speed["generate_examples_per_s"]["ratio"] == 4.0
    assert [r for r in recs if r["table"] == "differences"][0]["example"] == 2
    assert len(parse("csv", render(tables, "csv"))) == len(speed)
