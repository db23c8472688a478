"""Initial schema: runs, models, training steps, examples, evaluations, predictions, agreements.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

from wmg.store.dialect import for_dialect as _for_dialect, pg_view as _pg

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

RUN_STATUS = "status IN ('running', 'completed', 'failed', 'interrupted')"

# Error analysis by gadget type: per evaluation, gold type and model, how many
# examples, how many the model got right (normalized type equals the gold's),
# and how often the models disagreed on them.
ERROR_BY_TYPE = """
CREATE VIEW error_by_type AS
SELECT e.run_id AS run_id,
       p.evaluation_id AS evaluation_id,
       COALESCE(x.gold_type, '(none)') AS gold_type,
       p.model AS model,
       COUNT(*) AS examples,
       SUM(p.matches_gold) AS correct,
       AVG(p.matches_gold) AS accuracy,
       AVG(p.format_ok) AS format_accuracy,
       SUM(1 - a.full_agreement) AS disagreements,
       1.0 - AVG(a.full_agreement) AS disagreement_rate
FROM predictions p
JOIN examples x ON x.id = p.example_id
JOIN evaluations e ON e.id = p.evaluation_id
JOIN agreements a ON a.evaluation_id = p.evaluation_id AND a.example_id = p.example_id
GROUP BY e.run_id, p.evaluation_id, COALESCE(x.gold_type, '(none)'), p.model
"""


# PostgreSQL has no arithmetic on booleans: each is made an integer, each mean a DOUBLE PRECISION one.
ERROR_BY_TYPE_PG = _pg(ERROR_BY_TYPE, ("SUM(p.matches_gold)", "SUM(p.matches_gold::int)"),
                       ("AVG(p.matches_gold)", "AVG(p.matches_gold::int::float8)"),
                       ("AVG(p.format_ok)", "AVG(p.format_ok::int::float8)"),
                       ("SUM(1 - a.full_agreement)", "SUM(1 - a.full_agreement::int)"),
                       ("AVG(a.full_agreement)", "AVG(a.full_agreement::int::float8)"))


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("data_path", sa.Text(), nullable=False),
        sa.Column("data_sha256", sa.String(64), nullable=False),
        sa.Column("examples_requested", sa.Integer(), nullable=True),
        sa.Column("n_train", sa.Integer(), nullable=False),
        sa.Column("n_validation", sa.Integer(), nullable=False),
        sa.Column("eval_split", sa.Float(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("models", sa.Text(), nullable=False),
        sa.Column("init_requested", sa.String(16), nullable=False),
        sa.Column("device", sa.String(16), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("versions_json", sa.Text(), nullable=False),
        sa.Column("train_seconds", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(RUN_STATUS, name=op.f("ck_runs_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_table(
        "run_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("hub_id", sa.Text(), nullable=False),
        sa.Column("model_type", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("init", sa.String(16), nullable=True),
        sa.Column("init_note", sa.Text(), nullable=True),
        sa.Column("parameters", sa.Integer(), nullable=True),
        sa.Column("vocab_size", sa.Integer(), nullable=True),
        sa.Column("hyperparams_json", sa.Text(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("final_loss", sa.Float(), nullable=True),
        sa.Column("mean_loss", sa.Float(), nullable=True),
        sa.Column("final_val_loss", sa.Float(), nullable=True),
        sa.Column("train_seconds", sa.Float(), nullable=True),
        sa.Column("tokens_seen", sa.Integer(), nullable=True),
        sa.Column("checkpoint_path", sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'running', 'completed', 'failed', 'interrupted')",
                           name=op.f("ck_run_models_status")),
        sa.CheckConstraint("init IS NULL OR init IN ('pretrained', 'scratch')", name=op.f("ck_run_models_init")),
        sa.CheckConstraint("model_type IN ('seq2seq', 'causal')", name=op.f("ck_run_models_model_type")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_models_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_models")),
        sa.UniqueConstraint("run_id", "name", name=op.f("uq_run_models_run_id_name")),
    )
    op.create_index(op.f("ix_run_models_run_id"), "run_models", ["run_id"])
    op.create_table(
        "train_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_model_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Float(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("lr", sa.Float(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_model_id"], ["run_models.id"],
                                name=op.f("fk_train_steps_run_model_id_run_models"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_train_steps")),
        sa.UniqueConstraint("run_model_id", "step", name=op.f("uq_train_steps_run_model_id_step")),
    )
    op.create_table(
        "epoch_losses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_model_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Float(), nullable=False),
        sa.Column("val_loss", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["run_model_id"], ["run_models.id"],
                                name=op.f("fk_epoch_losses_run_model_id_run_models"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_epoch_losses")),
        sa.UniqueConstraint("run_model_id", "epoch", name=op.f("uq_epoch_losses_run_model_id_epoch")),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("n_examples", sa.Integer(), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("full_agreements", sa.Integer(), nullable=True),
        sa.Column("full_agreement_rate", sa.Float(), nullable=True),
        sa.Column("report_path", sa.Text(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('running', 'completed', 'failed')", name=op.f("ck_evaluations_status")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_evaluations_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    op.create_index(op.f("ix_evaluations_run_id"), "evaluations", ["run_id"])
    op.create_table(
        "examples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=True),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("source_line", sa.Integer(), nullable=False),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("gold_output", sa.Text(), nullable=False),
        sa.Column("gold_type", sa.Text(), nullable=True),
        sa.Column("gold_normalized", sa.Text(), nullable=False),
        sa.Column("instruction_form", sa.String(16), nullable=False),
        sa.Column("excerpt_words", sa.Integer(), nullable=False),
        sa.CheckConstraint("split IN ('train', 'validation', 'external')", name=op.f("ck_examples_split")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_examples_run_id_runs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"],
                                name=op.f("fk_examples_evaluation_id_evaluations"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_examples")),
    )
    op.create_index("ix_examples_run_split", "examples", ["run_id", "split", "position"])
    op.create_index("ix_examples_evaluation_id", "examples", ["evaluation_id"])
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("example_id", sa.Integer(), nullable=False),
        sa.Column("run_model_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("raw_text", sa.Text(), nullable=False),
        sa.Column("gadget_type", sa.Text(), nullable=True),
        sa.Column("location", sa.Text(), nullable=True),
        sa.Column("explanation", sa.Text(), nullable=True),
        sa.Column("normalized_type", sa.Text(), nullable=False),
        sa.Column("canonical_label", sa.Text(), nullable=True),
        sa.Column("fmt_gadget_type", sa.Boolean(), nullable=False),
        sa.Column("fmt_location", sa.Boolean(), nullable=False),
        sa.Column("fmt_explanation", sa.Boolean(), nullable=False),
        sa.Column("format_ok", sa.Boolean(), nullable=False),
        sa.Column("matches_gold", sa.Boolean(), nullable=False),
        sa.Column("new_tokens", sa.Integer(), nullable=False),
        sa.Column("generation_seconds", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"],
                                name=op.f("fk_predictions_evaluation_id_evaluations"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["example_id"], ["examples.id"],
                                name=op.f("fk_predictions_example_id_examples"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_model_id"], ["run_models.id"],
                                name=op.f("fk_predictions_run_model_id_run_models"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint("evaluation_id", "example_id", "run_model_id",
                            name=op.f("uq_predictions_evaluation_id_example_id_run_model_id")),
    )
    op.create_index("ix_predictions_example_id", "predictions", ["example_id"])
    op.create_table(
        "agreements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("example_id", sa.Integer(), nullable=False),
        sa.Column("n_models", sa.Integer(), nullable=False),
        sa.Column("full_agreement", sa.Boolean(), nullable=False),
        sa.Column("unique_types_json", sa.Text(), nullable=False),
        sa.Column("unique_normalized_json", sa.Text(), nullable=False),
        sa.Column("n_unique_normalized", sa.Integer(), nullable=False),
        sa.Column("majority_type", sa.Text(), nullable=True),
        sa.Column("majority_normalized", sa.Text(), nullable=True),
        sa.Column("majority_count", sa.Integer(), nullable=False),
        sa.Column("majority_matches_gold", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"],
                                name=op.f("fk_agreements_evaluation_id_evaluations"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["example_id"], ["examples.id"],
                                name=op.f("fk_agreements_example_id_examples"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agreements")),
        sa.UniqueConstraint("evaluation_id", "example_id", name=op.f("uq_agreements_evaluation_id_example_id")),
    )
    op.create_index("ix_agreements_example_id", "agreements", ["example_id"])
    op.execute(_for_dialect(ERROR_BY_TYPE, ERROR_BY_TYPE_PG))


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS error_by_type")
    for table in ("agreements", "predictions", "examples", "evaluations", "epoch_losses", "train_steps",
                  "run_models", "runs"):
        op.drop_table(table)
