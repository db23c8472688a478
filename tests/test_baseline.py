"""The reference baselines: deterministic, fitted on the training split only, and kept out of the
models' agreement."""
import json
import sqlite3

from click.testing import CliRunner

from tests.analysis_fixture import AR, CF, RW, TS, out
from wmg.baseline import BASELINES, fit_predict
from wmg.cli import main
from wmg.data import Example, load_jsonl

KEYWORDS = {RW: "tag write read copy", AR: "add multiply compute sum", CF: "jump branch label call",
            TS: "timer delay scan wait"}


def toy(n_per_label, offset=0):
    return [Example(offset + i * 10 + k, "Identify any weird machine gadget in the excerpt.",
                    f"The rung uses {words} on step {i}.", out(label))
            for i in range(n_per_label) for k, (label, words) in enumerate(KEYWORDS.items())]


def test_tfidf_learns_keywords_and_majority_takes_the_first_of_a_tie():
    train, test = toy(5), toy(2, offset=1000)
    got = fit_predict(train, test, seed=1)
    assert list(got) == list(BASELINES)
    assert got["tfidf-logreg"] == [gold.output.split(";")[0].split(": ")[1] for gold in test]
    assert set(got["majority-class"]) == {sorted(KEYWORDS)[0]}  # four labels tied: alphabetical first


def test_baseline_is_reproducible_for_a_seed(small_data):
    ex = load_jsonl(small_data)
    a = fit_predict(ex[:8], ex[8:], seed=3)
    b = fit_predict(ex[:8], ex[8:], seed=3)
    assert a == b and len(a["tfidf-logreg"]) == 4


def test_baselines_are_stored_apart_and_never_enter_the_agreement(tmp_path, small_data):
    db = str(tmp_path / "r.db")
    r = CliRunner().invoke(main, ["train", "--tiny", "--epochs", "1", "--batch-size", "4", "--eval-split", "0.25",
                                  "--data", small_data, "--db", db, "--checkpoints", str(tmp_path / "ck"),
                                  "--report", str(tmp_path / "r.json"), "--max-new-tokens", "8", "--platform",
                                  "windows", "--no-progress", "--quiet", "--format", "json"])
    assert r.exit_code == 0, r.output
    with sqlite3.connect(db) as c:
        q = lambda sql: c.execute(sql).fetchall()  # noqa: E731
        assert q("SELECT COUNT(*), COUNT(DISTINCT model) FROM predictions") == [(6, 2)]  # 3 examples x 2 models
        assert q("SELECT baseline, COUNT(*) FROM baseline_predictions GROUP BY baseline ORDER BY baseline") == [
            ("majority-class", 3), ("tfidf-logreg", 3)]
        assert q("SELECT DISTINCT n_models FROM agreements") == [(2,)]
        assert q("SELECT model_a, model_b FROM pairwise_agreement") == [("flan-t5-small", "distilgpt2")]
        assert q("SELECT models FROM fleiss_kappa") == [(2,)]
        # fitted on the training split: the training examples are the run's own
        train = q("SELECT COUNT(*) FROM examples WHERE split = 'train'")[0][0]
    assert train == 9
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["summary"]["baseline_gold_type_accuracy"]) == set(BASELINES)
    assert set(report["results"][0]["baselines"]) == set(BASELINES)
    assert {x["model"] for x in json.loads(r.stdout) if x["init"] == "baseline"} == set(BASELINES)
    # beside the models in the analyses, with intervals; never in the agreement tables
    for cmd, table in (["models"], "models"), (["vote"], None), (["by-type", "--table", "by_type"], None):
        recs = json.loads(CliRunner().invoke(main, ["analyze", *cmd, "--run-id", "1", "--db", db,
                                                    "--format", "json"]).stdout)
        recs = [x for x in recs if table is None or x.get("table") == table]
        names = {x["model"] for x in recs}
        assert {"tfidf-logreg", "(baseline) tfidf-logreg"} & names, (cmd, names)
        assert all("_low" not in k or x[k] is None or x[k] <= x[k.replace("_low", "")] for x in recs for k in x)
    agreement = json.loads(CliRunner().invoke(main, ["analyze", "agreement", "--run-id", "1", "--db", db,
                                                     "--format", "json"]).stdout)
    assert not [x for x in agreement if "baseline" in json.dumps(x)]
    r = CliRunner().invoke(main, ["compare", "--run-id", "1", "--db", db, "--no-baseline", "--quiet",
                                  "--max-new-tokens", "8", "--report", str(tmp_path / "r2.json")])
    assert r.exit_code == 0, r.output
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM baseline_predictions WHERE evaluation_id = 2").fetchone() == (0,)
