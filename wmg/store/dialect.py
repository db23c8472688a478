"""What the migrations' views need to be written once for SQLite and PostgreSQL.

Every migration that creates a view keeps its SQLite text as it was and derives the
PostgreSQL one with `pg_view`; `for_dialect` picks the one for the store being upgraded.
Migrations of every revision call these, so their output must never change: a change here
would change what an old revision creates.
"""
from __future__ import annotations

import re


def pg_view(sql: str, *swaps: tuple[str, str]) -> str:
    """A view's PostgreSQL text: the SQLite text with its SQLite-only parts swapped (each must
    occur), then every decimal literal made DOUBLE PRECISION, as SQLite's REAL literals are
    (PostgreSQL would compute in NUMERIC and round differently)."""
    for old, new in swaps:
        assert old in sql, old
        sql = sql.replace(old, new)
    return re.sub(r"(?<![\w.:])(\d+\.\d+)(?![\w.])", r"\1::float8", sql)


def for_dialect(sqlite: str, postgresql: str) -> str:
    """The text for the dialect of the migration's connection."""
    from alembic import op

    name = op.get_bind().dialect.name
    if name == "sqlite":
        return sqlite
    if name == "postgresql":
        return postgresql
    raise NotImplementedError(f"wmg's views are written for SQLite and PostgreSQL, not {name}")
