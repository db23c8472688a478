"""Checkpoint averaging (`--average-epochs K`): whether a model's saved weights are the average of
its last K epochs rather than its best epoch's, and the average's gold-type accuracy and format
on the development slice. NULL for models trained without averaging, and for every older row.

Revision ID: 0012_checkpoint_averaging
Revises: 0011_peak_memory
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

revision = "0012_checkpoint_averaging"
down_revision = "0011_peak_memory"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("run_models", sa.Column("kept_average", sa.Boolean(), nullable=True))
    op.add_column("run_models", sa.Column("average_dev_accuracy", sa.Float(), nullable=True))
    op.add_column("run_models", sa.Column("average_dev_format", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run_models") as batch:
        batch.drop_column("average_dev_format")
        batch.drop_column("average_dev_accuracy")
        batch.drop_column("kept_average")
