import sqlite3

from conftest import schema_drift
from wmg.store.session import current_revision, get_engine, head_revision, _ready

TABLES = {"runs", "run_models", "train_steps", "epoch_losses", "evaluations", "examples", "predictions", "agreements"}


def schema_dump(path):
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))


def test_migrations_create_schema_matching_models(db):
    engine = get_engine(db)
    assert current_revision(db) == head_revision() == "0009_chosen_epoch"
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        views = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='view'")}
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert TABLES <= names
    assert "error_by_type" in views
    assert schema_drift(db) == []


def test_initialising_three_times_changes_nothing(db):
    get_engine(db)
    first = schema_dump(db)
    for _ in range(2):
        _ready.discard(f"sqlite:///{db}")
        get_engine(db)
    assert schema_dump(db) == first


def test_foreign_keys_enforced(db):
    import pytest
    from sqlalchemy.exc import IntegrityError

    from wmg.store import schema as t
    from wmg.store.session import session_scope

    with pytest.raises(IntegrityError):
        with session_scope(db) as s:
            s.add(t.TrainStep(run_model_id=999, step=1, epoch=0.1, loss=1.0, lr=1e-3, tokens=10))
