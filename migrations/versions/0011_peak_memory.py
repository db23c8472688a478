"""Peak resident memory: of the wmg process while it trained each model (`run_models`) and
while it made each comparison (`evaluations`), in MB, measured where the system can restart
the measurement per phase (Linux). Older rows, and rows from other systems, stay NULL.

Revision ID: 0011_peak_memory
Revises: 0010_run_leases
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0011_peak_memory"
down_revision = "0010_run_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("run_models", sa.Column("peak_rss_mb", sa.Float(), nullable=True))
    op.add_column("evaluations", sa.Column("peak_rss_mb", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("peak_rss_mb")
    with op.batch_alter_table("run_models") as batch:
        batch.drop_column("peak_rss_mb")
