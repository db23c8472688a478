"""Reference baselines: what a bag-of-words classifier and the majority class predict for every
example of a comparison, kept apart from the language models' predictions so that no view
counts them in the models' agreement.

Revision ID: 0006_baselines
Revises: 0005_agreement_names
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_baselines"
down_revision = "0005_agreement_names"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "baseline_predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("example_id", sa.Integer(), nullable=False),
        sa.Column("baseline", sa.String(64), nullable=False),
        sa.Column("predicted_type", sa.Text(), nullable=True),
        sa.Column("matches_gold", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"],
                                name=op.f("fk_baseline_predictions_evaluation_id_evaluations"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["example_id"], ["examples.id"],
                                name=op.f("fk_baseline_predictions_example_id_examples"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_baseline_predictions")),
        sa.UniqueConstraint("evaluation_id", "example_id", "baseline",
                            name=op.f("uq_baseline_predictions_evaluation_id_example_id_baseline")),
    )
    op.create_index("ix_baseline_predictions_example_id", "baseline_predictions", ["example_id"])


def downgrade() -> None:
    op.drop_index("ix_baseline_predictions_example_id", table_name="baseline_predictions")
    op.drop_table("baseline_predictions")
