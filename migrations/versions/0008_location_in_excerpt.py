"""Whether a prediction's location is an exact span of its excerpt: a stored check beside the
format checks, filled in for the predictions already stored.

Revision ID: 0008_location_in_excerpt
Revises: 0007_studies
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

from wmg.store.dialect import for_dialect as _for_dialect, pg_view as _pg

revision = "0008_location_in_excerpt"
down_revision = "0007_studies"
branch_labels = None
depends_on = None


COMPARISON = """
        SELECT e.run_id, p.evaluation_id, p.model, m.model_type, m.init, m.parameters, m.final_loss,
               m.final_val_loss, m.train_seconds, COUNT(*) AS examples,
               AVG(p.format_ok) AS format_accuracy, AVG(p.matches_gold) AS gold_accuracy,
               AVG(p.rouge1_f1) AS rouge1_f1, AVG(p.rouge_l_f1) AS rouge_l_f1,
               COUNT(p.rouge1_f1) AS rouge_scored{extra}
        FROM predictions p JOIN evaluations e ON e.id = p.evaluation_id JOIN run_models m ON m.id = p.run_model_id
        GROUP BY e.run_id, p.evaluation_id, p.model
"""
# of the well-formed outputs, how many give a location that is a span of the excerpt
LOCATION = """,
               SUM(CASE WHEN p.format_ok THEN 1 ELSE 0 END) AS well_formed,
               SUM(CASE WHEN p.format_ok AND p.location_in_excerpt THEN 1 ELSE 0 END) AS location_spans,
               1.0 * SUM(CASE WHEN p.format_ok AND p.location_in_excerpt THEN 1 ELSE 0 END)
                   / NULLIF(SUM(CASE WHEN p.format_ok THEN 1 ELSE 0 END), 0) AS location_in_excerpt"""



def _comparison(extra: str) -> str:
    """The view for this store's dialect; in PostgreSQL booleans are made integers before their means and
    the model's columns are grouped by its key."""
    sql = COMPARISON.format(extra=extra)
    return _for_dialect(sql, _pg(sql, ("AVG(p.format_ok)", "AVG(p.format_ok::int::float8)"),
                                 ("AVG(p.matches_gold)", "AVG(p.matches_gold::int::float8)"),
                                 ("GROUP BY e.run_id, p.evaluation_id, p.model",
                                  "GROUP BY e.run_id, p.evaluation_id, p.model, m.id")))


def _span(location, excerpt):
    """The check as wmg.parse.location_in_excerpt defines it at this revision."""
    if not location or not location.strip():
        return None
    return " ".join(location.split()) in " ".join(excerpt.split())


def upgrade() -> None:
    op.add_column("predictions", sa.Column("location_in_excerpt", sa.Boolean(), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT p.id, p.location, x.input FROM predictions p "
                                "JOIN examples x ON x.id = p.example_id WHERE p.location IS NOT NULL")).all()
    for value in (True, False):
        ids = [r[0] for r in rows if _span(r[1], r[2]) is value]
        for i in range(0, len(ids), 500):
            conn.execute(sa.text("UPDATE predictions SET location_in_excerpt = :v WHERE id IN :ids")
                         .bindparams(sa.bindparam("ids", expanding=True)), {"v": value, "ids": ids[i:i + 500]})
    op.execute("DROP VIEW IF EXISTS model_comparison")
    op.execute("CREATE VIEW model_comparison AS " + _comparison(LOCATION))


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS model_comparison")
    op.execute("CREATE VIEW model_comparison AS " + _comparison(""))
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("location_in_excerpt")
