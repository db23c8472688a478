"""The machinery under `Store` (wmg.store.store): engines and connection pragmas, the lock/retry
policy, and schema upgrades on first use.

Concurrency (several `wmg` processes on one SQLite file): every connection runs
in WAL mode with a busy timeout, so readers never block writers and see only
committed transactions. A write transaction starts with BEGIN IMMEDIATE, taking
the write lock before its first read: a deferred transaction that reads and then
writes can fail at once with "database is locked" when another writer committed
in between (SQLite does not wait in that case). Each `Store` method is one short
transaction, retried a bounded number of times if the lock still cannot be had.

PostgreSQL (`postgresql+psycopg://...`, the `postgres` extra) relies on its own guarantees
instead: every `Store` method is one transaction (READ COMMITTED), a read that decides a
write locks its rows with SELECT ... FOR UPDATE (see `store`), a lock held by another process
for longer than the busy timeout fails (`lock_timeout`), and a transaction the server rolled
back for that, as a deadlock or as a serialization failure is retried like a locked SQLite file.
None of the SQLite pragmas, BEGIN IMMEDIATE or busy timeouts apply to it.
"""
from __future__ import annotations

import functools
import os
import random
import time
from functools import lru_cache
from pathlib import Path
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, TypeVar

from sqlalchemy import create_engine, event, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DatabaseError, DBAPIError, NoSuchModuleError, OperationalError

from ..config import env_number

DEFAULT_DB = "results.db"


class StoreError(RuntimeError):
    """A problem with the results store, reported as one line."""


def explain(message: str) -> str:
    """SQLite's terse I/O errors, with what usually causes them."""
    low = message.lower()
    if "disk i/o error" in low or "database or disk is full" in low:
        return f"{message} (is the disk full, or the file not writable?)"
    if "readonly database" in low:
        return f"{message} (the store is read-only: writing commands need a writable file)"
    return message


def db_url(db: str | None) -> str:
    """`--db` / `WMG_DB`: a SQLAlchemy URL, or a path taken as a SQLite file. A PostgreSQL URL
    without a driver (`postgresql://`, `postgres://`) uses psycopg 3, the `postgres` extra's."""
    db = db or os.environ.get("WMG_DB") or DEFAULT_DB
    if "://" not in db:
        return f"sqlite:///{db}"
    scheme, rest = db.split("://", 1)
    return f"postgresql+psycopg://{rest}" if scheme in ("postgresql", "postgres") else db


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


DIALECTS = ("sqlite", "postgresql")


BUSY_TIMEOUT_MS: int | None = None  # tests set it; otherwise WMG_BUSY_TIMEOUT_MS, default 30000
LOCK_RETRIES = 5


def busy_timeout_ms() -> int:
    return BUSY_TIMEOUT_MS if BUSY_TIMEOUT_MS is not None else env_number("WMG_BUSY_TIMEOUT_MS")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # the driver's own BEGIN is off; `_begin` emits ours
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms()}")
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
def head_revision() -> str:
    """The newest schema revision this installation knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


@lru_cache(maxsize=None)
def _engine(url: str, write: bool = False) -> Engine:
    """One engine per store and mode: SQLite `write` engines begin every transaction IMMEDIATE;
    a PostgreSQL store has one engine for both (`ready_engine` never asks for a write one)."""
    if is_sqlite(url):
        engine = create_engine(url, connect_args={"timeout": busy_timeout_ms() / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        begin = "BEGIN IMMEDIATE" if write else "BEGIN"
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
    else:
        try:
            backend = make_url(url).get_backend_name()
        except ArgumentError as exc:
            raise StoreError(f"results store {_shown(url)}: not a database URL this wmg knows ({exc})") from None
        if backend not in DIALECTS:
            raise StoreError(f"results store {_shown(url)}: wmg keeps its results in SQLite or PostgreSQL, "
                             f"not {backend}")
        try:
            # lock_timeout: like SQLite's busy timeout, a lock another process holds longer than
            # WMG_BUSY_TIMEOUT_MS fails the transaction (retried, then one line) instead of waiting forever
            engine = create_engine(url, pool_pre_ping=True,
                                   connect_args={"options": f"-c lock_timeout={busy_timeout_ms()}"})
        except ImportError as exc:  # the dialect's driver is not installed
            raise StoreError(_missing_driver(url, exc)) from None
        except (ArgumentError, NoSuchModuleError) as exc:
            raise StoreError(f"results store {_shown(url)}: not a database URL this wmg knows ({exc})") from None
    return engine


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparseable URL)"


def _missing_driver(url: str, exc: ImportError) -> str:
    backend = url.split(":", 1)[0].split("+", 1)[0]
    module = getattr(exc, "name", None) or str(exc)
    hint = ("install it with `pip install 'wmg[postgres]'` and give the URL as postgresql+psycopg://USER@HOST/DB"
            if backend == "postgresql" else f"install a {backend} driver for SQLAlchemy")
    return f"results store {_shown(url)}: the database driver {module!r} is not installed; {hint}"


def is_locked(exc: BaseException) -> bool:
    text = str(getattr(exc, "orig", exc)).lower()
    return isinstance(exc, OperationalError) and ("database is locked" in text or "database is busy" in text)


# PostgreSQL rolled the transaction back and says so: a deadlock, a serialization failure, a lock
# not available. Running the store function again is safe (it is one transaction).
PG_TRANSIENT = {"40001", "40P01", "55P03"}


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and getattr(getattr(exc, "orig", None), "sqlstate", None) in PG_TRANSIENT


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


F = TypeVar("F", bound=Callable)


def retry_locked(fn: F) -> F:
    """Run a one-transaction store function again (bounded, with jittered backoff) when
    SQLite reports the database locked; after the last try, one clear StoreError."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for attempt in range(LOCK_RETRIES):
            try:
                return fn(*args, **kwargs)
            except OperationalError as exc:
                if not is_locked(exc) and not is_conflict(exc):
                    raise
                if attempt == LOCK_RETRIES - 1:
                    if is_conflict(exc):
                        held = getattr(exc.orig, "sqlstate", None) == "55P03"
                        raise StoreError(("results store: rows it needs are locked by another process"
                                          if held else "results store: the transaction kept conflicting with "
                                          "another process") + f"; gave up after {LOCK_RETRIES} tries "
                                         f"({_one_line(exc.orig)})") from None
                    raise StoreError(f"results store is locked by another process; gave up after "
                                     f"{LOCK_RETRIES} tries ({exc.orig})") from None
                time.sleep(min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    return wrapper  # type: ignore[return-value]


@lru_cache(maxsize=None)
def _check_sqlite_file(url: str) -> None:
    """Refuse a file that is not a SQLite database, before SQLite touches it.

    Once per process and store, before its first connection: closing any descriptor of a
    database file drops every POSIX lock this process holds on it, including those of
    SQLite's own open connections, and a later check would corrupt the store under
    concurrent writers (measured: two trainings and a comparison beside a reader).
    """
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return
    path = url[len("sqlite:///"):]
    if path.startswith("file:"):  # a SQLite URI (uri=true), e.g. file:results.db?mode=ro
        path = path[len("file:"):].split("?", 1)[0]
    path = Path(path)
    if path.exists() and path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise StoreError(f"{path}: not a SQLite database")
    elif path.parent and not path.parent.exists():
        raise StoreError(f"{path}: folder {path.parent} does not exist")


_ready: set[str] = set()


def ready_engine(url: str, upgrade: bool = True, write: bool = False) -> Engine:
    """The engine for a store URL, with the schema upgraded to head on first use in this process
    (`Store.engine` is the way in)."""
    _check_sqlite_file(url)
    write = write and is_sqlite(url)
    if upgrade and url not in _ready:
        # Read the revision first: a store already at head is used as it is (read-only
        # files included); otherwise upgrade under the write lock.
        if _revision(_engine(url, False), url) != head_revision():
            upgrade_schema(_engine(url, is_sqlite(url)), url)
        _ready.add(url)
    return _engine(url, write)


def _cannot_open(url: str, exc: DBAPIError) -> StoreError:
    if is_sqlite(url):
        return StoreError(f"cannot open results store {url}: {explain(str(exc.orig))}")
    return StoreError(f"cannot open results store {_shown(url)}: {_one_line(exc.orig)}")


def _revision(engine: Engine, url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except DatabaseError as exc:
        raise _cannot_open(url, exc) from None


# The key of the transaction-level advisory lock that PostgreSQL upgrades take (any constant will do).
PG_UPGRADE_LOCK = 0x776D67  # "wmg"


@retry_locked
def upgrade_schema(engine: Engine, url: str, revision: str = "head") -> None:
    """Upgrade in one transaction (SQLite's and PostgreSQL's DDL are transactional): an upgrade
    that fails leaves the store at its old revision. On a SQLite write engine the transaction
    holds the write lock from its start; on PostgreSQL it first takes an advisory lock, so two
    processes opening a fresh store do not both create it (the second then finds it at head)."""
    from alembic import command

    cfg = alembic_config(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_UPGRADE_LOCK})")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except OperationalError as exc:
        if is_locked(exc) or is_conflict(exc):
            raise
        raise _cannot_open(url, exc) from None
    except DatabaseError as exc:
        raise _cannot_open(url, exc) from None


def plain_value(value: Any) -> Any:
    """A value as SQLite hands it back, whatever the store: PostgreSQL's booleans as 0/1, its NUMERIC
    (a SUM of counts, a number read from JSON) as an int when written without a fraction and a float
    otherwise, its timestamps as SQLAlchemy writes them to SQLite. No-ops on SQLite's own values."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="microseconds")
    return value
