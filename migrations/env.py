"""Alembic environment: runs on a connection handed in by wmg, or on sqlalchemy.url."""
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config

try:  # for `alembic revision --autogenerate`; revision scripts themselves never import the ORM
    from wmg.store.schema import Base

    target_metadata = Base.metadata
except ImportError:  # pragma: no cover
    target_metadata = None


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as conn:
        run(conn)
