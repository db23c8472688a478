"""Every figure of `wmg analyze` against values worked out by hand (see analysis_fixture.py), on a
SQLite store and on a PostgreSQL one."""
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect

from conftest import BACKENDS, is_pg, sql
from tests.analysis_fixture import AR, CF, CO, IO, RW, TS, build
from wmg.cli import main


@pytest.fixture(scope="module", params=BACKENDS)
def store(request, new_store):
    db = new_store(request.param)
    (r1, e1), (r2, e2) = build(db)
    assert (r1, e1, r2, e2) == (1, 1, 2, 2)
    return db


def run_json(db, *args):
    """An analysis as JSON: flat records, grouped here by their `table` field."""
    r = CliRunner().invoke(main, ["analyze", *args, "--db", db, "--format", "json"])
    assert r.exit_code == 0, r.output
    tables: dict[str, list[dict]] = {}
    for rec in json.loads(r.output):
        assert all(not isinstance(v, (dict, list)) for v in rec.values()), rec  # flat
        tables.setdefault(rec.pop("table", "only"), []).append(rec)
    return tables


def rows(table, **match):
    return [r for r in table if all(r[k] == v for k, v in match.items())]


def test_agreement_kappas(store):
    t = run_json(store, "agreement", "--run-id", "1", "--run-id", "2")
    pairs = rows(t["pairwise"], instruction_form="all")
    # run 1: po = 1/4; pe = (1/4)(1/4) for readwrite only -> kappa = (0.25 - 0.0625) / 0.9375 = 0.2
    (p,) = rows(pairs, run_id=1)
    assert (p["model_a"], p["model_b"]) == ("m1", "m2")
    assert p["observed_agreement"] == pytest.approx(0.25)
    assert p["full_agreement"] == pytest.approx(0.25)
    assert p["expected_agreement"] == pytest.approx(0.0625)
    assert p["cohen_kappa"] == pytest.approx(0.2)
    # run 2: a-b 0.28/0.88, a-c 0.24/0.84, b-c 0.16/0.76
    got = {(r["model_a"], r["model_b"]): r["cohen_kappa"] for r in rows(pairs, run_id=2)}
    assert got == pytest.approx({("a", "b"): 0.28 / 0.88, ("a", "c"): 0.24 / 0.84, ("b", "c"): 0.16 / 0.76})
    fleiss = rows(t["all_models"], instruction_form="all")
    (f1,) = rows(fleiss, run_id=1)
    assert f1["fleiss_kappa"] == pytest.approx((0.25 - 0.1875) / 0.8125)
    assert f1["full_agreement"] == pytest.approx(0.25)
    (f2,) = rows(fleiss, run_id=2)
    assert f2["observed_agreement"] == pytest.approx(0.4)
    assert f2["expected_agreement"] == pytest.approx(47 / 225)
    assert f2["fleiss_kappa"] == pytest.approx(43 / 178)
    assert f2["full_agreement"] == pytest.approx(0.2) and f2["models"] == 3
    # the SQL views give the same figures as the Python that resamples them
    view = dict(((r[0], r[1], r[2]), r[3]) for r in sql(
        store, "SELECT run_id, model_a, model_b, cohen_kappa FROM pairwise_agreement"))
    fview = dict(sql(store, "SELECT run_id, fleiss_kappa FROM fleiss_kappa"))
    assert {(r["run_id"], r["model_a"], r["model_b"]): r["cohen_kappa"] for r in pairs} == pytest.approx(view)
    assert {r["run_id"]: r["fleiss_kappa"] for r in fleiss} == pytest.approx(fview)
    for r in pairs + fleiss:  # a bootstrap interval around each kappa
        k = "cohen_kappa" if "model_a" in r else "fleiss_kappa"
        assert r[k + "_low"] <= r[k] + 1e-9 and r[k] - 1e-9 <= r[k + "_high"]
    # per instruction form: the forms partition the examples
    for run in (1, 2):
        per_form = [r for r in rows(t["all_models"], run_id=run) if r["instruction_form"] != "all"]
        assert sum(r["examples"] for r in per_form) == rows(fleiss, run_id=run)[0]["examples"]


def test_vote_and_tie_rule(store):
    r = CliRunner().invoke(main, ["analyze", "vote", "--all-runs", "--db", store])
    assert r.exit_code == 0
    assert "a tie goes to the type of the model listed first" in r.output
    every = run_json(store, "vote", "--all-runs")["only"]
    t = rows(every, instruction_form="all")
    acc = {(x["run_id"], x["model"]): x["accuracy"] for x in t}
    # the view's figures, computed again per form in Python
    assert dict(((r[0], r[1]), r[2]) for r in sql(store, "SELECT run_id, model, accuracy FROM vote")) \
        == pytest.approx(acc)
    for run, model in acc:  # the forms partition the examples
        parts = [x for x in rows(every, run_id=run, model=model) if x["instruction_form"] != "all"]
        whole = rows(t, run_id=run, model=model)[0]
        assert sum(x["examples"] for x in parts) == whole["examples"]
        assert sum(x["accuracy"] * x["examples"] for x in parts) == pytest.approx(whole["accuracy"] * whole["examples"])
    assert acc == pytest.approx({(1, "m1"): 0.75, (1, "m2"): 0.5, (1, "(majority vote)"): 0.75,
                                 (2, "a"): 0.6, (2, "b"): 0.6, (2, "c"): 0.8, (2, "(majority vote)"): 0.8})
    # run 1: three 1-1 ties, each settled for m1; run 2: one three-way split (settled for b, wrong)
    assert rows(t, run_id=1, model="(majority vote)")[0]["ties_or_no_majority"] == 3
    assert rows(t, run_id=2, model="(majority vote)")[0]["ties_or_no_majority"] == 1
    assert rows(t, run_id=2, model="(majority vote)")[0]["vote_gain"] == pytest.approx(0.0)
    assert rows(t, run_id=2, model="a")[0]["vote_gain"] == pytest.approx(0.2)


def test_confidence_and_aurc(store):
    t = run_json(store, "confidence", "--run-id", "1", "--run-id", "2")
    conf = t["confidence"]
    r = rows(conf, run_id=1, model="m2")[0]
    assert (r["agree_examples"], r["accuracy_when_all_agree"]) == (1, 1.0)
    assert (r["disagree_examples"], r["accuracy_when_not"]) == (3, pytest.approx(1 / 3))
    assert rows(conf, run_id=1, model="(majority vote)")[0]["accuracy_when_not"] == pytest.approx(2 / 3)
    curve = t["risk_coverage"]
    assert [(p["coverage"], p["risk"]) for p in rows(curve, run_id=1)] == [(0.25, 0.0), (1.0, 0.25)]
    flat = [v for p in rows(curve, run_id=2) for v in (p["agreement_level"], p["coverage"], p["risk"])]
    assert flat == pytest.approx([1.0, 0.2, 0.0, 2 / 3, 0.8, 0.0, 1 / 3, 1.0, 0.2], abs=1e-6)
    area = {x["run_id"]: x["aurc"] for x in rows(t["aurc"], instruction_form="all")}
    # the Python that resamples it gives the view's figure
    assert dict(sql(store, "SELECT run_id, aurc FROM aurc")) == pytest.approx(area)
    assert all(x["aurc_low"] <= x["aurc"] + 1e-9 and x["aurc"] - 1e-9 <= x["aurc_high"] for x in t["aurc"])
    assert area == pytest.approx({1: 0.25 * 0.75, 2: 0.2 * 0.2})


def test_by_type_and_confusion(store):
    t = run_json(store, "by-type", "--run-id", "1")
    by = rows(t["by_type"], instruction_form="all")
    got = {(r["gold_type"], r["model"]): (r["examples"], r["accuracy"], r["disagreement_rate"]) for r in by}
    # the view's figures, computed again per form in Python
    view = {(r[0], r[1]): (r[2], r[3], r[4]) for r in sql(
        store, "SELECT gold_type, model, examples, accuracy, disagreement_rate FROM error_by_type WHERE run_id = 1")}
    assert got == view
    assert got == {(RW, "m1"): (1, 1.0, 0.0), (RW, "m2"): (1, 1.0, 0.0), (AR, "m1"): (1, 1.0, 1.0),
                   (AR, "m2"): (1, 0.0, 1.0), (CF, "m1"): (1, 0.0, 1.0), (CF, "m2"): (1, 1.0, 1.0),
                   (IO, "m1"): (1, 1.0, 1.0), (IO, "m2"): (1, 0.0, 1.0)}
    cm = {(r["gold_label"], r["predicted_label"]): r["n"] for r in rows(t["confusion"], model="m1")}
    assert cm[(CF, TS)] == 1 and cm[(CF, CF)] == 0
    cm3 = {(r["gold_label"], r["predicted_label"]): r["n"]
           for r in rows(run_json(store, "by-type", "--run-id", "2")["confusion"], model="a")}
    assert cm3[(CF, "(other)")] == 1  # model a produced no type


def test_models(store):
    tables = run_json(store, "models", "--run-id", "2")
    t = tables["models"]
    # a: right on examples 0, 2, 3; b: 0, 1, 3; c: 0, 1, 2, 4 (see analysis_fixture.build)
    pairs = {(p["model_a"], p["model_b"]): p for p in tables["pairs"]}
    assert [(k, p["only_a_right"], p["only_b_right"]) for k, p in pairs.items()] == [
        (("a", "b"), 1, 1), (("a", "c"), 1, 2), (("b", "c"), 1, 2)]
    assert pairs[("a", "c")]["difference"] == pytest.approx(-0.2) and pairs[("a", "b")]["mcnemar_p"] == 1.0
    assert pairs[("a", "c")]["difference_low"] <= -0.2 <= pairs[("a", "c")]["difference_high"]
    assert [(f["instruction_form"], f["model"], f["examples"], f["gold_accuracy"]) for f in tables["by_form"]] == [
        ("open", "a", 5, 0.6), ("open", "b", 5, 0.6), ("open", "c", 5, 0.8)]
    assert all(r["gold_accuracy_low"] < r["gold_accuracy"] < r["gold_accuracy_high"] for r in t)
    got = {r["model"]: (r["format_accuracy"], r["gold_accuracy"], r["parameters"], r["train_seconds"])
           for r in t}
    assert got == {"a": (0.8, 0.6, 1000, 10.0), "b": (1.0, 0.6, 2000, 20.0), "c": (1.0, 0.8, 3000, 30.0)}
    # ROUGE was not stored by the fixture: computed on demand and now stored
    assert all(0 <= r["rouge1_f1"] <= 1 and 0 <= r["rougeL_f1"] <= 1 for r in t)
    assert sql(store, "SELECT COUNT(*) FROM predictions WHERE evaluation_id = 2 AND rouge1_f1 IS NULL") == [(0,)]
    # an exact copy of the gold output scores 1.0
    (perfect,) = sql(store, "SELECT p.rouge1_f1, p.rouge_l_f1 FROM predictions p "
                            "JOIN examples x ON x.id = p.example_id "
                            "WHERE p.raw_text = x.gold_output AND p.evaluation_id = 2 LIMIT 1")
    assert perfect == (pytest.approx(1.0), pytest.approx(1.0))


def test_disagreements_and_correlations(store):
    t = run_json(store, "disagreements", "--run-id", "1")
    main_t = t["disagreements"]
    assert [r["example"] for r in main_t] == [1, 1, 2, 2, 3, 3]  # one record per example and model
    assert rows(main_t, example=2, model="m1")[0]["gadget_type"] == TS
    assert rows(main_t, example=2, model="m2")[0]["normalized_type"] == "controlflow"
    corr = t["length"][0]
    # d = [0,1,1,1], words = [10,20,30,40]: r = 15 / sqrt(0.75 * 500)
    assert corr["point_biserial_r"] == pytest.approx(15 / (0.75 * 500) ** 0.5)
    forms = {r["form"]: r for r in t["by_form"]}
    assert forms["category"]["disagreement_rate"] == 0.5 and forms["open"]["disagreement_rate"] == 1.0
    assert forms["open"]["fisher_p_category_vs_open"] == pytest.approx(1.0)  # 1/2 vs 2/2: not significant


def test_runs_shows_what_differs(store):
    r = CliRunner().invoke(main, ["analyze", "runs", "--db", store, "--format", "json"])
    assert r.exit_code == 0
    t = json.loads(r.output)
    assert {"examples", "epochs", "models"} <= set(t[0]) and "seed" not in t[0]
    assert [(x["run_id"], x["model"]) for x in t] == [(1, "m1"), (1, "m2"), (2, "a"), (2, "b"), (2, "c")]
    r1, r2 = t[0], t[-1]
    assert (r1["examples"], r1["epochs"], r1["agreement_rate"], r1["gold_accuracy"]) == (7, 3, 0.25, 0.75)
    assert (r2["examples"], r2["epochs"], r2["agreement_rate"], r2["gold_accuracy"]) == (8, 5, 0.2, 0.8)
    r = CliRunner().invoke(main, ["analyze", "runs", "--db", store, "--format", "csv"])
    assert r.exit_code == 0 and r.output.splitlines()[0].startswith("run_id,status,")


def test_plots_are_png(store, tmp_path):
    r = CliRunner().invoke(main, ["plot", "--run-id", "1", "--run-id", "2", "--db", store, "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["run1_loss_curves.png", "run1_eval1_label_accuracy.png", "run1_eval1_form_accuracy.png",
                            "run2_eval2_form_accuracy.png", "run1_eval1_confusion_m1.png",
                            "run1_eval1_confusion_m2.png", "run2_loss_curves.png", "run2_eval2_label_accuracy.png",
                            "run2_eval2_confusion_a.png", "run2_eval2_confusion_b.png", "run2_eval2_confusion_c.png",
                            "runs_trend.png"])
    for p in tmp_path.iterdir():
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_bad_selections(store, new_store):
    from wmg.store import Store

    def err(*args, db=store):
        r = CliRunner().invoke(main, ["analyze", *args, "--db", db])
        assert r.exit_code != 0 and r.exception is None or isinstance(r.exception, SystemExit)
        lines = [l for l in r.output.splitlines() if l.startswith("Error")]
        assert len(lines) == 1, r.output
        return lines[0]

    assert "no run with id 9" in err("vote", "--run-id", "9")
    assert "nothing selected" in err("vote")
    backend = "postgresql" if is_pg(store) else "sqlite"
    empty = new_store(backend)  # an empty selection is an empty result, not an error
    r = CliRunner().invoke(main, ["analyze", "agreement", "--all-runs", "--db", empty, "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.output) == []
    # a run with no comparison, and one whose latest comparison failed
    from tests.analysis_fixture import Spec
    from wmg.data import Example

    db = new_store(backend)
    fresh = Store(db)
    rid, _ = fresh.create_run(data_path="d", data_sha256="0" * 64, examples_requested=None, eval_split=0.5,
                              seed=1, init_requested="scratch", device="cpu", platform="unix", config={},
                              versions={}, models=[(Spec("m"), {})], train=[], validation=[Example(0, "i", "x", "o")])
    assert "has no comparison yet" in err("models", "--run-id", str(rid), db=db)
    eid, _ = fresh.create_evaluation(rid, "validation", {})
    fresh.fail_evaluation(eid, "RuntimeError: out of memory")
    assert "failed: RuntimeError: out of memory" in err("models", "--run-id", str(rid), db=db)
    assert "not a run id" in err("models", "--run-id", "x")


def test_readme_queries_run(store, new_store):
    """The README's sqlite3 queries, and the same text in psql on a PostgreSQL store."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Querying results.db", 1)[1].split("\n## ", 1)[0]
    queries = re.findall(r'sqlite3[^"]*"(.*?)"', section, re.S)
    assert len(queries) >= 7
    copy = new_store("postgresql" if is_pg(store) else "sqlite")  # the study query needs a study
    build(copy)
    r = CliRunner().invoke(main, ["judge", "--run-id", "2", "--judge", "rules", "--db", copy, "--no-progress"])
    assert r.exit_code == 0, r.output
    from sqlalchemy import create_engine, text

    from wmg.store.session import db_url

    engine = create_engine(db_url(copy))
    with engine.begin() as conn:  # both runs as the study's two folds
        conn.execute(text("INSERT INTO studies (id, created_at, data_path, data_sha256, folds, seeds_json, "
                          "config_json) VALUES (1, '2026-11-28', 'd.jsonl', 'x', 2, '[42]', '{}')"))
        conn.execute(text("UPDATE runs SET study_id = 1, fold = id, seed = 42"))
    engine.dispose()
    for query in queries:
        assert sql(copy, query), query  # every query answers on the test store


def test_agreement_rates_mean_the_same_in_both_tables(any_db):
    """Regression: `raw_agreement` was 1.0 in the pairwise table and 0.0 in the all-models table of the
    same two-model run where neither model produced a type. Now both tables carry both rates."""
    from tests.analysis_fixture import make_run
    from wmg.store import Store

    db = any_db
    make_run(db, ["m1", "m2"], [RW, AR], [(None, None), (RW, RW)], words=[10, 20], forms=["open", "open"])
    t = run_json(db, "agreement", "--run-id", "1")
    (p,), (f,) = rows(t["pairwise"], instruction_form="all"), rows(t["all_models"], instruction_form="all")
    assert [r["instruction_form"] for r in t["pairwise"]] == ["all", "open"]
    assert p["full_agreement"] == f["full_agreement"] == 0.5  # only the second example: the same non-empty type
    assert p["observed_agreement"] == f["observed_agreement"] == 1.0  # two empty types count as equal
    cols = lambda v: [c["name"] for c in inspect(Store(db).engine()).get_columns(v)]  # noqa: E731
    assert "full_agreement" in cols("pairwise_agreement") and "full_agreement" in cols("fleiss_kappa")
    assert "raw_agreement" not in cols("pairwise_agreement") + cols("fleiss_kappa")
