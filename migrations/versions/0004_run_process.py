"""Which process owns a running run (so a killed one is found), where its checkpoints are,
and how often it was resumed.

Revision ID: 0004_run_process
Revises: 0003_judgments
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_run_process"
down_revision = "0003_judgments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("host", sa.String(255)))
        batch.add_column(sa.Column("pid", sa.Integer()))
        batch.add_column(sa.Column("process_start", sa.BigInteger()))
        batch.add_column(sa.Column("checkpoint_dir", sa.Text()))
        batch.add_column(sa.Column("resumes", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        for column in ("resumes", "checkpoint_dir", "process_start", "pid", "host"):
            batch.drop_column(column)
