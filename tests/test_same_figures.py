"""The same runs stored in SQLite and in PostgreSQL give the same `wmg analyze` figures, to the bit.

Both stores are written through the store's own write path (tests/analysis_fixture.py): the two
runs of the analysis tests, a two-fold study with reference baselines, and a rules judge's verdicts.
Then every `wmg analyze` subcommand's JSON output is compared between them. The PostgreSQL database
sorts text by English rules (ICU en-US: case and punctuation count less than in SQLite's bytewise
order), and the study's models are named so that the two orders differ.
"""
import json

import pytest
from click.testing import CliRunner

from tests.analysis_fixture import AR, CF, CO, IO, RW, TS, build, make_run
from wmg.cli import main
from wmg.store import Store

SELECTIONS = [["--all-runs"], ["--run-id", "1", "--run-id", "2"], ["--study", "1"], ["--evaluation-id", "3"]]
COMMANDS = ["agreement", "by-type", "confidence", "disagreements", "models", "vote"]
STUDY_MODELS = ["beta", "Zeta", "(c)"]  # bytewise (SQLite): (c) < Zeta < beta; en-US: (c) < beta < Zeta


def fill(db):
    build(db)
    sid = Store(db).create_study(data_path="fixture.jsonl", data_sha256="0" * 64, folds=2, seeds=[7], config={})
    make_run(db, STUDY_MODELS, [RW, AR, CF, IO], [(RW, RW, AR), (AR, CF, AR), (TS, CF, CF), (IO, IO, None)],
             words=[12, 5, 33, 8], forms=["open", "category", "paraphrase", "open"], seed=7, study_id=sid, fold=1,
             baselines={"tfidf-logreg": [RW, AR, AR, IO], "majority-class": [RW, RW, RW, RW]})
    make_run(db, STUDY_MODELS, [TS, CO, RW], [(TS, CO, TS), (CO, CO, CO), (RW, AR, None)],
             words=[41, 17, 9], forms=["open", "open", "category"], seed=7, study_id=sid, fold=2,
             baselines={"tfidf-logreg": [TS, RW, RW], "majority-class": [RW, RW, RW]})
    r = CliRunner().invoke(main, ["judge", "--run-id", "2", "--judge", "rules", "--db", db, "--no-progress"])
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def stores(new_store, pg_cluster):
    import psycopg

    try:
        postgresql = pg_cluster.new_database(icu_locale="en-US")
    except psycopg.Error:  # a server built without ICU: its bytewise order, then
        postgresql = pg_cluster.new_database()
    sqlite = new_store("sqlite")
    for db in (sqlite, postgresql):
        fill(db)
    return sqlite, postgresql


def analyze(db, *args):
    r = CliRunner().invoke(main, ["analyze", *args, "--db", db, "--format", "json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("selection", SELECTIONS, ids=lambda s: "_".join(s).replace("--", ""))
def test_every_analysis_is_identical_in_sqlite_and_postgresql(stores, command, selection):
    sqlite, postgresql = stores
    got = analyze(sqlite, command, *selection)
    assert got  # something to compare
    assert analyze(postgresql, command, *selection) == got


def test_the_runs_table_is_identical_in_sqlite_and_postgresql(stores):
    sqlite, postgresql = stores
    got = analyze(sqlite, "runs")
    assert len({r["run_id"] for r in got}) == 4
    assert analyze(postgresql, "runs") == got


def test_every_view_gives_the_same_rows_in_sqlite_and_postgresql(stores):
    """The views themselves (what `sqlite3 results.db` or `psql` answers), row for row: integers and
    text identical, a mean of non-integer floats to 1e-12 (the two engines add floats up differently:
    SQLite compensates the rounding of its sums, PostgreSQL does not; e.g. 0.39999999999999997 and 0.4)."""
    from tests.test_store import VIEWS

    def rows(db, view):  # through Store.query, which hands back every dialect's values in SQLite's forms
        return sorted((tuple(r.values()) for r in Store(db).query(f"SELECT * FROM {view}")), key=repr)

    sqlite, postgresql = stores
    for view in sorted(VIEWS - {"latest_evaluations", "run_summary"}):  # those two carry timestamps
        got, want = rows(postgresql, view), rows(sqlite, view)
        assert [tuple(type(v) for v in r) for r in got] == [tuple(type(v) for v in r) for r in want], view
        assert got == [tuple(pytest.approx(v, rel=1e-12) if isinstance(v, float) else v for v in r)
                       for r in want], view
