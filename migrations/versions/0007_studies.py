"""Studies: K stratified folds repeated with N seeds, each (seed, fold) an ordinary run tied to
the study; and the third instruction form named `paraphrase` (it was stored as `other`).

Revision ID: 0007_studies
Revises: 0006_baselines
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

from wmg.store.dialect import for_dialect as _for_dialect, pg_view as _pg

revision = "0007_studies"
down_revision = "0006_baselines"
branch_labels = None
depends_on = None


VIEWS = {
    # Every system's gold-type accuracy, the language models and the reference baselines side by side
    # (kind tells them apart), over all examples of an evaluation and per instruction form.
    "system_accuracy": """
        WITH hits AS (
            SELECT p.evaluation_id, p.model AS system, 'model' AS kind, x.instruction_form, p.matches_gold
            FROM predictions p JOIN examples x ON x.id = p.example_id
            UNION ALL
            SELECT b.evaluation_id, b.baseline, 'baseline', x.instruction_form, b.matches_gold
            FROM baseline_predictions b JOIN examples x ON x.id = b.example_id
        )
        SELECT e.run_id, h.evaluation_id, h.system, h.kind, 'all' AS instruction_form, COUNT(*) AS examples,
               SUM(CASE WHEN h.matches_gold THEN 1 ELSE 0 END) AS correct, AVG(CASE WHEN h.matches_gold THEN 1.0 ELSE 0.0 END) AS accuracy
        FROM hits h JOIN evaluations e ON e.id = h.evaluation_id
        GROUP BY e.run_id, h.evaluation_id, h.system, h.kind
        UNION ALL
        SELECT e.run_id, h.evaluation_id, h.system, h.kind, h.instruction_form, COUNT(*),
               SUM(CASE WHEN h.matches_gold THEN 1 ELSE 0 END), AVG(CASE WHEN h.matches_gold THEN 1.0 ELSE 0.0 END)
        FROM hits h JOIN evaluations e ON e.id = h.evaluation_id
        GROUP BY e.run_id, h.evaluation_id, h.system, h.kind, h.instruction_form
    """,
    # A study's figures pooled over its folds: each run's latest completed comparison of its own
    # held-out fold, summed per seed, system and instruction form.
    "study_accuracy": """
        WITH latest AS (
            SELECT run_id, MAX(id) AS evaluation_id FROM evaluations
            WHERE status = 'completed' AND source = 'validation' GROUP BY run_id
        )
        SELECT r.study_id, r.seed, s.system, s.kind, s.instruction_form, COUNT(*) AS folds_done,
               SUM(s.examples) AS examples, SUM(s.correct) AS correct, 1.0 * SUM(s.correct) / SUM(s.examples) AS accuracy
        FROM system_accuracy s JOIN latest l ON l.evaluation_id = s.evaluation_id
        JOIN runs r ON r.id = s.run_id
        WHERE r.study_id IS NOT NULL
        GROUP BY r.study_id, r.seed, s.system, s.kind, s.instruction_form
    """,
}



# PostgreSQL: sums of counts kept integers (its SUM of a BIGINT is NUMERIC), means in DOUBLE PRECISION.
VIEWS_PG = {
    "system_accuracy": _pg(VIEWS["system_accuracy"]),
    "study_accuracy": _pg(VIEWS["study_accuracy"], ("SUM(s.examples)", "SUM(s.examples)::bigint"),
                          ("SUM(s.correct)", "SUM(s.correct)::bigint")),
}


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("data_path", sa.Text(), nullable=False),
        sa.Column("data_sha256", sa.String(64), nullable=False),
        sa.Column("folds", sa.Integer(), nullable=False),
        sa.Column("seeds_json", sa.Text(), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.CheckConstraint("folds >= 2", name=op.f("ck_studies_folds")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
    )
    # Plain ADD COLUMN (no table rebuild: rebuilding `runs` would cascade-delete its children
    # on SQLite with foreign keys on); the reference is declared inline with the column.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE runs ADD COLUMN study_id INTEGER "
                   "CONSTRAINT fk_runs_study_id_studies REFERENCES studies (id) ON DELETE SET NULL")
    else:
        op.add_column("runs", sa.Column("study_id", sa.Integer(), nullable=True))
        op.create_foreign_key(op.f("fk_runs_study_id_studies"), "runs", "studies", ["study_id"], ["id"],
                              ondelete="SET NULL")
    op.add_column("runs", sa.Column("fold", sa.Integer(), nullable=True))
    op.create_index("ix_runs_study_id", "runs", ["study_id"])
    op.execute("UPDATE examples SET instruction_form = 'paraphrase' WHERE instruction_form = 'other'")
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {_for_dialect(sql, VIEWS_PG[name])}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute("UPDATE examples SET instruction_form = 'other' WHERE instruction_form = 'paraphrase'")
    op.drop_index("ix_runs_study_id", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("fold")
        batch.drop_column("study_id")
    op.drop_table("studies")
