"""The schema on both kinds of store: SQLite (a file) and PostgreSQL (the session's throwaway server)."""
import sqlite3

import pytest
from sqlalchemy import inspect

from conftest import is_pg, schema_drift, sql
from wmg.store import Store
from wmg.store.session import _ready, db_url

TABLES = {"runs", "run_models", "train_steps", "epoch_losses", "evaluations", "examples", "predictions", "agreements"}
VIEWS = {"error_by_type", "latest_evaluations", "disagreements", "disagreement_by_form", "model_comparison",
         "confidence", "risk_coverage", "aurc", "confusion", "vote", "pairwise_agreement", "fleiss_kappa",
         "run_summary", "semantic_agreement", "system_accuracy", "study_accuracy"}


def schema_dump(db):
    """Every table, view and index with its definition, as the store's own catalogue holds it."""
    if not is_pg(db):
        with sqlite3.connect(db) as conn:
            return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
    return sorted(sql(db, "SELECT 'column', table_name || '.' || column_name, data_type || ' ' || is_nullable "
                          "FROM information_schema.columns WHERE table_schema = 'public'")
                  + sql(db, "SELECT 'view', viewname, definition FROM pg_views WHERE schemaname = 'public'")
                  + sql(db, "SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
                  + sql(db, "SELECT 'constraint', conname, pg_get_constraintdef(oid) FROM pg_constraint "
                            "WHERE connamespace = 'public'::regnamespace"))


def test_migrations_create_schema_matching_models(any_db):
    store = Store(any_db)
    engine = store.engine()
    assert store.revision() == store.head() == "0012_checkpoint_averaging"
    assert store.dialect == ("postgresql" if is_pg(any_db) else "sqlite")
    names, views = set(inspect(engine).get_table_names()), set(inspect(engine).get_view_names())
    if not is_pg(any_db):
        with sqlite3.connect(any_db) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert TABLES <= names
    assert views == VIEWS
    assert schema_drift(any_db) == []
    for view in sorted(VIEWS):  # every view answers on an empty store
        assert sql(any_db, f"SELECT * FROM {view}") == []


def test_a_fresh_store_upgrades_one_revision_at_a_time(any_db):
    """Each revision applied alone, in order, from an empty store to head: the same schema as one upgrade."""
    from alembic.script import ScriptDirectory

    from wmg.store.session import _engine, alembic_config, upgrade_schema

    store = Store(any_db)
    url = store.url
    revisions = [r.revision for r in ScriptDirectory.from_config(alembic_config(url)).walk_revisions()][::-1]
    assert store.revision() is None
    for rev in revisions:
        upgrade_schema(_engine(url, not is_pg(any_db)), url, rev)
        assert store.revision() == rev
    assert schema_drift(any_db) == []
    assert set(inspect(store.engine()).get_view_names()) == VIEWS


def test_initialising_three_times_changes_nothing(any_db):
    Store(any_db).engine()
    first = schema_dump(any_db)
    assert first
    for _ in range(2):
        _ready.discard(db_url(any_db))
        Store(any_db).engine()
    assert schema_dump(any_db) == first


def test_foreign_keys_enforced(any_db):
    from sqlalchemy.exc import IntegrityError

    from wmg.store import schema as t
    with pytest.raises(IntegrityError):
        with Store(any_db).session() as s:
            s.add(t.TrainStep(run_model_id=999, step=1, epoch=0.1, loss=1.0, lr=1e-3, tokens=10))


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_a_postgresql_url_uses_psycopg(scheme):
    assert db_url(f"{scheme}://u@h/d") == "postgresql+psycopg://u@h/d"
    assert db_url("results.db") == "sqlite:///results.db" and db_url("sqlite:///x.db") == "sqlite:///x.db"


def test_a_postgresql_store_that_cannot_be_reached_is_one_line_without_its_password(pg_cluster):
    from wmg.store.session import StoreError

    url = pg_cluster.url("no_such_database").replace("wmg@", "wmg:secret@")
    with pytest.raises(StoreError) as err:
        Store(url).engine()
    message = str(err.value)
    assert "no_such_database" in message and "secret" not in message and "\n" not in message


def test_every_store_command_and_repository_call(any_db, tmp_path):
    """What the CLI and the pipeline do to a store, on each kind: list and show runs, upgrade, judge
    (and judge again with --replace), import and export labels, compare judges with them; a run whose
    process is gone is reaped, resumed, cut back to a checkpoint and finished; a study's fold is taken
    once."""
    import json

    from click.testing import CliRunner

    from tests.analysis_fixture import Spec, build
    from wmg.cli import main
    from wmg.data import Example
    from wmg.store import JudgmentSetInfo, StepRecord, StoreError

    db = any_db
    build(db)
    store = Store(db)

    def cli(*args):
        r = CliRunner().invoke(main, [*args, "--db", db])
        assert r.exit_code == 0, (args, r.output)
        return r.output

    listed = json.loads(cli("runs", "--format", "json"))
    assert [(r["run_id"], r["model"], r["status"]) for r in listed] == [
        (1, "m1", "completed"), (1, "m2", "completed"), (2, "a", "completed"), (2, "b", "completed"),
        (2, "c", "completed")]
    assert {r["gold_accuracy"] for r in listed if r["run_id"] == 1} == {0.75, 0.5}
    assert "m1" in cli("show", "--run-id", "1")
    cli("db", "upgrade")
    assert json.loads(cli("db", "current", "--format", "json"))[0]["revision"] == Store.head()
    cli("judge", "--run-id", "2", "--judge", "rules", "--no-progress")
    cli("judge", "--run-id", "2", "--judge", "rules", "--no-progress", "--replace")
    (js,) = store.judgment_sets(2)
    assert isinstance(js, JudgmentSetInfo) and (js.id, js.judge) == (2, "rules")  # ids never reused
    labels = tmp_path / "labels.csv"
    labels.write_text("position,label,note\n0,full,same\n1,disagreement,\n2,partial,close\n")
    assert "imported 3 labels" in cli("annotate", "--run-id", "2", "--annotator", "ann", "--import", str(labels))
    labels.write_text("position,label,note\n2,invalid,changed my mind\n")
    cli("annotate", "--run-id", "2", "--annotator", "ann", "--import", str(labels))  # an update, not a second row
    assert [(a.position, a.label) for a in store.annotations(2)] == [(0, "full"), (1, "disagreement"), (2, "invalid")]
    cli("annotate", "--run-id", "2", "--export", str(tmp_path / "out.csv"))
    assert (tmp_path / "out.csv").read_text().count("\n") == 4
    cli("judge", "--run-id", "2", "--compare-to", "manual")

    # a run whose process is gone: reaped, resumed, cut back to its checkpoint, finished
    rid, ids = store.create_run(data_path="d", data_sha256="0" * 64, examples_requested=None, eval_split=0.5,
                                seed=3, init_requested="scratch", device="cpu", platform="unix", config={}, versions={},
                                models=[(Spec("m"), {})], train=[Example(0, "i", "x", "o")],
                                validation=[Example(1, "i", "y", "o")], owner=("elsewhere", 1, 1))
    store.set_checkpoint_dir(rid, "/ck")
    steps = [type("S", (), dict(step=s, epoch=s / 4, loss=1.0 / s, lr=1e-3, tokens=5))() for s in (1, 2, 3, 4)]
    store.record_epoch(ids["m"], steps[:2], 1, 0.9, None)
    store.record_steps(ids["m"], steps[2:])
    assert store.reap_dead_runs(lambda host, pid, start: host != "elsewhere") == [rid]
    assert store.get_run(rid).status == "interrupted"
    store.restart_run(rid, ("here", 2, 2))
    assert store.reap_dead_runs(lambda host, pid, start: True) == []
    store.truncate_training(ids["m"], 2, 1)
    assert store.train_steps(ids["m"]) == [StepRecord(1, 0.25, 1.0, 1e-3), StepRecord(2, 0.5, 0.5, 1e-3)]
    store.finish_run(rid, "completed", None, 1.0)
    run = store.get_run(rid)
    assert (run.status, run.resumes, run.checkpoint_dir) == ("completed", 1, "/ck")
    assert [x.input for x in store.run_examples(rid, "validation")] == ["y"]
    eid, _ = store.create_evaluation(rid, "validation", {})
    store.fail_evaluation(eid, "boom")
    assert store.get_evaluation(eid).status == "failed"

    sid = store.create_study(data_path="d", data_sha256="0" * 64, folds=2, seeds=[1], config={})
    kw = dict(data_path="d", data_sha256="0" * 64, examples_requested=None, eval_split=0.5, seed=1,
              init_requested="scratch", device="cpu", platform="unix", config={}, versions={},
              models=[(Spec("m"), {})], train=[], validation=[Example(0, "i", "x", "o")], study_id=sid, fold=1)
    store.create_run(**kw)
    with pytest.raises(StoreError, match="already has a run for fold 1"):
        store.create_run(**kw)
    assert [r.fold for r in store.get_study(sid).runs] == [1]
    assert store.count_rows("runs") == 4 and len(store.list_runs()) == 4


@pytest.mark.parametrize("require", ["", "1"])
def test_without_postgresql_its_tests_skip_with_the_reason_or_fail_when_required(tmp_path, require):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, WMG_PG_BIN=str(tmp_path), WMG_REQUIRE_PG=require)
    r = subprocess.run([sys.executable, "-m", "pytest", "-ra", "-q", "-p", "no:cacheprovider",
                        f"{__file__}::test_foreign_keys_enforced"], cwd=Path(__file__).parents[1], env=env,
                       capture_output=True, text=True, timeout=300)
    if require:
        assert r.returncode != 0 and "1 passed, 1 error" in r.stdout, r.stdout[-3000:]
        assert "PostgreSQL tests required (WMG_REQUIRE_PG=1) but no initdb" in r.stdout
    else:
        assert r.returncode == 0 and "1 passed, 1 skipped" in r.stdout, r.stdout[-3000:]
        assert "SKIPPED" in r.stdout and "PostgreSQL not available: no initdb" in r.stdout


def test_a_row_lock_held_too_long_is_one_clear_line_on_postgresql(pg_cluster, monkeypatch):
    """PostgreSQL's counterpart of test_lock_held_too_long_is_one_clear_line (SQLite): another process
    holds a run's row lock past the busy timeout (lock_timeout) and every retry: one line, nothing written."""
    import psycopg

    import wmg.store.session as session
    from tests.analysis_fixture import build
    from wmg.store import StoreError

    db = pg_cluster.new_database()
    build(db)
    store = Store(db)
    monkeypatch.setattr(session, "LOCK_RETRIES", 2)
    monkeypatch.setattr(session, "BUSY_TIMEOUT_MS", 200)
    session._engine.cache_clear()
    from sqlalchemy import make_url

    dbname = make_url(db).database
    try:
        with psycopg.connect(host=str(pg_cluster.root), user="wmg", dbname=dbname) as holder:
            holder.execute("SELECT id FROM runs WHERE id = 1 FOR UPDATE")
            with pytest.raises(StoreError, match="locked by another process; gave up after 2 tries"):
                store.set_checkpoint_dir(1, "x")
            with pytest.raises(StoreError, match="locked by another process"):
                store.restart_run(1, ("h", 1, 1))
            holder.rollback()
        assert store.get_run(1).checkpoint_dir is None and store.get_run(1).status == "completed"
    finally:
        session._engine.cache_clear()


def test_a_studys_fold_is_taken_once_by_writers_racing_for_it(any_db):
    """Eight threads (each its own transaction) create the same fold of a study at the same instant:
    one gets it, the others are refused. On PostgreSQL the study's row lock (FOR UPDATE) orders them;
    without it, READ COMMITTED lets every one see the fold free."""
    import threading

    from tests.analysis_fixture import Spec
    from wmg.data import Example
    from wmg.store import StoreError

    sid = Store(any_db).create_study(data_path="d", data_sha256="0" * 64, folds=2, seeds=[1], config={})
    kw = dict(data_path="d", data_sha256="0" * 64, examples_requested=None, eval_split=0.5, seed=1,
              init_requested="scratch", device="cpu", platform="unix", config={}, versions={},
              models=[(Spec("m"), {})], train=[], validation=[Example(i, "i", "x", "o") for i in range(200)],
              study_id=sid, fold=2)
    start, results = threading.Barrier(8), []

    def take():
        start.wait()
        try:
            results.append(Store(any_db).create_run(**kw)[0])
        except StoreError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert len(results) == 8 and sum(isinstance(r, int) for r in results) == 1, results
    assert {r for r in results if isinstance(r, str)} == {f"study {sid} already has a run for fold 2, seed 1"}
    assert [r.fold for r in Store(any_db).get_study(sid).runs] == [2]


def test_only_the_store_opens_the_database():
    """Every reader and writer goes through `Store`: no module outside wmg/store builds an engine or
    a session, imports the session machinery, or runs SQL text of its own (analysis and judging ask
    `Store.query`)."""
    import re
    from pathlib import Path

    root = Path(__file__).parents[1] / "wmg"
    banned = re.compile(r"create_engine|sessionmaker|ready_engine|_engine\(|from sqlalchemy import .*\btext\b"
                        r"|store\.session import (?!StoreError|explain)|\.execute\(")
    found = [f"{p.relative_to(root)}:{n}: {line.strip()}" for p in sorted(root.rglob("*.py"))
             if "store" not in p.relative_to(root).parts[:1]
             for n, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert found == []
    assert (root / "store" / "repo.py").exists() is False  # the functions taking a URL string are gone


def test_store_methods_hand_back_records(any_db):
    """The typed records of a few reads (the rest are checked in test_every_store_command_and_repository_call)."""
    import dataclasses

    from tests.analysis_fixture import build
    from wmg.store import EvaluationInfo, ModelInfo, NewEvaluation, RunInfo

    build(any_db)
    store = Store(any_db)
    run = store.get_run(1)
    assert isinstance(run, RunInfo) and dataclasses.is_dataclass(run) and all(isinstance(m, ModelInfo) for m in run.models)
    assert isinstance(run.latest_evaluation, EvaluationInfo) and run.compared
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.status = "failed"
    ev = store.create_evaluation(1, "validation", {})
    assert isinstance(ev, NewEvaluation) and ev.id == 3 and [x.position for x in ev.examples] == [0, 1, 2, 3]
    assert repr(Store("postgresql://alice:secret@h/d")) == "Store('postgresql+psycopg://alice:***@h/d')"
