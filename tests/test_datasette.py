"""results.db in Datasette: every canned query of the shipped metadata runs through Datasette's
own test client on a store with known rows (tests/analysis_fixture.py)."""
import asyncio
import json

import pytest
from click.testing import CliRunner

from tests.analysis_fixture import build
from wmg.browse import METADATA, metadata_for
from wmg.cli import main

from datasette import app as datasette_app  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    db = tmp_path_factory.mktemp("ds") / "study.db"
    assert build(str(db)) == ((1, 1), (2, 2))
    return db


def canned(db, name, **params):
    """Rows of one canned query, as Datasette serves them (?_shape=array)."""
    async def fetch():
        ds = datasette_app.Datasette([str(db)], metadata=metadata_for(db))
        await ds.invoke_startup()
        query = "&".join(f"{k}={v}" for k, v in params.items())
        r = await ds.client.get(f"/{db.stem}/{name}.json?_shape=array&{query}")
        assert r.status_code == 200, (name, r.text[:500])
        return r.json()
    return asyncio.run(fetch())


QUERIES = list(json.loads(METADATA.read_text())["databases"]["results"]["queries"])


def test_every_research_question_of_the_readme_is_a_canned_query():
    readme = (METADATA.parents[1] / "README.md").read_text()
    section = readme[readme.index("## Querying results.db"):readme.index("### PostgreSQL instead of a file")]
    views = {"error_by_type", "confusion", "disagreements", "disagreement_by_form", "model_comparison",
             "confidence", "risk_coverage", "aurc", "vote", "semantic_agreement", "judgments",
             "pairwise_agreement", "fleiss_kappa", "system_accuracy", "study_accuracy", "run_summary"}
    assert all(f"FROM {v}" in section for v in views)  # the README asks each of these
    sqls = [q["sql"] for q in json.loads(METADATA.read_text())["databases"]["results"]["queries"].values()]
    assert all(any(f"FROM {v} " in s or f"FROM {v}" == s[-len(v) - 5:] for s in sqls) for v in views)


@pytest.mark.parametrize("name", QUERIES)
def test_each_canned_query_runs_and_returns_its_rows(store, name):
    rows = canned(store, name)
    expected = {  # the newest evaluation is run 2's: 5 examples, models a, b, c, no judges, no study
        "semantic_agreement": 0, "judge_verdicts": 0, "study_pooled": 0,
    }
    if name in expected:
        assert len(rows) == expected[name]
    else:
        assert rows, name
    if name in ("error_by_type", "confusion", "agreement_as_confidence", "models_and_baselines", "disagreements"):
        assert {r["run_id"] for r in rows} == {2}  # the newest comparison by default


def test_canned_queries_take_their_parameters(store):
    by_model = {r["system"]: r["accuracy"] for r in canned(store, "models_and_baselines", evaluation_id=1)
                if r["instruction_form"] == "all"}
    assert by_model == {"m1": 0.75, "m2": 0.5}
    arch = canned(store, "architecture_comparison", run_id=2)
    assert sorted(r["model"] for r in arch) == ["a", "b", "c"]
    assert sorted((r["model"], r["gold_accuracy"]) for r in canned(store, "architecture_comparison", run_id=1)) == \
        [("m1", 0.75), ("m2", 0.5)]
    assert {r["run_id"] for r in canned(store, "majority_vote")} == {1, 2}


def test_wmg_datasette_writes_the_metadata_for_the_store(store, tmp_path):
    out = tmp_path / "meta.json"
    r = CliRunner().invoke(main, ["datasette", "--db", str(store), "--metadata", str(out)])
    assert r.exit_code == 0, r.output
    meta = json.loads(out.read_text())
    assert list(meta["databases"]) == ["study"] and set(meta["databases"]["study"]["queries"]) == set(QUERIES)


def test_wmg_datasette_refuses_what_it_cannot_serve(tmp_path):
    r = CliRunner().invoke(main, ["datasette", "--db", str(tmp_path / "none.db")])
    assert r.exit_code == 1 and "no results store at" in r.output
    r = CliRunner().invoke(main, ["datasette", "--db", "postgresql+psycopg://u@localhost/x"])
    assert r.exit_code == 1 and "Datasette serves SQLite files" in r.output
