"""One function per research question; each reads its SQL view and returns tables."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

from . import Selected, Table, Wide, _ids, query

TIE_RULE = ("majority vote: the most common normalized type among the models; a tie goes to the type of "
            "the model listed first in the run's --models order; an example where no model produced a type "
            "counts as wrong")


def _by_eval(sel: Sequence[Selected]) -> dict[int, Selected]:
    return {s.evaluation_id: s for s in sel}


def _finite(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


# ---------------------------------------------------------------- Q1
def disagreements(db, sel: Sequence[Selected]) -> list[Table]:
    """Where the models disagree, side by side; and whether disagreement tracks length or instruction form."""
    from scipy import stats

    models = list(dict.fromkeys(m for s in sel for m in s.models))
    rows = query(db, f"SELECT * FROM disagreements WHERE evaluation_id IN ({_ids(sel)}) "
                     "ORDER BY run_id, evaluation_id, position, model")
    grouped: dict[tuple, dict] = {}
    for r in rows:
        key = (r["run_id"], r["evaluation_id"], r["position"])
        g = grouped.setdefault(key, {"gold": r["gold_type"], "form": r["instruction_form"],
                                     "words": r["excerpt_words"], "pred": {}})
        g["pred"][r["model"]] = (r["gadget_type"], r["normalized_type"], r["matches_gold"])
    cols = ["run_id", "evaluation_id", "example", "gold_type", "form", "words", "model", "gadget_type",
            "normalized_type", "matches_gold"]
    out = []
    for (run, ev, pos), g in grouped.items():
        for m in models:
            t = g["pred"].get(m)
            if t:
                out.append([run, ev, pos, g["gold"], g["form"], g["words"], m, t[0], t[1] or "(none)", bool(t[2])])
    main = Table("disagreements", "Disagreements: examples where the models' normalized types differ", cols, out,
                 wide=Wide("model", ("gadget_type", "normalized_type"), hide=("matches_gold",)), group=2)

    # correlation with excerpt length, and disagreement by instruction form, per evaluation
    corr_rows, form_rows = [], []
    for s in sel:
        ex = query(db, "SELECT x.excerpt_words AS w, 1 - a.full_agreement AS d, x.instruction_form AS f "
                       "FROM agreements a JOIN examples x ON x.id = a.example_id WHERE a.evaluation_id = :e",
                   e=s.evaluation_id)
        w = [r["w"] for r in ex]
        d = [r["d"] for r in ex]
        if len(set(d)) > 1 and len(set(w)) > 1:
            pb = stats.pointbiserialr(d, w)
            sp = stats.spearmanr(d, w)
            corr_rows.append([s.run_id, s.evaluation_id, len(ex), sum(d), _finite(float(pb.statistic)),
                              _finite(float(pb.pvalue)), _finite(float(sp.statistic)), _finite(float(sp.pvalue))])
        else:
            corr_rows.append([s.run_id, s.evaluation_id, len(ex), sum(d), None, None, None, None])
        forms = query(db, "SELECT instruction_form, examples, disagreements, disagreement_rate, mean_excerpt_words "
                          "FROM disagreement_by_form WHERE evaluation_id = :e ORDER BY instruction_form",
                      e=s.evaluation_id)
        by = {f["instruction_form"]: f for f in forms}
        p = None
        if "category" in by and "open" in by:
            c, o = by["category"], by["open"]
            table = [[c["disagreements"], c["examples"] - c["disagreements"]],
                     [o["disagreements"], o["examples"] - o["disagreements"]]]
            p = float(stats.fisher_exact(table).pvalue)
        for f in forms:
            form_rows.append([s.run_id, s.evaluation_id, f["instruction_form"], f["examples"], f["disagreements"],
                              f["disagreement_rate"], f["mean_excerpt_words"],
                              p if f["instruction_form"] in ("category", "open") else None])
    corr = Table("length", "Disagreement against excerpt length",
                 ["run_id", "evaluation_id", "examples", "disagreements", "point_biserial_r", "p_value", "spearman_rho",
                  "spearman_p"], corr_rows,
                 ["r > 0: longer excerpts are disagreed on more often; undefined (-) when every example is "
                  "agreed on or every one disagreed on"])
    form = Table("by_form", "Disagreement by instruction form",
                 ["run_id", "evaluation_id", "form", "examples", "disagreements", "disagreement_rate", "mean_words",
                  "fisher_p_category_vs_open"], form_rows,
                 ["category: the instruction names the gadget category; open: the model must infer it; "
                  "p from Fisher's exact test on the 2x2 table of form against disagreement"])
    return [main, corr, form]


# ---------------------------------------------------------------- Q2
def models(db, sel: Sequence[Selected]) -> list[Table]:
    from ..stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, paired, wilson, wilson_of_rate
    from ..store.repo import fill_missing_rouge

    filled = fill_missing_rouge(db, [s.evaluation_id for s in sel])
    rows = query(db, f"SELECT * FROM model_comparison WHERE evaluation_id IN ({_ids(sel)}) "
                     "ORDER BY run_id, evaluation_id, model")
    order = {(s.evaluation_id, m): i for s in sel for i, m in enumerate(s.models)}
    rows.sort(key=lambda r: (r["run_id"], r["evaluation_id"], order.get((r["evaluation_id"], r["model"]), 99)))
    cols = ["run_id", "evaluation_id", "model", "type", "init", "parameters", "examples", "format_accuracy",
            "format_accuracy_low", "format_accuracy_high", "gold_accuracy", "gold_accuracy_low", "gold_accuracy_high",
            "rouge1_f1", "rougeL_f1", "final_loss", "val_loss", "train_seconds"]
    out = [[r["run_id"], r["evaluation_id"], r["model"], r["model_type"], r["init"], r["parameters"], r["examples"],
            r["format_accuracy"], *wilson_of_rate(r["format_accuracy"], r["examples"]),
            r["gold_accuracy"], *wilson_of_rate(r["gold_accuracy"], r["examples"]), r["rouge1_f1"], r["rouge_l_f1"],
            r["final_loss"], r["final_val_loss"], r["train_seconds"]] for r in rows]
    notes = ["type 'baseline': a reference classifier fitted on the run's training split (tfidf-logreg: word 1-2-gram "
             "TF-IDF + logistic regression; majority-class), scored on the gold type only",
             "gold_accuracy: the normalized gadget type equals the gold's; _low/_high: 95% Wilson score interval; "
             "ROUGE F1 of the whole output against the gold output (rouge-score, stemmed); final_loss: mean training "
             "loss of the last epoch"]
    if filled:
        notes.append(f"ROUGE was computed now for {filled} predictions stored before it was recorded")

    # per example: which model got the gold type, and the instruction form
    hits = query(db, f"SELECT p.evaluation_id, p.example_id, p.model, p.matches_gold, x.instruction_form "
                     f"FROM predictions p JOIN examples x ON x.id = p.example_id "
                     f"WHERE p.evaluation_id IN ({_ids(sel)}) ORDER BY p.evaluation_id, p.example_id")
    hits += query(db, f"SELECT b.evaluation_id, b.example_id, b.baseline AS model, b.matches_gold, "
                      f"x.instruction_form FROM baseline_predictions b JOIN examples x ON x.id = b.example_id "
                      f"WHERE b.evaluation_id IN ({_ids(sel)}) ORDER BY b.evaluation_id, b.example_id, b.baseline")
    by_eval: dict[int, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(dict))
    form_of: dict[int, str] = {}
    for h in hits:
        by_eval[h["evaluation_id"]][h["model"]][h["example_id"]] = int(bool(h["matches_gold"]))
        form_of[h["example_id"]] = h["instruction_form"]
    pair_rows, form_rows = [], []
    for s in sel:
        got = by_eval.get(s.evaluation_id, {})
        baselines = [b for b in got if b not in s.models]
        for b in baselines:  # a baseline row beside the models: gold-type accuracy only
            n, k = len(got[b]), sum(got[b].values())
            out.append([s.run_id, s.evaluation_id, b, "baseline", "baseline", None, n, None, None, None, k / n,
                        *wilson(k, n), None, None, None, None, None])
        systems = s.models + baselines
        for i, a in enumerate(systems):
            for b in systems[i + 1:]:
                ids = sorted(set(got.get(a, {})) & set(got.get(b, {})))
                if not ids:
                    continue
                p = paired([got[a][e] for e in ids], [got[b][e] for e in ids])
                pair_rows.append([s.run_id, s.evaluation_id, a, b, p["examples"], sum(got[a][e] for e in ids) / len(ids),
                                  sum(got[b][e] for e in ids) / len(ids), p["difference"], p["difference_low"],
                                  p["difference_high"], p["a_only_right"], p["b_only_right"], p["mcnemar_p"]])
        for form in sorted({form_of[e] for m in systems for e in got.get(m, {})}):
            for m in systems:
                mine = [v for e, v in got.get(m, {}).items() if form_of[e] == form]
                if mine:
                    form_rows.append([s.run_id, s.evaluation_id, form, m, len(mine), sum(mine) / len(mine),
                                      *wilson(sum(mine), len(mine))])
    pairs = Table("pairs", "Paired comparison of models and baselines on the same examples (gold-type accuracy)",
                  ["run_id", "evaluation_id", "model_a", "model_b", "examples", "accuracy_a", "accuracy_b",
                   "difference", "difference_low", "difference_high", "only_a_right", "only_b_right", "mcnemar_p"],
                  pair_rows,
                  [f"difference = accuracy_a - accuracy_b; _low/_high: percentile bootstrap over examples "
                   f"({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}); mcnemar_p: exact McNemar test on the "
                   "examples exactly one of the two got right"], group=2)
    forms = Table("by_form", "Gold-type accuracy by instruction form",
                  ["run_id", "evaluation_id", "instruction_form", "model", "examples", "gold_accuracy",
                   "gold_accuracy_low", "gold_accuracy_high"], form_rows,
                  ["category: the instruction names the gold category (the answer is given away); open: the model "
                   "must decide; other: paraphrases, some of which name it; _low/_high: 95% Wilson score interval"],
                  group=3)
    return [Table("models", "Architecture comparison", cols, out, notes, group=2), pairs, forms]


# ---------------------------------------------------------------- Q3
def confidence(db, sel: Sequence[Selected]) -> list[Table]:
    rows = query(db, f"SELECT * FROM confidence WHERE evaluation_id IN ({_ids(sel)})")
    by = defaultdict(dict)
    for r in rows:
        by[(r["run_id"], r["evaluation_id"], r["model"])][r["full_agreement"]] = (r["accuracy"], r["examples"])
    from ..stats import wilson_of_rate

    cols = ["run_id", "evaluation_id", "model", "agree_examples", "accuracy_when_all_agree",
            "accuracy_when_all_agree_low", "accuracy_when_all_agree_high", "disagree_examples", "accuracy_when_not",
            "accuracy_when_not_low", "accuracy_when_not_high", "difference"]
    out = []
    for s in sel:
        for m in s.models + ["(majority vote)"]:
            g = by.get((s.run_id, s.evaluation_id, m), {})
            a, d = g.get(1, (None, 0)), g.get(0, (None, 0))
            diff = a[0] - d[0] if a[0] is not None and d[0] is not None else None
            out.append([s.run_id, s.evaluation_id, m, a[1], a[0], *wilson_of_rate(a[0], a[1]), d[1], d[0],
                        *wilson_of_rate(d[0], d[1]), diff])
    t1 = Table("confidence", "Agreement as confidence: accuracy where all models agree vs where they do not", cols,
               out, ["accuracy: the normalized type equals the gold's; _low/_high: 95% Wilson score interval; "
                     + TIE_RULE], group=2)
    curve_rows, area_rows = [], []
    for s in sel:
        if len(s.models) < 2:
            continue
        pts = query(db, "SELECT agreement_level, covered, total, coverage, risk FROM risk_coverage "
                        "WHERE evaluation_id = :e ORDER BY coverage", e=s.evaluation_id)
        curve_rows += [[s.run_id, s.evaluation_id, p["agreement_level"], p["covered"], p["total"], p["coverage"],
                        p["risk"]] for p in pts]
        a = query(db, "SELECT aurc, points FROM aurc WHERE evaluation_id = :e", e=s.evaluation_id)
        base = query(db, "SELECT 1.0 - AVG(majority_matches_gold) AS r FROM agreements WHERE evaluation_id = :e",
                     e=s.evaluation_id)[0]["r"]
        area_rows.append([s.run_id, s.evaluation_id, len(s.models), a[0]["aurc"] if a else None,
                          a[0]["points"] if a else 0, base])
    t2 = Table("risk_coverage", "Risk-coverage of the majority vote, ordered by agreement",
               ["run_id", "evaluation_id", "agreement_level", "covered", "total", "coverage", "risk"], curve_rows,
               ["agreement level = (models giving the majority type) / models; each point covers every example "
                "at or above its level; risk = 1 - majority-vote accuracy on the covered examples"])
    t3 = Table("aurc", "AURC (area under the risk-coverage curve; lower is better)",
               ["run_id", "evaluation_id", "models", "aurc", "points", "risk_at_full_coverage"], area_rows,
               ["step integration: sum of risk x coverage gained at each level; equal to the full-coverage risk "
                "when agreement carries no information, lower when agreeing examples are more often right"])
    return [t1, t2, t3]


# ---------------------------------------------------------------- Q4
def by_type(db, sel: Sequence[Selected]) -> list[Table]:
    from ..parse import CANONICAL_LABELS
    from ..stats import wilson

    rows = query(db, f"SELECT * FROM error_by_type WHERE evaluation_id IN ({_ids(sel)})")
    acc_rows, conf_rows = [], []
    for s in sel:
        mine = [r for r in rows if r["evaluation_id"] == s.evaluation_id]
        labels = sorted({r["gold_type"] for r in mine})
        cell = {(r["gold_type"], r["model"]): r for r in mine}
        total = {label: sum((cell[(label, m)]["accuracy"] or 0) for m in s.models if (label, m) in cell)
                 for label in labels}
        base = query(db, "SELECT COALESCE(x.gold_type, '(none)') AS gold_type, b.baseline, COUNT(*) AS examples, "
                         "SUM(b.matches_gold) AS correct FROM baseline_predictions b JOIN examples x ON x.id = b.example_id "
                         "WHERE b.evaluation_id = :e GROUP BY 1, 2 ORDER BY 2", e=s.evaluation_id)
        for label in sorted(labels, key=lambda l: (total[l], l)):  # hardest first
            rate = next(cell[(label, m)]["disagreement_rate"] for m in s.models if (label, m) in cell)
            for m in s.models:
                r = cell.get((label, m))
                if r is not None:
                    acc_rows.append([s.run_id, s.evaluation_id, label, r["examples"], rate, m, r["correct"],
                                     r["accuracy"], *wilson(r["correct"], r["examples"])])
            for b in (b for b in base if b["gold_type"] == label):
                acc_rows.append([s.run_id, s.evaluation_id, label, b["examples"], rate, f"(baseline) {b['baseline']}",
                                 b["correct"], b["correct"] / b["examples"], *wilson(b["correct"], b["examples"])])
        conf = query(db, "SELECT model, gold_label, predicted_label, n FROM confusion WHERE evaluation_id = :e",
                     e=s.evaluation_id)
        predicted = [l for l in CANONICAL_LABELS if any(c["predicted_label"] == l for c in conf)]
        predicted += sorted({c["predicted_label"] for c in conf} - set(predicted) - {"(other)"})
        if any(c["predicted_label"] == "(other)" for c in conf):
            predicted.append("(other)")
        gold_labels = sorted({c["gold_label"] for c in conf})
        for m in s.models:
            counts = {(c["gold_label"], c["predicted_label"]): c["n"] for c in conf if c["model"] == m}
            conf_rows += [[s.run_id, s.evaluation_id, m, g, p, counts.get((g, p), 0)]
                          for g in gold_labels for p in predicted]
    return [
        Table("by_type", "Error analysis by gadget type (hardest first)",
              ["run_id", "evaluation_id", "gold_type", "examples", "disagreement_rate", "model", "correct",
               "accuracy", "accuracy_low", "accuracy_high"], acc_rows,
              ["accuracy: the model's normalized type equals the gold's; _low/_high: 95% Wilson score interval; "
               "disagreement_rate: examples of this type where the models' normalized types differ; (baseline): a "
               "reference classifier fitted on the training split"],
              wide=Wide("model", ("accuracy",), hide=("correct",)), group=2),
        Table("confusion", "Confusion matrices (rows: model and gold label; columns: predicted canonical label)",
              ["run_id", "evaluation_id", "model", "gold_label", "predicted_label", "n"], conf_rows,
              ["(other): a gadget type that normalizes to none of the six canonical labels, or no type at all"],
              wide=Wide("predicted_label", ("n",)), group=3),
    ]


# ---------------------------------------------------------------- Q5
def vote(db, sel: Sequence[Selected]) -> list[Table]:
    from ..stats import wilson_of_rate

    rows = query(db, f"SELECT * FROM vote WHERE evaluation_id IN ({_ids(sel)})")
    base = query(db, f"SELECT evaluation_id, baseline, COUNT(*) AS examples, AVG(matches_gold) AS accuracy "
                     f"FROM baseline_predictions WHERE evaluation_id IN ({_ids(sel)}) "
                     "GROUP BY evaluation_id, baseline ORDER BY baseline")
    out = []
    for s in sel:
        mine = {r["model"]: r for r in rows if r["evaluation_id"] == s.evaluation_id}
        mv = mine["(majority vote)"]
        best = max((mine[m]["accuracy"] for m in s.models if m in mine), default=None)
        for m in s.models + ["(majority vote)"]:
            r = mine.get(m)
            if r is None:
                continue
            gain = (mv["accuracy"] - r["accuracy"]) if m != "(majority vote)" else (
                mv["accuracy"] - best if best is not None else None)
            out.append([s.run_id, s.evaluation_id, len(s.models), m, r["examples"], r["accuracy"],
                        *wilson_of_rate(r["accuracy"], r["examples"]), r["ties_or_no_majority"], gain])
        for b in (b for b in base if b["evaluation_id"] == s.evaluation_id):
            out.append([s.run_id, s.evaluation_id, len(s.models), f"(baseline) {b['baseline']}", b["examples"],
                        b["accuracy"], *wilson_of_rate(b["accuracy"], b["examples"]), None,
                        mv["accuracy"] - b["accuracy"]])
    notes = [TIE_RULE, "_low/_high: 95% Wilson score interval; (baseline) rows: reference classifiers fitted on the "
             "training split, never part of the vote",
             "vote_gain: majority-vote accuracy minus this model's (for the vote row: minus the best single model; for a "
             "baseline row: minus the baseline's)"]
    if any(len(s.models) < 3 for s in sel):
        notes.append("with two models a vote cannot break a disagreement: the tie rule returns the first model's "
                     "answer, so the vote equals that model wherever they disagree; it is meaningful with three or more")
    return [Table("vote", "Majority voting against each model",
                  ["run_id", "evaluation_id", "models", "model", "examples", "accuracy", "accuracy_low",
                   "accuracy_high", "ties_or_no_majority", "vote_gain"], out, notes, group=3)]


# ---------------------------------------------------------------- Q6
AGREEMENT_TERMS = ("full_agreement: share of examples where every model gave the same non-empty normalized type "
                   "(as the comparison counts it); observed_agreement: share where the normalized types are equal, "
                   "an empty type counting as a category of its own (what the kappa is computed from)")


def agreement(db, sel: Sequence[Selected]) -> list[Table]:
    pairs = query(db, f"SELECT * FROM pairwise_agreement WHERE evaluation_id IN ({_ids(sel)}) "
                      "ORDER BY run_id, evaluation_id, model_a, model_b")
    order = {(s.evaluation_id, m): i for s in sel for i, m in enumerate(s.models)}
    pairs.sort(key=lambda r: (r["run_id"], r["evaluation_id"], order.get((r["evaluation_id"], r["model_a"])),
                              order.get((r["evaluation_id"], r["model_b"]))))
    t1 = Table("pairwise", "Pairwise agreement (Cohen's kappa on normalized types)",
               ["run_id", "evaluation_id", "model_a", "model_b", "examples", "full_agreement", "observed_agreement",
                "expected_agreement", "cohen_kappa"],
               [[r["run_id"], r["evaluation_id"], r["model_a"], r["model_b"], r["examples"], r["full_agreement"],
                 r["observed_agreement"], r["expected_agreement"], r["cohen_kappa"]] for r in pairs],
               [AGREEMENT_TERMS, "kappa = (observed - expected) / (1 - expected), expected from each model's own "
                "type frequencies; undefined (-) when expected agreement is 1"])
    fl = query(db, f"SELECT * FROM fleiss_kappa WHERE evaluation_id IN ({_ids(sel)}) ORDER BY run_id, evaluation_id")
    t2 = Table("all_models", "Agreement of all models (Fleiss' kappa)",
               ["run_id", "evaluation_id", "models", "examples", "full_agreement", "observed_agreement",
                "expected_agreement", "fleiss_kappa"],
               [[r["run_id"], r["evaluation_id"], r["models"], r["examples"], r["full_agreement"],
                 r["observed_agreement"], r["expected_agreement"], r["fleiss_kappa"]] for r in fl],
               [AGREEMENT_TERMS + "; for more than two models observed_agreement is Fleiss' mean pairwise "
                "agreement per example"])
    sem = query(db, f"SELECT * FROM semantic_agreement WHERE evaluation_id IN ({_ids(sel)}) "
                    "ORDER BY run_id, evaluation_id, judgment_set_id")
    t3 = Table("semantic", "Semantic agreement per judge, beside string agreement",
               ["run_id", "evaluation_id", "judge", "judgment_set", "examples", "string_agreement", "full_rate",
                "full_or_partial_rate", "invalid_rate"],
               [[r["run_id"], r["evaluation_id"], r["judge"], r["judgment_set_id"], r["examples"],
                 r["string_agreement_rate"], r["full_rate"], r["full_or_partial_rate"], r["invalid_rate"]]
                for r in sem],
               ["no judge has judged these comparisons yet: `wmg judge --run-id N --judge rules`"] if not sem else
               ["full_rate: the judge found the models' outputs the same; full_or_partial_rate: at least related"])
    return [t1, t2, t3]


# ---------------------------------------------------------------- Q7
CONFIG_COLUMNS = ("examples", "epochs", "learning_rate", "effective_batch", "models", "init", "seed")


def runs(db, run_ids: Sequence[int] | None = None) -> list[Table]:
    """One record per run and model: the configuration that differs between the runs, and the results."""
    rows = query(db, "SELECT * FROM run_summary ORDER BY run_id, model")
    if run_ids:
        rows = [r for r in rows if r["run_id"] in set(run_ids)]
    order = {(r["run_id"], r["name"]): r["position"] for r in query(db, "SELECT run_id, name, position FROM run_models")}
    rows.sort(key=lambda r: (r["run_id"], order.get((r["run_id"], r["model"]), 99)))
    by_run: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_run[r["run_id"]].append(r)

    def config(rs):
        vals = {"examples": rs[0]["examples"], "models": rs[0]["models"], "seed": rs[0]["seed"],
                "init": ",".join(sorted({r["init"] or "-" for r in rs}))}
        for k in ("epochs", "learning_rate", "effective_batch"):
            v = sorted({r[k] for r in rs if r[k] is not None})
            vals[k] = v[0] if len(v) == 1 else "/".join(map(str, v))
        return vals

    configs = {rid: config(rs) for rid, rs in by_run.items()}
    varying = [c for c in CONFIG_COLUMNS if len({str(cfg[c]) for cfg in configs.values()}) > 1] or list(CONFIG_COLUMNS)
    cols = ["run_id", "status"] + varying + ["agreement_rate", "model", "format_accuracy", "gold_accuracy"]
    out = [[rid, r["status"]] + [configs[rid][c] for c in varying]
           + [r["agreement_rate"], r["model"], r["format_accuracy"], r["gold_accuracy"]]
           for rid, rs in by_run.items() for r in rs]
    notes = [f"configuration columns shown: those that differ between the runs ({', '.join(varying)})"
             if len(varying) < len(CONFIG_COLUMNS) else "no configuration differs, so all of it is shown",
             "results are from each run's latest completed comparison"]
    return [Table("runs", "Runs: how results move with the configuration", cols, out, notes,
                  group=len(varying) + 3)]


QUESTIONS = {
    "disagreements": disagreements,
    "models": models,
    "confidence": confidence,
    "by-type": by_type,
    "vote": vote,
    "agreement": agreement,
}
