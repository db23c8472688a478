"""The schema on both kinds of store: SQLite (a file) and PostgreSQL (the session's throwaway server)."""
import sqlite3

import pytest
from sqlalchemy import inspect

from conftest import is_pg, schema_drift, sql
from wmg.store.session import _ready, current_revision, db_url, get_engine, head_revision

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
    engine = get_engine(any_db)
    assert current_revision(any_db) == head_revision() == "0009_chosen_epoch"
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

    url = db_url(any_db)
    revisions = [r.revision for r in ScriptDirectory.from_config(alembic_config(url)).walk_revisions()][::-1]
    assert current_revision(any_db) is None
    for rev in revisions:
        upgrade_schema(_engine(url, not is_pg(any_db)), url, rev)
        assert current_revision(any_db) == rev
    assert schema_drift(any_db) == []
    assert set(inspect(get_engine(any_db)).get_view_names()) == VIEWS


def test_initialising_three_times_changes_nothing(any_db):
    get_engine(any_db)
    first = schema_dump(any_db)
    assert first
    for _ in range(2):
        _ready.discard(db_url(any_db))
        get_engine(any_db)
    assert schema_dump(any_db) == first


def test_foreign_keys_enforced(any_db):
    from sqlalchemy.exc import IntegrityError

    from wmg.store import schema as t
    from wmg.store.session import session_scope

    with pytest.raises(IntegrityError):
        with session_scope(any_db) as s:
            s.add(t.TrainStep(run_model_id=999, step=1, epoch=0.1, loss=1.0, lr=1e-3, tokens=10))


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_a_postgresql_url_uses_psycopg(scheme):
    assert db_url(f"{scheme}://u@h/d") == "postgresql+psycopg://u@h/d"
    assert db_url("results.db") == "sqlite:///results.db" and db_url("sqlite:///x.db") == "sqlite:///x.db"


def test_a_postgresql_store_that_cannot_be_reached_is_one_line_without_its_password(pg_cluster):
    from wmg.store.session import StoreError

    url = pg_cluster.url("no_such_database").replace("wmg@", "wmg:secret@")
    with pytest.raises(StoreError) as err:
        get_engine(url)
    message = str(err.value)
    assert "no_such_database" in message and "secret" not in message and "\n" not in message
