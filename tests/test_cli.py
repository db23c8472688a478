"""The CLI end to end with tiny models, and its one-line errors on bad input."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner

from wmg.cli import main

TINY_TRAIN = ["--tiny", "--epochs", "2", "--batch-size", "4", "--grad-accum", "1", "--examples", "all", "--eval-split", "0.25",
              "--max-new-tokens", "24", "--no-progress", "--no-show-examples", "--platform", "windows"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny two-model run trained and compared through a real subprocess."""
    work = tmp_path_factory.mktemp("e2e")
    data = os.path.join(os.path.dirname(__file__), "fixtures", "gadgets_small.jsonl")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "wmg", "train", "--data", data, "--db", str(work / "results.db"),
         "--checkpoints", str(work / "ckpt"), "--report", str(work / "report.json"), *TINY_TRAIN],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc.stdout


def q(db, sql, *args):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def test_train_then_compare_writes_rows_and_report(trained):
    work, out = trained
    db = str(work / "results.db")
    assert "DEVICE SETUP" in out and "CUDA and MPS hidden" in out and "LOADING AND PREPARING DATA" in out
    assert "Precision: " in out and "MEMORY OPTIMIZATION" not in out
    assert "TRAINING MODEL: FLAN-T5-SMALL" in out and "TRAINING MODEL: DISTILGPT2" in out
    assert "Run id: 1" in out
    assert q(db, "SELECT id, status, n_train, n_validation, models FROM runs") == [
        (1, "completed", 9, 3, "flan-t5-small,distilgpt2")]
    models = q(db, "SELECT name, status, init, steps, parameters > 0, final_loss IS NOT NULL, checkpoint_path "
                   "FROM run_models ORDER BY position")
    # 9 training lines plus the open-form copies of those whose instruction names the label
    # (the scratch recipe): 4 micro-batches of 4 per epoch, 2 epochs
    assert [m[:6] for m in models] == [("flan-t5-small", "completed", "scratch", 8, 1, 1),
                                       ("distilgpt2", "completed", "scratch", 8, 1, 1)]
    for m in models:
        assert os.path.exists(os.path.join(m[6], "model.safetensors"))
    assert q(db, "SELECT COUNT(*) FROM train_steps") == [(16,)]
    assert q(db, "SELECT COUNT(*), COUNT(val_loss) FROM epoch_losses") == [(4, 4)]
    assert q(db, "SELECT split, COUNT(*) FROM examples GROUP BY split ORDER BY split") == [("train", 9), ("validation", 3)]
    assert q(db, "SELECT status, n_examples FROM evaluations") == [("completed", 3)]
    assert q(db, "SELECT COUNT(*) FROM predictions") == [(6,)]
    assert q(db, "SELECT COUNT(*), SUM(n_models = 2) FROM agreements") == [(3, 3)]
    # stored flags agree with the stored fields
    for fmt, gt, loc, ex in q(db, "SELECT format_ok, gadget_type, location, explanation FROM predictions"):
        assert bool(fmt) == bool(gt and loc and ex)
    # the error-analysis view answers
    rows = q(db, "SELECT gold_type, model, examples FROM error_by_type")
    assert sum(r[2] for r in rows) == 6

    assert oct((work / "report.json").stat().st_mode & 0o777) != "0o600"  # an ordinary file, not mkstemp's private one
    report = json.loads((work / "report.json").read_text())
    s = report["summary"]
    assert {"total_examples", "full_agreements", "full_agreement_rate", "disagreement_rate",
            "model_format_accuracy"} <= set(s)
    assert s["total_examples"] == 3 and set(s["model_format_accuracy"]) == {"flan-t5-small", "distilgpt2"}
    assert s["full_agreement_rate"] + s["disagreement_rate"] == pytest.approx(1.0)
    # every pair of systems (models and baselines) on the same examples, with the bootstrap recorded
    pairs = {(p["system_a"], p["system_b"]): p for p in s["paired_gold_type"]}
    assert set(pairs) == {("flan-t5-small", "distilgpt2"), ("flan-t5-small", "tfidf-logreg"),
                          ("flan-t5-small", "majority-class"), ("distilgpt2", "tfidf-logreg"),
                          ("distilgpt2", "majority-class"), ("tfidf-logreg", "majority-class")}
    p = pairs[("flan-t5-small", "distilgpt2")]
    assert p["difference"] == pytest.approx(s["model_gold_type_accuracy"]["flan-t5-small"]
                                            - s["model_gold_type_accuracy"]["distilgpt2"])
    assert p["difference_low"] <= p["difference"] <= p["difference_high"] and 0 <= p["mcnemar_p"] <= 1
    assert s["bootstrap"]["resamples"] >= 2000 and isinstance(s["bootstrap"]["seed"], int)
    r0 = report["results"][0]
    assert {"example_id", "instruction", "excerpt", "gold_output", "predictions", "format_checks", "agreement"} <= set(r0)
    # the location check, stored and reported alike, is the parser's on the stored location and excerpt
    from wmg.parse import location_in_excerpt

    for location, excerpt, stored in q(db, "SELECT p.location, x.input, p.location_in_excerpt FROM predictions p "
                                           "JOIN examples x ON x.id = p.example_id"):
        want = location_in_excerpt(location, excerpt)
        assert stored == (None if want is None else int(want))
    assert set(r0["location_in_excerpt"]) == {"flan-t5-small", "distilgpt2"}
    assert set(s["model_location_in_excerpt"]) == {"flan-t5-small", "distilgpt2"}
    assert {"full_agreement", "unique_types", "gadget_types", "normalized_types",
            "unique_normalized_types", "majority_type"} <= set(r0["agreement"])
    stored = q(db, "SELECT raw_text FROM predictions p JOIN examples x ON x.id = p.example_id "
                   "WHERE x.position = 0 AND p.model = 'flan-t5-small'")
    assert stored == [(r0["predictions"]["flan-t5-small"],)]


def test_compare_again_on_other_data_and_runs_json(trained, small_data):
    work, _ = trained
    db = str(work / "results.db")
    r = CliRunner().invoke(main, ["compare", "--run-id", "1", "--db", db, "--data", small_data, "--max-new-tokens",
                                  "8", "--no-progress", "--no-show-examples", "--report", str(work / "r2.json")])
    assert r.exit_code == 0, r.output
    assert q(db, "SELECT id, source, n_examples, status FROM evaluations ORDER BY id")[1] == (2, small_data, 12,
                                                                                               "completed")
    assert q(db, "SELECT COUNT(*) FROM examples WHERE split = 'external' AND evaluation_id = 2") == [(12,)]
    assert q(db, "SELECT COUNT(*) FROM predictions WHERE evaluation_id = 2") == [(24,)]
    r = CliRunner().invoke(main, ["runs", "--format", "json", "--db", db])
    assert r.exit_code == 0
    runs = json.loads(r.output)
    assert [(x["run_id"], x["model"]) for x in runs] == [(1, "flan-t5-small"), (1, "distilgpt2"),
                                                         (1, "(baseline) tfidf-logreg"), (1, "(baseline) majority-class")]
    assert {x["evaluation_id"] for x in runs} == {2}
    assert [x["init"] for x in runs] == ["scratch", "scratch", "baseline", "baseline"]
    r = CliRunner().invoke(main, ["show", "--run-id", "1", "--db", db])
    assert r.exit_code == 0 and "flan-t5-small" in r.output and "scratch" in r.output


def test_compare_with_judge_puts_verdicts_in_report(trained):
    work, _ = trained
    db = str(work / "results.db")
    report = work / "judged.json"
    r = CliRunner().invoke(main, ["compare", "--run-id", "1", "--db", db, "--max-new-tokens", "8", "--no-progress",
                                  "--no-show-examples", "--report", str(report), "--judge", "rules"])
    assert r.exit_code == 0, r.output
    assert "SEMANTIC AGREEMENT" in r.output and "rules judge: full" in r.output
    data = json.loads(report.read_text())
    sem = data["summary"]["semantic_agreement"]["rules"]
    assert sem["examples"] == 3 and 0 <= sem["full_or_partial_rate"] <= 1
    j = data["results"][0]["judgments"]["rules"]
    assert j["overall"]["verdict"] in ("full", "partial", "disagreement", "invalid")
    assert set(j["gold"]) == {"flan-t5-small", "distilgpt2"} and len(j["pairs"]) == 1
    r = CliRunner().invoke(main, ["analyze", "agreement", "--run-id", "1", "--db", db, "--format", "json"])
    sem = [rec for rec in json.loads(r.output) if rec["table"] == "semantic"]
    assert sem[0]["judge"] == "rules"


def test_predict_custom_excerpt(trained):
    work, _ = trained
    r = CliRunner().invoke(main, ["predict", "--run-id", "1", "--db", str(work / "results.db"), "--excerpt",
                                  "The COP instruction copies Length elements from Source to Dest.",
                                  "--max-new-tokens", "8", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [rec["model"] for rec in out] == ["flan-t5-small", "distilgpt2"]
    assert {"output", "gadget_type", "location", "explanation", "normalized_type", "format_ok"} <= set(out[0])


def one_line_error(result, *fragments):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [l for l in result.output.strip().splitlines() if l.startswith("Error")]
    assert len(lines) == 1, result.output
    for f in fragments:
        assert f in lines[0], lines[0]


def test_bad_inputs_give_one_line_errors(tmp_path, db, small_data):
    run = lambda *a: CliRunner().invoke(main, list(a))
    one_line_error(run("train", "--data", str(tmp_path / "missing.jsonl"), "--db", db), "data file not found")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(open(small_data).readline() + "{oops\n")
    one_line_error(run("train", "--data", str(bad), "--db", db, "--tiny", "--no-progress"), f"{bad}:2", "not valid JSON")
    lacking = tmp_path / "lacking.jsonl"
    lacking.write_text(json.dumps({"instruction": "x", "input": "y"}) + "\n")
    one_line_error(run("train", "--data", str(lacking), "--db", db, "--tiny"), f"{lacking}:1", "missing field 'output'")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_line_error(run("train", "--data", str(empty), "--db", db, "--tiny"), "empty")
    one_line_error(run("train", "--models", "flan-t5-small,gpt5", "--data", small_data, "--db", db), "unknown model 'gpt5'")
    one_line_error(run("compare", "--run-id", "42", "--db", db), "no run with id 42")
    one_line_error(run("show", "--run-id", "abc", "--db", db), "not a run id")
    notdb = tmp_path / "notdb.db"
    notdb.write_text("hello, I am not a database")
    one_line_error(run("runs", "--db", str(notdb)), "not a SQLite database")
    # the numbers read from the environment: refused before the command starts, whichever it is
    for var, bad, expected in (("WMG_TRIM_STEPS", "many", "whole number"), ("WMG_MMAP_THRESHOLD", "-1", "whole number"),
                               ("WMG_BUSY_TIMEOUT_MS", "2.5", "whole number"), ("WMG_PROGRESS_EVERY", "often", "a number")):
        for args in (["train", "--data", small_data, "--db", db, "--tiny", "--no-progress"], ["runs", "--db", db]):
            r = CliRunner().invoke(main, args, env={var: bad})
            one_line_error(r, f"{var}='{bad}'", expected)
            assert r.exit_code == 1
    r = CliRunner().invoke(main, ["runs", "--db", db], env={"WMG_PROGRESS_EVERY": "0.5", "WMG_BUSY_TIMEOUT_MS": " 100 "})
    assert r.exit_code == 0, r.output  # good values pass
    # nothing was half-written: the failed attempts left no run behind
    assert q(db, "SELECT COUNT(*) FROM runs") == [(0,)]


def test_compare_with_checkpoints_gone(trained, tmp_path):
    work, _ = trained
    db = tmp_path / "copy.db"
    shutil.copy(work / "results.db", db)
    ckpt = q(str(db), "SELECT checkpoint_path FROM run_models WHERE name = 'distilgpt2'")[0][0]
    moved = ckpt + ".moved"
    os.rename(ckpt, moved)
    try:
        r = CliRunner().invoke(main, ["compare", "--run-id", "1", "--db", str(db), "--no-progress"])
        one_line_error(r, "checkpoint of distilgpt2", "is gone")
    finally:
        os.rename(moved, ckpt)
    assert q(str(db), "SELECT COUNT(*) FROM evaluations WHERE status = 'failed'") == [(0,)]


def test_failed_training_marks_run_failed(tmp_path, small_data, monkeypatch):
    import wmg.pipeline as pipeline

    db = str(tmp_path / "f.db")

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pipeline, "train_model", boom)
    r = CliRunner().invoke(main, ["train", "--data", small_data, "--db", db, "--tiny", "--no-progress",
                                  "--checkpoints", str(tmp_path / "c")])
    assert r.exit_code != 0
    assert q(db, "SELECT status, error FROM runs") == [("failed", "RuntimeError: disk on fire")]
    assert q(db, "SELECT DISTINCT status FROM run_models") == [("failed",)]


def test_help_lists_every_option():
    for cmd in (["train"], ["compare"], ["predict"], ["runs"], ["show"], ["db", "upgrade"], ["data", "check"],
                ["analyze", "models"], ["judge"], ["bench"], ["plot"]):
        r = CliRunner().invoke(main, cmd + ["--help"])
        assert r.exit_code == 0
        for line in r.output.splitlines():
            if line.strip().startswith("--") and "  " in line.strip():
                assert line.strip().split("  ", 1)[1].strip(), line  # every option has help text


def test_default_examples_follow_the_init(tmp_path, small_data):
    """--examples auto: scratch init (here: --tiny) uses every line, not the tutorial's 100."""
    db = str(tmp_path / "d.db")
    r = CliRunner().invoke(main, ["train", "--data", small_data, "--db", db, "--tiny", "--epochs", "1",
                                  "--no-compare", "--no-progress", "--platform", "windows",
                                  "--checkpoints", str(tmp_path / "c"), "--train-fraction", "0.99"])
    assert r.exit_code == 0, r.output
    assert "Examples: all" in r.output and "Training share 0.99" in r.output
    assert q(db, "SELECT n_train + n_validation, examples_requested FROM runs") == [(12, None)]
    assert json.loads(q(db, "SELECT config_json FROM runs")[0][0])["train_fraction"] == 0.99
    hp = {name: json.loads(h) for name, h in q(db, "SELECT name, hyperparams_json FROM run_models")}
    # the scratch recipe's dropout: the published 0.1 for flan-t5-small, off for distilgpt2
    assert hp["flan-t5-small"]["dropout"] == 0.1 and hp["distilgpt2"]["dropout"] == 0.0
    assert hp["flan-t5-small"]["epochs"] == hp["distilgpt2"]["epochs"] == 1


def test_extra_training_lines_join_the_training_split_only(tmp_path, small_data):
    """--extra-train FILE: its lines are added to the training split after the split, numbered after
    the data file's, and never evaluated, so the held-out examples are those of the same run without
    them; the files are recorded with their SHA-256 (`wmg show`, the TOML that trains the run again).
    A line repeating an excerpt of the data is refused before anything is stored, as is a file
    changed since its hash was recorded."""
    import tomllib

    from wmg.data import load_jsonl
    from wmg.pipeline import TrainOptions, extra_training_lines, file_sha256

    data = load_jsonl(small_data)
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({"instruction": e.instruction, "input": f"Variant {i}. {e.input}",
                                         "output": e.output}) + "\n" for i, e in enumerate(data[:4])))
    db = str(tmp_path / "d.db")
    base = ["train", "--data", small_data, "--db", db, "--tiny", "--epochs", "1", "--no-compare", "--no-progress",
            "--platform", "windows", "--checkpoints", str(tmp_path / "c"), "--eval-split", "0.25"]
    assert CliRunner().invoke(main, base).exit_code == 0
    r = CliRunner().invoke(main, base + ["--extra-train", str(extra)])
    assert r.exit_code == 0, r.output
    assert f"Extra training lines: 4 from {extra}" in r.output

    def lines(run, split):
        return sorted(x for (x,) in q(db, "SELECT source_line FROM examples WHERE run_id = ? AND split = ?", run, split))

    assert lines(2, "validation") == lines(1, "validation") and len(lines(1, "validation")) == 3
    assert lines(2, "train") == sorted(lines(1, "train") + [12, 13, 14, 15])
    assert q(db, "SELECT input FROM examples WHERE run_id = 2 AND source_line = 12") == [(f"Variant 0. {data[0].input}",)]
    shown = CliRunner().invoke(main, ["show", "--run-id", "2", "--db", db, "--format", "toml"])
    cfg = tomllib.loads(shown.output)
    assert cfg["extra_train"] == [str(extra)] and file_sha256(extra) in shown.output
    assert str(extra) in CliRunner().invoke(main, ["show", "--run-id", "2", "--db", db]).output
    (tmp_path / "run.toml").write_text(shown.output)
    r = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "run.toml"), "--db", db, "--no-compare",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    assert lines(3, "train") == lines(2, "train") and lines(3, "validation") == lines(2, "validation")

    leak = tmp_path / "leak.jsonl"
    leak.write_text(extra.read_text() + json.dumps({"instruction": data[5].instruction, "input": data[5].input,
                                                    "output": data[5].output}) + "\n")
    r = CliRunner().invoke(main, base + ["--extra-train", str(leak)])
    one_line_error(r, f"{leak}:5", "already in")
    assert q(db, "SELECT count(*) FROM runs") == [(3,)]
    opts = TrainOptions(data=small_data, models="flan-t5-small", extra_train=[str(extra)],
                        extra_train_sha256=["0" * 64])
    with pytest.raises(ValueError, match="has changed"):
        extra_training_lines(opts, data, print)


def test_compare_with_the_location_span_constraint(trained, monkeypatch):
    """`--location-span`: recorded with the evaluation, and every stored location is a span of its own
    excerpt. A tiny model rarely writes `location:` by itself, so the answer's head is forced; the
    location is then the model's own choice within the constraint, batched and sorted as usual."""
    from wmg import generate as gen

    real = gen.LocationSpan.__call__

    def forced(self, input_ids, scores):
        head = self.tok(" gadget_type: Control-Flow gadget; location:", add_special_tokens=False)["input_ids"]
        for r, toks in enumerate(input_ids[:, self.start:].tolist()):
            if self.state[r] == "before" and len(toks) < len(head):
                scores[r] = -float("inf")
                scores[r, head[len(toks)]] = 0.0
        return real(self, input_ids, scores)

    monkeypatch.setattr(gen.LocationSpan, "__call__", forced)
    work, _ = trained
    db = str(work / "results.db")
    r = CliRunner().invoke(main, ["compare", "--run-id", "1", "--db", db, "--max-new-tokens", "40", "--no-progress",
                                  "--no-show-examples", "--report", str(work / "span.json"), "--location-span",
                                  "--no-repeat-ngram-size", "0", "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    assert "location constrained to a span of the excerpt" in r.output
    (eid, cfg), = q(db, "SELECT id, config_json FROM evaluations ORDER BY id DESC LIMIT 1")
    assert json.loads(cfg)["location_span"] is True
    rows = q(db, "SELECT p.location, p.location_in_excerpt, x.input FROM predictions p "
                 "JOIN examples x ON x.id = p.example_id WHERE p.evaluation_id = ?", eid)
    assert len(rows) == 6
    written = [(loc, stored) for loc, stored, _ in rows if loc]  # closing the field at once leaves it empty
    assert len(written) >= 2 and all(stored == 1 for _, stored in written), rows
