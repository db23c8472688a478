"""Leases for the runs of a study that `wmg work` processes share: the worker holding a run
(`lease_owner`, "host:pid:start") and until when (`lease_until`, UTC) unless it renews. A
worker that dies stops renewing; once the time has passed another worker takes the run over
and resumes it. Runs made outside `wmg work` keep both NULL.

Revision ID: 0010_run_leases
Revises: 0009_chosen_epoch
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0010_run_leases"
down_revision = "0009_chosen_epoch"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("lease_owner", sa.String(255), nullable=True))
    op.add_column("runs", sa.Column("lease_until", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
