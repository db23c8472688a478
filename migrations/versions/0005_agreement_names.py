"""One meaning per agreement column: `raw_agreement` named two different things.

In `pairwise_agreement` it was the share of examples where two models' normalized types are
equal, an empty type counting as a category of its own (Cohen's observed agreement); in
`fleiss_kappa` it was the share where every model produced the same non-empty type (the
comparison's full agreement). A two-model run whose models both produced no type showed 1.0
in one table and 0.0 in the other. Both views now carry both figures under distinct names:
`observed_agreement` (what the kappa is computed from) and `full_agreement` (every model
gave the same non-empty type, as `agreements.full_agreement` counts it).

Revision ID: 0005_agreement_names
Revises: 0004_run_process
Create Date: 2026-11-28
"""
from alembic import op

from wmg.store.dialect import for_dialect as _for_dialect, pg_view as _pg

revision = "0005_agreement_names"
down_revision = "0004_run_process"
branch_labels = None
depends_on = None

PAIRWISE_CTES = """
        WITH pairs AS (
            SELECT p1.evaluation_id, p1.model AS model_a, p2.model AS model_b,
                   p1.normalized_type AS a, p2.normalized_type AS b
            FROM predictions p1 JOIN predictions p2
              ON p1.evaluation_id = p2.evaluation_id AND p1.example_id = p2.example_id
             AND p1.run_model_id < p2.run_model_id
        ), n AS (
            SELECT evaluation_id, model_a, model_b, COUNT(*) AS n, AVG(a = b) AS po,
                   AVG(a = b AND COALESCE(a, '') <> '') AS full
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
        )"""
PAIRWISE_TAIL = """
               COALESCE(pe.s, 0) * 1.0 / (n.n * n.n) AS expected_agreement,
               CASE WHEN COALESCE(pe.s, 0) < n.n * n.n
                    THEN (n.po - COALESCE(pe.s, 0) * 1.0 / (n.n * n.n)) / (1.0 - COALESCE(pe.s, 0) * 1.0 / (n.n * n.n))
               END AS cohen_kappa
        FROM n LEFT JOIN pe ON pe.evaluation_id = n.evaluation_id AND pe.model_a = n.model_a AND pe.model_b = n.model_b
        JOIN evaluations e ON e.id = n.evaluation_id"""
PAIRWISE = {
    "new": PAIRWISE_CTES + """
        SELECT e.run_id, n.evaluation_id, n.model_a, n.model_b, n.n AS examples, n.po AS observed_agreement,
               n.full AS full_agreement,""" + PAIRWISE_TAIL,
    "old": PAIRWISE_CTES + """
        SELECT e.run_id, n.evaluation_id, n.model_a, n.model_b, n.n AS examples, n.po AS raw_agreement,""" + PAIRWISE_TAIL,
}

FLEISS_CTES = """
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
        )"""
FLEISS_TAIL = """ pi.p_bar AS observed_agreement, pe.p_e AS expected_agreement,
               CASE WHEN pe.p_e < 1 THEN (pi.p_bar - pe.p_e) / (1.0 - pe.p_e) END AS fleiss_kappa
        FROM pi JOIN pe ON pe.evaluation_id = pi.evaluation_id JOIN evaluations e ON e.id = pi.evaluation_id"""
FLEISS = {
    "new": FLEISS_CTES + """
        SELECT e.run_id, pi.evaluation_id, pi.n_examples AS examples, pi.raters AS models,
               e.full_agreement_rate AS full_agreement,""" + FLEISS_TAIL,
    "old": FLEISS_CTES + """
        SELECT e.run_id, pi.evaluation_id, pi.n_examples AS examples, pi.raters AS models,
               e.full_agreement_rate AS raw_agreement,""" + FLEISS_TAIL,
}



# PostgreSQL: comparisons made integers before their means; integer sums kept integers.
_PAIRWISE_PG = (("AVG(a = b AND COALESCE(a, '') <> '')", "AVG((a = b AND COALESCE(a, '') <> '')::int::float8)"),
                ("AVG(a = b)", "AVG((a = b)::int::float8)"), ("SUM(ca.k * cb.k) AS s", "SUM(ca.k * cb.k)::bigint AS s"))
_FLEISS_PG = (("SUM(nij) AS m", "SUM(nij)::bigint AS m"), ("SUM(nij * nij) AS s2", "SUM(nij * nij)::bigint AS s2"),
              ("SUM(nij) AS tot", "SUM(nij)::bigint AS tot"))


def _views(which: str) -> None:
    for name, sql, swaps in (("pairwise_agreement", PAIRWISE[which], _PAIRWISE_PG),
                             ("fleiss_kappa", FLEISS[which], _FLEISS_PG)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
        op.execute(f"CREATE VIEW {name} AS {_for_dialect(sql, _pg(sql, *swaps))}")


def upgrade() -> None:
    _views("new")


def downgrade() -> None:
    _views("old")
