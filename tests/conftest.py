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


@pytest.fixture
def small_data():
    return str(SMALL)


def schema_drift(db: str) -> list:
    """Alembic's differences between the store's schema and the ORM's, less one known gap:
    runs.study_id's reference is declared with its column (ADD COLUMN: rebuilding `runs` would
    cascade-delete its children), and SQLite's reflection reads neither the name nor the ON DELETE
    of such a column constraint; SQLite's own catalogue is checked for it instead."""
    import sqlite3

    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from wmg.store.schema import Base
    from wmg.store.session import get_engine

    with get_engine(db).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    gap = [d for d in diff if d[0] in ("add_fk", "remove_fk") and d[1].parent.name == "runs"
           and [c.name for c in d[1].columns] == ["study_id"]]
    with sqlite3.connect(db) as conn:
        fks = [r for r in conn.execute("PRAGMA foreign_key_list(runs)").fetchall() if r[3] == "study_id"]
    assert [(r[2], r[4], r[6]) for r in fks] == [("studies", "id", "SET NULL")]
    return [d for d in diff if d not in gap]
