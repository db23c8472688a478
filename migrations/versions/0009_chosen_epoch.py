"""The epoch a run kept: each epoch's score on the development slice (gold-type accuracy and
format, by generation) and the epoch whose weights were saved. Older runs kept their last epoch
and have no development slice; their rows stay NULL.

Revision ID: 0009_chosen_epoch
Revises: 0008_location_in_excerpt
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_chosen_epoch"
down_revision = "0008_location_in_excerpt"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("epoch_losses", sa.Column("dev_accuracy", sa.Float(), nullable=True))
    op.add_column("epoch_losses", sa.Column("dev_format", sa.Float(), nullable=True))
    op.add_column("run_models", sa.Column("chosen_epoch", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run_models") as batch:
        batch.drop_column("chosen_epoch")
    with op.batch_alter_table("epoch_losses") as batch:
        batch.drop_column("dev_format")
        batch.drop_column("dev_accuracy")
