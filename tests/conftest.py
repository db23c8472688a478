import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = FIXTURES / "gadgets_small.jsonl"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub


@pytest.fixture
def db(tmp_path):
    """A fresh results store in a temporary folder."""
    return str(tmp_path / "results.db")


# ---------------------------------------------------------------- both kinds of store
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL server for the whole session (tests/pg.py); skipped without one."""
    from pg import start_cluster

    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def new_store(request, tmp_path_factory):
    """new_store(backend) -> a fresh, empty results store: a SQLite file path, or the URL of a new
    database on the session's PostgreSQL server."""
    count = iter(range(1, 1 << 30))

    def make(backend: str) -> str:
        if backend == "sqlite":
            return str(tmp_path_factory.mktemp("store") / f"results{next(count)}.db")
        return request.getfixturevalue("pg_cluster").new_database()

    return make


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def any_db(backend, new_store):
    """A fresh results store of each kind: SQLite, then PostgreSQL."""
    return new_store(backend)


def is_pg(db: str) -> bool:
    return db.startswith("postgresql")


def sql(db: str, query: str, **params) -> list[tuple]:
    """Rows of a query on any store, through SQLAlchemy (booleans as PostgreSQL gives them)."""
    from sqlalchemy import create_engine, text

    from wmg.store.session import db_url

    engine = create_engine(db_url(db))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(query), params)]
    finally:
        engine.dispose()


@pytest.fixture
def small_data():
    return str(SMALL)


def schema_drift(db: str) -> list:
    """Alembic's differences between the store's schema and the ORM's, less one known gap on SQLite:
    runs.study_id's reference is declared with its column (ADD COLUMN: rebuilding `runs` would
    cascade-delete its children), and SQLite's reflection reads neither the name nor the ON DELETE
    of such a column constraint; SQLite's own catalogue is checked for it instead. PostgreSQL has
    the gap not: its reference is a named constraint, compared like every other."""
    import sqlite3

    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from wmg.store.schema import Base
    from wmg.store import Store

    with Store(db).engine().connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    if is_pg(db):
        return diff
    gap = [d for d in diff if d[0] in ("add_fk", "remove_fk") and d[1].parent.name == "runs"
           and [c.name for c in d[1].columns] == ["study_id"]]
    with sqlite3.connect(db) as conn:
        fks = [r for r in conn.execute("PRAGMA foreign_key_list(runs)").fetchall() if r[3] == "study_id"]
    assert [(r[2], r[4], r[6]) for r in fks] == [("studies", "id", "SET NULL")]
    return [d for d in diff if d not in gap]
