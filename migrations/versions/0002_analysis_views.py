"""ROUGE per prediction, and one SQL view per research question.

Revision ID: 0002_analysis_views
Revises: 0001_initial
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

from wmg.store.dialect import for_dialect as _for_dialect, pg_view as _pg

revision = "0002_analysis_views"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

VIEWS = {
    # The newest completed comparison of each run: what `wmg analyze --run-id N` reads.
    "latest_evaluations": """
        SELECT e.* FROM evaluations e
        WHERE e.status = 'completed'
          AND e.id = (SELECT MAX(e2.id) FROM evaluations e2 WHERE e2.run_id = e.run_id AND e2.status = 'completed')
    """,
    # Q1: the examples where the models disagree, one row per model, side by side with the gold.
    "disagreements": """
        SELECT e.run_id, a.evaluation_id, x.id AS example_id, x.position, x.split, x.gold_type,
               x.gold_normalized, x.instruction_form, x.excerpt_words, a.n_models, a.n_unique_normalized,
               p.model, p.gadget_type, p.normalized_type, p.matches_gold
        FROM agreements a
        JOIN evaluations e ON e.id = a.evaluation_id
        JOIN examples x ON x.id = a.example_id
        JOIN predictions p ON p.evaluation_id = a.evaluation_id AND p.example_id = a.example_id
        WHERE a.full_agreement = 0
    """,
    # Q1: disagreement against the instruction form (category vs open).
    "disagreement_by_form": """
        SELECT e.run_id, a.evaluation_id, x.instruction_form, COUNT(*) AS examples,
               SUM(1 - a.full_agreement) AS disagreements, 1.0 - AVG(a.full_agreement) AS disagreement_rate,
               AVG(x.excerpt_words) AS mean_excerpt_words
        FROM agreements a JOIN evaluations e ON e.id = a.evaluation_id JOIN examples x ON x.id = a.example_id
        GROUP BY e.run_id, a.evaluation_id, x.instruction_form
    """,
    # Q2: architecture comparison, one row per model of an evaluation.
    "model_comparison": """
        SELECT e.run_id, p.evaluation_id, p.model, m.model_type, m.init, m.parameters, m.final_loss,
               m.final_val_loss, m.train_seconds, COUNT(*) AS examples,
               AVG(p.format_ok) AS format_accuracy, AVG(p.matches_gold) AS gold_accuracy,
               AVG(p.rouge1_f1) AS rouge1_f1, AVG(p.rouge_l_f1) AS rouge_l_f1,
               COUNT(p.rouge1_f1) AS rouge_scored
        FROM predictions p JOIN evaluations e ON e.id = p.evaluation_id JOIN run_models m ON m.id = p.run_model_id
        GROUP BY e.run_id, p.evaluation_id, p.model
    """,
    # Q3: accuracy where all models agree against where they do not, per model and for the majority vote.
    "confidence": """
        SELECT e.run_id, a.evaluation_id, a.full_agreement, p.model, COUNT(*) AS examples,
               AVG(p.matches_gold) AS accuracy
        FROM agreements a JOIN evaluations e ON e.id = a.evaluation_id
        JOIN predictions p ON p.evaluation_id = a.evaluation_id AND p.example_id = a.example_id
        GROUP BY e.run_id, a.evaluation_id, a.full_agreement, p.model
        UNION ALL
        SELECT e.run_id, a.evaluation_id, a.full_agreement, '(majority vote)', COUNT(*),
               AVG(a.majority_matches_gold)
        FROM agreements a JOIN evaluations e ON e.id = a.evaluation_id
        GROUP BY e.run_id, a.evaluation_id, a.full_agreement
    """,
    # Q3: risk-coverage of the majority vote, examples ordered by agreement (majority count / models);
    # one point per distinct agreement level, covering every example at or above it.
    "risk_coverage": """
        WITH lv AS (
            SELECT evaluation_id, ROUND(1.0 * majority_count / n_models, 6) AS agreement_level,
                   COUNT(*) AS n, SUM(majority_matches_gold) AS correct
            FROM agreements GROUP BY evaluation_id, ROUND(1.0 * majority_count / n_models, 6)
        ), cum AS (
            SELECT evaluation_id, agreement_level,
                   SUM(n) OVER w AS covered, SUM(correct) OVER w AS correct,
                   SUM(n) OVER (PARTITION BY evaluation_id) AS total
            FROM lv
            WINDOW w AS (PARTITION BY evaluation_id ORDER BY agreement_level DESC ROWS UNBOUNDED PRECEDING)
        )
        SELECT e.run_id, cum.evaluation_id, cum.agreement_level, cum.covered, cum.total,
               1.0 * cum.covered / cum.total AS coverage, 1.0 - 1.0 * cum.correct / cum.covered AS risk
        FROM cum JOIN evaluations e ON e.id = cum.evaluation_id
    """,
    # Q3: area under the risk-coverage curve (step integration over the points above).
    "aurc": """
        WITH pts AS (
            SELECT run_id, evaluation_id, coverage, risk,
                   coverage - COALESCE(LAG(coverage) OVER (PARTITION BY evaluation_id ORDER BY coverage), 0) AS width
            FROM risk_coverage
        )
        SELECT run_id, evaluation_id, SUM(risk * width) AS aurc, COUNT(*) AS points FROM pts
        GROUP BY run_id, evaluation_id
    """,
    # Q4: confusion of the gold label against the predicted canonical label, per model.
    "confusion": """
        SELECT e.run_id, p.evaluation_id, p.model, COALESCE(x.gold_type, '(none)') AS gold_label,
               COALESCE(p.canonical_label, '(other)') AS predicted_label, COUNT(*) AS n
        FROM predictions p JOIN evaluations e ON e.id = p.evaluation_id JOIN examples x ON x.id = p.example_id
        GROUP BY e.run_id, p.evaluation_id, p.model, COALESCE(x.gold_type, '(none)'),
                 COALESCE(p.canonical_label, '(other)')
    """,
    # Q5: majority-vote accuracy against each model's own. Tie rule: among equally frequent
    # normalized types, the one produced by the model listed first in the run wins.
    "vote": """
        SELECT e.run_id, a.evaluation_id, '(majority vote)' AS model, COUNT(*) AS examples,
               AVG(a.majority_matches_gold) AS accuracy,
               SUM(a.majority_count * 2 <= a.n_models) AS ties_or_no_majority
        FROM agreements a JOIN evaluations e ON e.id = a.evaluation_id
        GROUP BY e.run_id, a.evaluation_id
        UNION ALL
        SELECT e.run_id, p.evaluation_id, p.model, COUNT(*), AVG(p.matches_gold), NULL
        FROM predictions p JOIN evaluations e ON e.id = p.evaluation_id
        GROUP BY e.run_id, p.evaluation_id, p.model
    """,
    # Q6: raw agreement and Cohen's kappa of every pair of models, on normalized types.
    "pairwise_agreement": """
        WITH pairs AS (
            SELECT p1.evaluation_id, p1.model AS model_a, p2.model AS model_b,
                   p1.normalized_type AS a, p2.normalized_type AS b
            FROM predictions p1 JOIN predictions p2
              ON p1.evaluation_id = p2.evaluation_id AND p1.example_id = p2.example_id
             AND p1.run_model_id < p2.run_model_id
        ), n AS (
            SELECT evaluation_id, model_a, model_b, COUNT(*) AS n, AVG(a = b) AS po
            FROM pairs GROUP BY evaluation_id, model_a, model_b
        ), ca AS (
            SELECT evaluation_id, model_a, model_b, a AS cat, COUNT(*) AS k FROM pairs
            GROUP BY evaluation_id, model_a, model_b, a
        ), cb AS (
            SELECT evaluation_id, model_a, model_b, b AS cat, COUNT(*) AS k FROM pairs
            GROUP BY evaluation_id, model_a, model_b, b
        ), pe AS (
            SELECT ca.evaluation_id, ca.model_a, ca.model_b, SUM(ca.k * cb.k) AS s
            FROM ca JOIN cb ON ca.evaluation_id = cb.evaluation_id AND ca.model_a = cb.model_a
             AND ca.model_b = cb.model_b AND ca.cat = cb.cat
            GROUP BY ca.evaluation_id, ca.model_a, ca.model_b
        )
        SELECT e.run_id, n.evaluation_id, n.model_a, n.model_b, n.n AS examples, n.po AS raw_agreement,
               COALESCE(pe.s, 0) * 1.0 / (n.n * n.n) AS expected_agreement,
               CASE WHEN COALESCE(pe.s, 0) < n.n * n.n
                    THEN (n.po - COALESCE(pe.s, 0) * 1.0 / (n.n * n.n)) / (1.0 - COALESCE(pe.s, 0) * 1.0 / (n.n * n.n))
               END AS cohen_kappa
        FROM n LEFT JOIN pe ON pe.evaluation_id = n.evaluation_id AND pe.model_a = n.model_a AND pe.model_b = n.model_b
        JOIN evaluations e ON e.id = n.evaluation_id
    """,
    # Q6: Fleiss' kappa over all models of an evaluation, next to the raw (all-agree) rate.
    "fleiss_kappa": """
        WITH c AS (
            SELECT evaluation_id, example_id, normalized_type AS cat, COUNT(*) AS nij
            FROM predictions GROUP BY evaluation_id, example_id, normalized_type
        ), ex AS (
            SELECT evaluation_id, example_id, SUM(nij) AS m, SUM(nij * nij) AS s2
            FROM c GROUP BY evaluation_id, example_id
        ), pi AS (
            SELECT evaluation_id, COUNT(*) AS n_examples, MAX(m) AS raters,
                   AVG((s2 - m) * 1.0 / (m * (m - 1))) AS p_bar
            FROM ex GROUP BY evaluation_id
        ), pj AS (
            SELECT evaluation_id, cat, SUM(nij) AS tot FROM c GROUP BY evaluation_id, cat
        ), pe AS (
            SELECT pj.evaluation_id,
                   SUM((pj.tot * 1.0 / (pi.n_examples * pi.raters)) * (pj.tot * 1.0 / (pi.n_examples * pi.raters))) AS p_e
            FROM pj JOIN pi ON pi.evaluation_id = pj.evaluation_id GROUP BY pj.evaluation_id
        )
        SELECT e.run_id, pi.evaluation_id, pi.n_examples AS examples, pi.raters AS models,
               e.full_agreement_rate AS raw_agreement, pi.p_bar AS observed_agreement, pe.p_e AS expected_agreement,
               CASE WHEN pe.p_e < 1 THEN (pi.p_bar - pe.p_e) / (1.0 - pe.p_e) END AS fleiss_kappa
        FROM pi JOIN pe ON pe.evaluation_id = pi.evaluation_id JOIN evaluations e ON e.id = pi.evaluation_id
    """,
    # Q7: one row per run and model: the configuration that may differ between runs and the
    # results of the run's latest completed comparison.
    "run_summary": """
        SELECT r.id AS run_id, r.status, r.created_at, r.n_train + r.n_validation AS examples, r.seed,
               r.models, r.init_requested, m.name AS model, m.init,
               json_extract(m.hyperparams_json, '$.epochs') AS epochs,
               json_extract(m.hyperparams_json, '$.learning_rate') AS learning_rate,
               json_extract(m.hyperparams_json, '$.micro_batch_size') * json_extract(m.hyperparams_json, '$.grad_accum')
                   AS effective_batch,
               m.final_loss, m.train_seconds, le.id AS evaluation_id, le.full_agreement_rate AS agreement_rate,
               (SELECT AVG(p.format_ok) FROM predictions p
                 WHERE p.evaluation_id = le.id AND p.run_model_id = m.id) AS format_accuracy,
               (SELECT AVG(p.matches_gold) FROM predictions p
                 WHERE p.evaluation_id = le.id AND p.run_model_id = m.id) AS gold_accuracy
        FROM runs r JOIN run_models m ON m.run_id = r.id
        LEFT JOIN latest_evaluations le ON le.run_id = r.id
    """,
}



def _json_number(key: str) -> str:
    """json_extract(m.hyperparams_json, '$.key') of a number, in PostgreSQL (NULL when not a number)."""
    return (f"(CASE WHEN json_typeof(m.hyperparams_json::json -> '{key}') = 'number' "
            f"THEN (m.hyperparams_json::json ->> '{key}')::numeric END)")


_RATE = {c: (f"AVG({c})", f"AVG({c}::int::float8)") for c in (
    "p.format_ok", "p.matches_gold", "a.full_agreement", "a.majority_matches_gold")}
_LEVEL = "ROUND(1.0 * majority_count / n_models, 6)"
# The same views for PostgreSQL: booleans made integers before arithmetic, means in DOUBLE PRECISION,
# JSON read with ->>, every selected column grouped or functionally dependent on a grouped key.
VIEWS_PG = {
    "latest_evaluations": _pg(VIEWS["latest_evaluations"]),
    "disagreements": _pg(VIEWS["disagreements"],
                         ("p.normalized_type, p.matches_gold",
                          "p.normalized_type, p.matches_gold::int AS matches_gold"),
                         ("WHERE a.full_agreement = 0", "WHERE NOT a.full_agreement")),
    "disagreement_by_form": _pg(VIEWS["disagreement_by_form"], ("SUM(1 - a.full_agreement)",
                                                                "SUM(1 - a.full_agreement::int)"),
                                _RATE["a.full_agreement"], ("AVG(x.excerpt_words)", "AVG(x.excerpt_words::float8)")),
    "model_comparison": _pg(VIEWS["model_comparison"], _RATE["p.format_ok"], _RATE["p.matches_gold"],
                            ("GROUP BY e.run_id, p.evaluation_id, p.model",
                             "GROUP BY e.run_id, p.evaluation_id, p.model, m.id")),
    "confidence": _pg(VIEWS["confidence"],
                      ("SELECT e.run_id, a.evaluation_id, a.full_agreement,",
                       "SELECT e.run_id, a.evaluation_id, a.full_agreement::int AS full_agreement,"),
                      _RATE["p.matches_gold"], _RATE["a.majority_matches_gold"]),
    "risk_coverage": _pg(VIEWS["risk_coverage"],
                         (_LEVEL, "ROUND(CAST(1.0 * majority_count / n_models AS NUMERIC), 6)::float8"),
                         ("SUM(majority_matches_gold)", "SUM(majority_matches_gold::int)"),
                         ("SUM(n) OVER w AS covered", "(SUM(n) OVER w)::bigint AS covered"),
                         ("SUM(correct) OVER w AS correct", "(SUM(correct) OVER w)::bigint AS correct"),
                         ("SUM(n) OVER (PARTITION BY evaluation_id) AS total",
                          "(SUM(n) OVER (PARTITION BY evaluation_id))::bigint AS total")),
    "aurc": _pg(VIEWS["aurc"]),
    "confusion": _pg(VIEWS["confusion"]),
    "vote": _pg(VIEWS["vote"], _RATE["a.majority_matches_gold"], _RATE["p.matches_gold"],
                ("SUM(a.majority_count * 2 <= a.n_models)", "SUM((a.majority_count * 2 <= a.n_models)::int)")),
    "pairwise_agreement": _pg(VIEWS["pairwise_agreement"], ("AVG(a = b)", "AVG((a = b)::int::float8)"),
                              ("SUM(ca.k * cb.k) AS s", "SUM(ca.k * cb.k)::bigint AS s")),
    "fleiss_kappa": _pg(VIEWS["fleiss_kappa"], ("SUM(nij) AS m", "SUM(nij)::bigint AS m"),
                        ("SUM(nij * nij) AS s2", "SUM(nij * nij)::bigint AS s2"),
                        ("SUM(nij) AS tot", "SUM(nij)::bigint AS tot")),
    "run_summary": _pg(VIEWS["run_summary"], _RATE["p.format_ok"], _RATE["p.matches_gold"],
                       *((f"json_extract(m.hyperparams_json, '$.{k}')", _json_number(k))
                         for k in ("epochs", "learning_rate", "micro_batch_size", "grad_accum"))),
}


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("rouge1_f1", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rouge_l_f1", sa.Float(), nullable=True))
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {_for_dialect(sql, VIEWS_PG[name])}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("rouge_l_f1")
        batch.drop_column("rouge1_f1")
