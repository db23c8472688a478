"""Engine, connection pragmas, the session scope, and schema upgrades on first use."""
from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_DB = "results.db"


class StoreError(RuntimeError):
    """A problem with the results store, reported as one line."""


def db_url(db: str | None) -> str:
    """`--db` / `WMG_DB`: a SQLAlchemy URL, or a path taken as a SQLite file."""
    db = db or os.environ.get("WMG_DB") or DEFAULT_DB
    return db if "://" in db else f"sqlite:///{db}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def migrations_dir() -> Path:
    """The Alembic scripts: shipped inside the package on install, top-level `migrations/` in a checkout."""
    try:
        from importlib.resources import files

        shipped = Path(str(files("wmg._migrations")))
        if (shipped / "env.py").exists():
            return shipped
    except (ModuleNotFoundError, TypeError):
        pass
    here = Path(__file__).resolve().parents[2] / "migrations"
    if (here / "env.py").exists():
        return here
    raise StoreError("cannot find the migrations folder of this installation")


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@lru_cache(maxsize=None)
def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url)
    return engine


def _check_sqlite_file(url: str) -> None:
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return
    path = Path(url[len("sqlite:///"):])
    if path.exists() and path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise StoreError(f"{path}: not a SQLite database")
    elif path.parent and not path.parent.exists():
        raise StoreError(f"{path}: folder {path.parent} does not exist")


_ready: set[str] = set()


def get_engine(db: str | None = None, upgrade: bool = True) -> Engine:
    """The engine for `db`, with the schema upgraded to head on first use in this process."""
    url = db_url(db)
    _check_sqlite_file(url)
    engine = _engine(url)
    if upgrade and url not in _ready:
        upgrade_schema(engine, url)
        _ready.add(url)
    return engine


def upgrade_schema(engine: Engine, url: str, revision: str = "head") -> None:
    from alembic import command

    cfg = alembic_config(url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except DatabaseError as exc:
        raise StoreError(f"cannot open results store {url}: {exc.orig}") from None


def current_revision(db: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = get_engine(db, upgrade=False)
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def has_table(engine: Engine, name: str) -> bool:
    return inspect(engine).has_table(name)


@contextmanager
def session_scope(db: str | None = None) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error, always close."""
    session = sessionmaker(bind=get_engine(db), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
