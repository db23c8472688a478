"""K-fold studies end to end with tiny models: `wmg train --folds K`, one fold at a time, the
study continued with `--study`, and the pooled analysis."""
import json
import sqlite3

import pytest
from click.testing import CliRunner

from wmg.cli import main

TINY = ["--tiny", "--epochs", "1", "--batch-size", "4", "--max-new-tokens", "16", "--no-progress",
        "--no-show-examples", "--platform", "windows"]


def q(db, sql, *args):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def by_table(records):
    """--format json: one list of records, each naming its table."""
    out = {}
    for r in records:
        out.setdefault(r.get("table", "only"), []).append(r)
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory, ):
    """Fold 2 of a 3-fold study alone, then the study continued to the end."""
    from conftest import SMALL

    work = tmp_path_factory.mktemp("study")
    db = str(work / "results.db")
    common = ["--db", db, "--checkpoints", work / "ckpt", "--report", work / "report.json"]
    first = invoke("train", "--data", SMALL, "--folds", 3, "--fold", 2, *common, *TINY, "--quiet")
    assert first.exit_code == 0, first.output
    assert q(db, "SELECT fold FROM runs") == [(2,)]
    rest = invoke("train", "--study", 1, "--db", db, "--no-progress", "--format", "json")
    assert rest.exit_code == 0, rest.output
    return db, work, by_table(json.loads(rest.stdout))


def test_every_example_is_evaluated_exactly_once_across_the_folds(study):
    db, work, _ = study
    assert q(db, "SELECT COUNT(*) FROM studies") == [(1,)]
    assert sorted(q(db, "SELECT fold, seed, status FROM runs")) == [(1, 42, "completed"), (2, 42, "completed"),
                                                                    (3, 42, "completed")]
    held = q(db, "SELECT x.source_line FROM examples x JOIN runs r ON r.id = x.run_id "
                 "WHERE x.split = 'validation' AND x.evaluation_id IS NULL")
    assert sorted(h[0] for h in held) == list(range(12))
    per_eval = q(db, "SELECT e.run_id, COUNT(*) FROM agreements a JOIN evaluations e ON e.id = a.evaluation_id "
                     "GROUP BY e.run_id")
    assert sorted(n for _, n in per_eval) == [4, 4, 4]
    for run_id, in q(db, "SELECT id FROM runs"):  # each fold trains on the other folds only
        train = {r[0] for r in q(db, "SELECT source_line FROM examples WHERE run_id = ? AND split = 'train'", run_id)}
        val = {r[0] for r in q(db, "SELECT source_line FROM examples WHERE run_id = ? AND split = 'validation'", run_id)}
        assert len(train) == 8 and not train & val
    reports = sorted(p.name for p in work.glob("report.study1.fold*.json"))
    assert reports == ["report.study1.fold1.seed42.json", "report.study1.fold2.seed42.json",
                       "report.study1.fold3.seed42.json"]


def test_pooled_figures_are_the_counts_over_every_fold(study):
    db, _, out = study
    pooled = {(r["instruction_form"], r["system"]): r for r in out["study"]}
    for model in ("flan-t5-small", "distilgpt2"):
        right, n = q(db, "SELECT SUM(matches_gold), COUNT(*) FROM predictions WHERE model = ?", model)[0]
        row = pooled[("all", model)]
        assert row["examples"] == n == 12 and row["gold_accuracy"] == pytest.approx(right / n)
        assert row["gold_accuracy_low"] <= row["gold_accuracy"] <= row["gold_accuracy_high"]
        assert row["folds_done"] == row["folds"] == 3
        open_n = q(db, "SELECT COUNT(*) FROM predictions p JOIN examples x ON x.id = p.example_id "
                       "WHERE p.model = ? AND x.instruction_form = 'open'", model)[0][0]
        assert pooled[("open", model)]["examples"] == open_n
    right, n = q(db, "SELECT SUM(matches_gold), COUNT(*) FROM baseline_predictions WHERE baseline = 'tfidf-logreg'")[0]
    assert pooled[("all", "tfidf-logreg")]["kind"] == "baseline"
    assert pooled[("all", "tfidf-logreg")]["gold_accuracy"] == pytest.approx(right / n)
    fold_rates = [r[0] for r in q(db, "SELECT AVG(matches_gold) FROM predictions WHERE model = 'distilgpt2' "
                                      "GROUP BY evaluation_id")]
    assert pooled[("all", "distilgpt2")]["fold_mean"] == pytest.approx(sum(fold_rates) / 3)
    view = {(r[0], r[1]): (r[2], r[3]) for r in q(db, "SELECT instruction_form, system, examples, accuracy "
                                                      "FROM study_accuracy WHERE study_id = 1")}
    assert view == {k: (r["examples"], pytest.approx(r["gold_accuracy"])) for k, r in pooled.items()}
    pairs = {(r["instruction_form"], r["model_a"], r["model_b"]) for r in out["study_pairs"]}
    assert ("all", "flan-t5-small", "distilgpt2") in pairs and ("open", "distilgpt2", "tfidf-logreg") in pairs
    assert all(0 <= r["mcnemar_p"] <= 1 for r in out["study_pairs"])


def test_analyze_models_study_and_a_finished_study_is_left_alone(study):
    db, _, out = study
    r = invoke("analyze", "models", "--study", 1, "--db", db, "--format", "json")
    assert r.exit_code == 0, r.output
    again = by_table(json.loads(r.stdout))
    assert again["study"] == out["study"]
    assert len({row["evaluation_id"] for row in again["models"]}) == 3  # every fold's own rows follow
    before = q(db, "SELECT COUNT(*) FROM runs")
    r = invoke("train", "--study", 1, "--db", db, "--no-progress", "--quiet")
    assert r.exit_code == 0 and q(db, "SELECT COUNT(*) FROM runs") == before


@pytest.mark.parametrize("args, message", [
    (["--fold", "2"], "--fold needs --folds K"),
    (["--seeds", "2"], "--seeds needs --folds K"),
    (["--folds", "3", "--fold", "4"], "4 is not between 1 and 3"),
    (["--study", "7"], "no study with id 7"),
    (["--folds", "3", "--eval-split", "0.2"], "--eval-split does not apply with --folds"),
    (["--study", "1", "--epochs", "2"], "do not give --epochs"),
])
def test_bad_study_options_are_one_line_errors(study, args, message):
    from conftest import SMALL

    db, _, _ = study
    r = invoke("train", "--data", SMALL, "--db", db, "--tiny", *args) if "--study" not in args else \
        invoke("train", "--db", db, *args)
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output


def test_plot_of_a_study(study, tmp_path):
    db, _, _ = study
    r = invoke("plot", "--study", 1, "--db", db, "--out", tmp_path, "--format", "json")
    assert r.exit_code == 0, r.output
    names = {p.name for p in tmp_path.glob("*.png")}
    assert "study1_form_accuracy.png" in names and len([n for n in names if n.endswith("_form_accuracy.png")]) == 4
    assert (tmp_path / "study1_form_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_analysis_pools_the_study(study):
    """vote, agreement, confidence and by-type add the study's pooled rows (no run, no evaluation)."""
    from wmg.stats import cohen_kappa

    db, _, _ = study

    def pooled(cmd, table):
        r = invoke("analyze", cmd, "--study", 1, "--db", db, "--format", "json")
        assert r.exit_code == 0, r.output
        recs = by_table(json.loads(r.stdout))[table]
        assert {x["study_id"] for x in recs} == {1}
        return [x for x in recs if x["run_id"] is None and x["instruction_form"] == "all"]

    vote = {x["model"]: x for x in pooled("vote", "only")}
    right, n = q(db, "SELECT SUM(majority_matches_gold), COUNT(*) FROM agreements")[0]
    assert vote["(majority vote)"]["examples"] == n == 12
    assert vote["(majority vote)"]["accuracy"] == pytest.approx(right / n)
    pairs = q(db, "SELECT a.normalized_type, b.normalized_type FROM predictions a JOIN predictions b "
                  "ON a.example_id = b.example_id AND a.evaluation_id = b.evaluation_id "
                  "WHERE a.model = 'flan-t5-small' AND b.model = 'distilgpt2'")
    (kappa,) = pooled("agreement", "pairwise")
    assert kappa["examples"] == 12 and kappa["observed_agreement"] == pytest.approx(
        sum(a == b for a, b in pairs) / 12)
    assert kappa["cohen_kappa"] == cohen_kappa([a for a, _ in pairs], [b for _, b in pairs])
    (area,) = pooled("confidence", "aurc")
    assert area["examples"] == 12
    by = pooled("by-type", "by_type")
    assert sum(x["examples"] for x in by if x["model"] == "distilgpt2") == 12


def test_a_study_compared_on_a_file_is_averaged_per_line(study, tmp_path):
    """`analyze models --study 1 --source FILE`: every fold's models compared on the same 5 lines, so
    the pooled row counts each line once, its accuracy is the mean of the folds' and sits inside an
    interval bootstrapped over lines; the held-out folds stay what --study alone pools."""
    from wmg.data import bundled_data

    db = str(tmp_path / "results.db")
    with sqlite3.connect(study[0]) as src, sqlite3.connect(db) as dst:  # a copy, WAL included
        src.backup(dst)
    ext = tmp_path / "elsewhere.jsonl"
    ext.write_text("".join(bundled_data().read_text().splitlines(keepends=True)[:5]))
    for (rid,) in q(db, "SELECT id FROM runs ORDER BY id"):
        r = invoke("compare", "--run-id", rid, "--db", db, "--data", ext, "--max-new-tokens", 16, "--no-progress",
                   "--no-show-examples", "--report", tmp_path / f"report{rid}.json")
        assert r.exit_code == 0, r.output
    assert all(100 < p < 24_000 for (p,) in q(db, "SELECT peak_rss_mb FROM evaluations WHERE source = ?", str(ext)))
    r = invoke("analyze", "models", "--study", 1, "--source", ext, "--db", db, "--format", "json")
    assert r.exit_code == 0, r.output
    out = by_table(json.loads(r.stdout))
    pooled = {(x["instruction_form"], x["system"]): x for x in out["study"]}
    per_fold = {m: [a for (a,) in q(db, "SELECT AVG(p.matches_gold) FROM predictions p JOIN evaluations e ON "
                                       "e.id = p.evaluation_id WHERE e.source = ? AND p.model = ? GROUP BY e.id",
                                    str(ext), m)] for m in ("flan-t5-small", "distilgpt2")}
    per_fold["tfidf-logreg"] = [a for (a,) in q(db, "SELECT AVG(b.matches_gold) FROM baseline_predictions b JOIN "
                                                   "evaluations e ON e.id = b.evaluation_id WHERE e.source = ? AND "
                                                   "b.baseline = 'tfidf-logreg' GROUP BY e.id", str(ext))]
    for system, rates in per_fold.items():
        row = pooled[("all", system)]
        assert len(rates) == 3 and row["examples"] == 5 and row["folds_done"] == 3, system
        assert row["gold_accuracy"] == pytest.approx(sum(rates) / 3) == pytest.approx(row["fold_mean"])
        assert row["gold_accuracy_low"] <= row["gold_accuracy"] <= row["gold_accuracy_high"]
    assert sum(per_fold["tfidf-logreg"]) > 0  # a figure that can be wrong, not only zeros
    assert {x["examples"] for x in out["study_pairs"]} == {5} and all(x["mcnemar_p"] is None for x in out["study_pairs"])
    assert len({x["evaluation_id"] for x in out["models"]}) == 3  # each fold's comparison on the file, as ever
    r = invoke("analyze", "models", "--study", 1, "--db", db, "--format", "json", "--table", "study")
    assert {x["examples"] for x in json.loads(r.stdout) if x["instruction_form"] == "all"} == {12}
    # the same file named another way (here a copy elsewhere) is found by its content
    twin = tmp_path / "another-folder" / "same-lines.jsonl"
    twin.parent.mkdir()
    twin.write_bytes(ext.read_bytes())
    r = invoke("analyze", "models", "--study", 1, "--source", twin, "--db", db, "--format", "json", "--table", "study")
    assert r.exit_code == 0, r.output
    again = {(x["instruction_form"], x["system"]): x for x in json.loads(r.stdout)}
    assert {k: (x["examples"], x["folds_done"], x["gold_accuracy"]) for k, x in again.items()} == \
        {k: (x["examples"], x["folds_done"], x["gold_accuracy"]) for k, x in pooled.items()}
    twin.write_text(twin.read_text().replace("gadget", "widget", 1))  # other content: no longer the same file
    r = invoke("analyze", "models", "--study", 1, "--source", twin, "--db", db)
    assert r.exit_code == 1 and "has a comparison on" in r.output
    r = invoke("analyze", "models", "--study", 1, "--source", "other.jsonl", "--db", db)
    assert r.exit_code == 1 and "no run of study 1 has a comparison on other.jsonl" in r.output
    assert str(ext) in r.output and "Traceback" not in r.output
