"""Semantic agreement: judgment sets, verdicts, manual annotations, and the per-judge rate view.

Revision ID: 0003_judgments
Revises: 0002_analysis_views
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

from wmg.store.dialect import for_dialect as _for_dialect, pg_view as _pg

revision = "0003_judgments"
down_revision = "0002_analysis_views"
branch_labels = None
depends_on = None

OUTCOMES = "('full', 'partial', 'disagreement', 'invalid', 'error')"

# Per judgment set: how often the judge called the models' outputs the same (full) or
# related (full or partial), next to the string agreement rate of the same comparison.
SEMANTIC_AGREEMENT = """
CREATE VIEW semantic_agreement AS
SELECT e.run_id, s.evaluation_id, s.id AS judgment_set_id, s.judge, s.judge_version, s.model AS judge_model,
       COUNT(*) AS examples,
       AVG(j.verdict = 'full') AS full_rate,
       AVG(j.verdict IN ('full', 'partial')) AS full_or_partial_rate,
       AVG(j.verdict = 'invalid') AS invalid_rate,
       AVG(j.verdict = 'error') AS error_rate,
       e.full_agreement_rate AS string_agreement_rate
FROM judgment_sets s
JOIN judgments j ON j.set_id = s.id AND j.kind = 'overall'
JOIN evaluations e ON e.id = s.evaluation_id
GROUP BY s.id
"""


# PostgreSQL: each verdict test made an integer before its mean; the evaluation's columns grouped by its key.
SEMANTIC_AGREEMENT_PG = _pg(SEMANTIC_AGREEMENT, *((f"AVG(j.verdict {t})", f"AVG((j.verdict {t})::int::float8)")
                                                  for t in ("= 'full'", "IN ('full', 'partial')", "= 'invalid'",
                                                            "= 'error'")),
                            ("GROUP BY s.id", "GROUP BY s.id, e.id"))


def upgrade() -> None:
    op.create_table(
        "judgment_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("judge", sa.String(32), nullable=False),
        sa.Column("judge_version", sa.String(32), nullable=False),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("prompt_hash", sa.String(64), nullable=True),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"],
                                name=op.f("fk_judgment_sets_evaluation_id_evaluations"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_judgment_sets")),
        sqlite_autoincrement=True,  # a replaced set's id is never reused for another set
    )
    op.create_index(op.f("ix_judgment_sets_evaluation_id"), "judgment_sets", ["evaluation_id"])
    op.create_table(
        "judgments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("set_id", sa.Integer(), nullable=False),
        sa.Column("example_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("model_a", sa.String(64), nullable=True),
        sa.Column("model_b", sa.String(64), nullable=True),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.CheckConstraint(f"verdict IN {OUTCOMES}", name=op.f("ck_judgments_verdict")),
        sa.CheckConstraint("kind IN ('pair', 'overall', 'gold')", name=op.f("ck_judgments_kind")),
        sa.CheckConstraint("confidence >= 0 AND confidence <= 1", name=op.f("ck_judgments_confidence")),
        sa.ForeignKeyConstraint(["set_id"], ["judgment_sets.id"], name=op.f("fk_judgments_set_id_judgment_sets"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["example_id"], ["examples.id"], name=op.f("fk_judgments_example_id_examples"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_judgments")),
    )
    op.create_index("ix_judgments_set_kind", "judgments", ["set_id", "kind"])
    op.create_index("ix_judgments_example_id", "judgments", ["example_id"])
    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("example_id", sa.Integer(), nullable=False),
        sa.Column("annotator", sa.String(64), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("label IN ('full', 'partial', 'disagreement', 'invalid')", name=op.f("ck_annotations_label")),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"],
                                name=op.f("fk_annotations_evaluation_id_evaluations"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["example_id"], ["examples.id"], name=op.f("fk_annotations_example_id_examples"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotations")),
        sa.UniqueConstraint("evaluation_id", "example_id", "annotator",
                            name=op.f("uq_annotations_evaluation_id_example_id_annotator")),
    )
    op.execute(_for_dialect(SEMANTIC_AGREEMENT, SEMANTIC_AGREEMENT_PG))


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS semantic_agreement")
    op.drop_table("annotations")
    op.drop_table("judgments")
    op.drop_table("judgment_sets")
