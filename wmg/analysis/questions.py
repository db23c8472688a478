"""One function per research question; each reads its SQL view and returns tables."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

from ..store import Store
from . import Selected, Table, Wide, _ids

TIE_RULE = ("majority vote: the most common normalized type among the models; a tie goes to the type of "
            "the model listed first in the run's --models order; an example where no model produced a type "
            "counts as wrong")


def _by_eval(sel: Sequence[Selected]) -> dict[int, Selected]:
    return {s.evaluation_id: s for s in sel}


def _finite(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


# ---------------------------------------------------------------- Q1
def disagreements(store: Store, sel: Sequence[Selected]) -> list[Table]:
    """Where the models disagree, side by side; and whether disagreement tracks length or instruction form."""
    from scipy import stats

    models = list(dict.fromkeys(m for s in sel for m in s.models))
    rows = store.query(f"SELECT * FROM disagreements WHERE evaluation_id IN ({_ids(sel)}) "
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
        ex = store.query("SELECT x.excerpt_words AS w, CASE WHEN a.full_agreement THEN 0 ELSE 1 END AS d, "
                       "x.instruction_form AS f "
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
        forms = store.query("SELECT instruction_form, examples, disagreements, disagreement_rate, mean_excerpt_words "
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
def models(store: Store, sel: Sequence[Selected]) -> list[Table]:
    from ..stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, paired, wilson, wilson_of_rate

    filled = store.fill_missing_rouge([s.evaluation_id for s in sel])
    rows = store.query(f"SELECT * FROM model_comparison WHERE evaluation_id IN ({_ids(sel)}) "
                     "ORDER BY run_id, evaluation_id, model")
    order = {(s.evaluation_id, m): i for s in sel for i, m in enumerate(s.models)}
    rows.sort(key=lambda r: (r["run_id"], r["evaluation_id"], order.get((r["evaluation_id"], r["model"]), 99)))
    cols = ["run_id", "evaluation_id", "model", "type", "init", "parameters", "examples", "format_accuracy",
            "format_accuracy_low", "format_accuracy_high", "location_in_excerpt", "location_in_excerpt_low",
            "location_in_excerpt_high", "gold_accuracy", "gold_accuracy_low", "gold_accuracy_high",
            "rouge1_f1", "rougeL_f1", "final_loss", "val_loss", "train_seconds"]
    out = [[r["run_id"], r["evaluation_id"], r["model"], r["model_type"], r["init"], r["parameters"], r["examples"],
            r["format_accuracy"], *wilson_of_rate(r["format_accuracy"], r["examples"]),
            r["location_in_excerpt"], *wilson(r["location_spans"] or 0, r["well_formed"] or 0),
            r["gold_accuracy"], *wilson_of_rate(r["gold_accuracy"], r["examples"]), r["rouge1_f1"], r["rouge_l_f1"],
            r["final_loss"], r["final_val_loss"], r["train_seconds"]] for r in rows]
    notes = ["type 'baseline': a reference classifier fitted on the run's training split (tfidf-logreg: word 1-2-gram "
             "TF-IDF + logistic regression; majority-class), scored on the gold type only",
             "location_in_excerpt: share of the well-formed outputs whose location is an exact span of the excerpt "
             "(the dataset's locations all are)",
             "gold_accuracy: the normalized gadget type equals the gold's; _low/_high: 95% Wilson score interval; "
             "ROUGE F1 of the whole output against the gold output (rouge-score, stemmed); final_loss: mean training "
             "loss of the last epoch"]
    if filled:
        notes.append(f"ROUGE was computed now for {filled} predictions stored before it was recorded")

    # per evaluation, system and example: 1 when the gold type (models and baselines); the forms
    _, hits, form_of, _, _ = _per_example(store, sel)
    by_eval: dict[int, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(dict))
    for ev, examples in hits.items():
        for x in sorted(examples):
            for system, hit in examples[x].items():
                by_eval[ev][system][x] = hit
    pair_rows, form_rows = [], []
    for s in sel:
        got = by_eval.get(s.evaluation_id, {})
        baselines = sorted(b for b in got if b not in s.models)
        for b in baselines:  # a baseline row beside the models: gold-type accuracy only
            n, k = len(got[b]), sum(got[b].values())
            out.append([s.run_id, s.evaluation_id, b, "baseline", "baseline", None, n, None, None, None,
                        None, None, None, k / n,
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
                   "must decide; paraphrase: other wordings, some of which name it; _low/_high: 95% Wilson score interval"],
                  group=3)
    tables = [Table("models", "Architecture comparison", cols, out, notes, group=2), pairs, forms]
    return _study_tables(store, sel, by_eval, form_of) + tables


FORMS = ("all", "category", "open", "paraphrase")


def _study_tables(store: Store, sel: Sequence[Selected], by_eval, form_of) -> list[Table]:
    """A study's predictions pooled over its folds (every example evaluated once per seed): each
    system's accuracy over all of them with its Wilson interval, the spread of the per-fold
    figures, and paired tests on the pooled examples; overall and per instruction form."""
    import json

    from ..baseline import in_order
    from ..stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, mean_sd, paired, wilson

    studies: dict[int, list[Selected]] = defaultdict(list)
    for s in sel:
        if s.study_id is not None:
            studies[s.study_id].append(s)
    if not studies:
        return []
    info = {r["id"]: r for r in store.query(f"SELECT id, folds, seeds_json FROM studies WHERE id IN "
                                          f"({','.join(str(int(i)) for i in studies)})")}
    ids = _ids([s for ss in studies.values() for s in ss])
    fmt: dict[int, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(dict))
    span: dict[int, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(dict))  # of well-formed outputs
    for r in store.query(f"SELECT evaluation_id, example_id, model, format_ok, location_in_excerpt FROM predictions "
                       f"WHERE evaluation_id IN ({ids})"):
        fmt[r["evaluation_id"]][r["model"]][r["example_id"]] = int(bool(r["format_ok"]))
        if r["format_ok"]:
            span[r["evaluation_id"]][r["model"]][r["example_id"]] = int(bool(r["location_in_excerpt"]))
    line_of = {r["id"]: r["source_line"] for r in store.query(
        f"SELECT x.id, x.source_line FROM examples x JOIN evaluations e ON e.run_id = x.run_id WHERE e.id IN ({ids}) "
        "AND (x.evaluation_id = e.id OR (x.split = 'validation' AND x.evaluation_id IS NULL))")}
    rows, pair_rows = [], []
    for sid, ss in studies.items():
        folds, seeds = info[sid]["folds"], json.loads(info[sid]["seeds_json"])
        models = list(dict.fromkeys(m for s in ss for m in s.models))
        baselines = in_order(b for s in ss for b in by_eval.get(s.evaluation_id, {}) if b not in models)
        systems = models + baselines
        groups = [(seed, [s for s in ss if s.seed == seed]) for seed in seeds if any(s.seed == seed for s in ss)]
        if ss[0].source != "validation":  # every fold's models on the same lines of a file
            for seed, group in groups:
                _replicate_rows(sid, seed, group, folds, models, systems, (by_eval, fmt, span), form_of, line_of,
                                rows, pair_rows)
            continue

        def hits(group, m, form, table=by_eval):  # [(evaluation, example, 0/1)] pooled over the folds
            return [(s.evaluation_id, e, v) for s in group for e, v in table.get(s.evaluation_id, {}).get(m, {}).items()
                    if form == "all" or form_of.get(e) == form]

        for seed, group in groups:
            for form in FORMS:
                for m in systems:
                    got = hits(group, m, form)
                    if not got:
                        continue
                    k, n = sum(v for *_, v in got), len(got)
                    per_fold: dict[int, list[int]] = defaultdict(list)
                    for ev, _, v in got:
                        per_fold[ev].append(v)
                    fold_mean, fold_sd = mean_sd([sum(v) / len(v) for v in per_fold.values()])
                    f = hits(group, m, form, fmt) if m in models else []
                    fk = sum(v for *_, v in f)
                    sp = hits(group, m, form, span) if m in models else []
                    sk = sum(v for *_, v in sp)
                    rows.append([sid, seed, form, m, "model" if m in models else "baseline", len(group), folds, n,
                                 k / n, *wilson(k, n), fold_mean, fold_sd,
                                 fk / len(f) if f else None, *(wilson(fk, len(f)) if f else (None, None)),
                                 sk / len(sp) if sp else None, *(wilson(sk, len(sp)) if sp else (None, None))])
            for form in ("all", "open"):
                for i, a in enumerate(systems):
                    for b in systems[i + 1:]:
                        ha = {(ev, e): v for ev, e, v in hits(group, a, form)}
                        hb = {(ev, e): v for ev, e, v in hits(group, b, form)}
                        keys = sorted(set(ha) & set(hb))
                        if not keys:
                            continue
                        p = paired([ha[k] for k in keys], [hb[k] for k in keys])
                        pair_rows.append([sid, seed, form, a, b, p["examples"], sum(ha[k] for k in keys) / len(keys),
                                          sum(hb[k] for k in keys) / len(keys), p["difference"], p["difference_low"],
                                          p["difference_high"], p["a_only_right"], p["b_only_right"], p["mcnemar_p"]])
        if len(groups) > 1:  # every seed together: an example's score is its mean over the seeds
            for form in FORMS:
                for m in systems:
                    per_line: dict[int, list[int]] = defaultdict(list)
                    for _, group in groups:
                        for _, e, v in hits(group, m, form):
                            per_line[line_of.get(e, e)].append(v)
                    if not per_line:
                        continue
                    accuracy, low, high = _mean_of_line_means(per_line)
                    seed_mean, seed_sd = mean_sd([r[8] for r in rows if r[0] == sid and r[1] != "all" and r[2] == form
                                                 and r[3] == m])
                    rows.append([sid, "all", form, m, "model" if m in models else "baseline",
                                 sum(len(g) for _, g in groups), folds, len(per_line), accuracy, low, high,
                                 seed_mean, seed_sd, None, None, None, None, None, None])
    order = {f: i for i, f in enumerate(FORMS)}
    external = sorted({s.source for s in sel if s.study_id is not None and s.source != "validation"})
    rows.sort(key=lambda r: (r[0], str(r[1]) == "all", str(r[1]), order[r[2]]))
    study = Table(
        "study", "Study: every fold's models on the same lines of a file" if external else
        "Study: predictions pooled over the folds (every example evaluated once per seed)",
        ["study_id", "seed", "instruction_form", "system", "kind", "folds_done", "folds", "examples", "gold_accuracy",
         "gold_accuracy_low", "gold_accuracy_high", "fold_mean", "fold_sd", "format_accuracy", "format_accuracy_low",
         "format_accuracy_high", "location_in_excerpt", "location_in_excerpt_low", "location_in_excerpt_high"], rows,
        ["gold_accuracy over every pooled example, _low/_high its 95% Wilson score interval; fold_mean/fold_sd: mean "
         "and sample standard deviation of the per-fold accuracies (the spread that comes from which examples are "
         "held out); open: the instruction does not name the category, the figure to read; location_in_excerpt: "
         "share of the well-formed outputs whose location is an exact span of the excerpt",
         "kind baseline: a reference classifier fitted on each fold's training split (tfidf-logreg: word 1-2-gram "
         "TF-IDF + logistic regression; majority-class)",
         f"seed all: each example's mean over the seeds; interval: percentile bootstrap over examples "
         f"({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}); fold_mean/fold_sd there: over the seeds' "
         "pooled accuracies"] + ([REPLICATE_NOTE.format(", ".join(external))] if external else []),
        group=3)
    pairs = Table(
        "study_pairs", "Study: paired comparison on the pooled examples (gold-type accuracy)",
        ["study_id", "seed", "instruction_form", "model_a", "model_b", "examples", "accuracy_a", "accuracy_b",
         "difference", "difference_low", "difference_high", "only_a_right", "only_b_right", "mcnemar_p"], pair_rows,
        [f"difference = accuracy_a - accuracy_b; _low/_high: percentile bootstrap over examples "
         f"({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}); mcnemar_p: exact McNemar test on the "
         "examples exactly one of the two got right"] + (
            ["on a --source file: difference of the per-line means, only_a_right/only_b_right: lines where a's mean "
             "over the folds is above/below b's, no McNemar test (the per-line scores are not 0/1)"]
            if external else []), group=3)
    return [study, pairs]


def _mean_of_line_means(per_line: dict) -> tuple[float | None, float | None, float | None]:
    """Each line's mean over its replicates (seeds, or the folds' models on one file), then the mean
    over lines and its percentile bootstrap interval over lines; (None, None, None) without lines."""
    from ..stats import bootstrap

    means = [sum(v) / len(v) for v in per_line.values()]
    if not means:
        return None, None, None
    return sum(means) / len(means), *bootstrap(lambda idx: float(sum(means[i] for i in idx) / len(idx)), len(means))


REPLICATE_NOTE = ("on {}: every fold's models compared on the same lines, so the folds are replicates: examples "
                  "counts lines, not predictions; each line's score is its mean over the folds, gold_accuracy (and "
                  "format, location) the mean of those, _low/_high a percentile bootstrap over lines (the Wilson "
                  "interval of predictions pooled over the folds would count each line once per fold)")


def _replicate_rows(sid, seed, group, folds, models, systems, tables, form_of, line_of, rows, pair_rows) -> None:
    """A study's rows where every fold's models were compared on the same lines (`--source FILE`):
    per line the mean over the folds, then the mean over lines with a bootstrap interval over lines."""
    from ..stats import bootstrap_diff, mean_sd

    by_eval, fmt, span = tables

    def scores(s, m, form, table):  # one fold's {example: score} of system m in this form
        return {e: v for e, v in table.get(s.evaluation_id, {}).get(m, {}).items()
                if form == "all" or form_of.get(e) == form}

    def per_line(m, form, table):  # source line -> the folds' scores
        out: dict[int, list[int]] = defaultdict(list)
        for s in group:
            for e, v in scores(s, m, form, table).items():
                out[line_of.get(e, e)].append(v)
        return out

    for form in FORMS:
        for m in systems:
            lines = per_line(m, form, by_eval)
            if not lines:
                continue
            fold_mean, fold_sd = mean_sd([sum(v.values()) / len(v) for s in group if (v := scores(s, m, form, by_eval))])
            fmt_cells = _mean_of_line_means(per_line(m, form, fmt)) if m in models else (None, None, None)
            span_cells = _mean_of_line_means(per_line(m, form, span)) if m in models else (None, None, None)
            rows.append([sid, seed, form, m, "model" if m in models else "baseline", len(group), folds, len(lines),
                         *_mean_of_line_means(lines), fold_mean, fold_sd, *fmt_cells, *span_cells])
    for form in ("all", "open"):
        for i, a in enumerate(systems):
            for b in systems[i + 1:]:
                la, lb = per_line(a, form, by_eval), per_line(b, form, by_eval)
                keys = sorted(set(la) & set(lb))
                if not keys:
                    continue
                ma = [sum(la[k]) / len(la[k]) for k in keys]
                mb = [sum(lb[k]) / len(lb[k]) for k in keys]
                low, high = bootstrap_diff(ma, mb)
                pair_rows.append([sid, seed, form, a, b, len(keys), sum(ma) / len(keys), sum(mb) / len(keys),
                                  (sum(ma) - sum(mb)) / len(keys), low, high, sum(x > y for x, y in zip(ma, mb)),
                                  sum(y > x for x, y in zip(ma, mb)), None])


# ---------------------------------------------------------------- Q3
def confidence(store: Store, sel: Sequence[Selected]) -> list[Table]:
    from ..stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, aurc, bootstrap, wilson

    _, hits, form, agr, _ = _per_example(store, sel)
    out, area_rows, curve_rows = [], [], []
    units = _units(sel, hits, agr)
    lead = len(_lead_columns(units))
    for s in units:
        got, ag = hits.get(s.evaluation_id, {}), agr.get(s.evaluation_id, {})
        systems = s.models + ["(majority vote)"] + _baselines_in(got, s.models)
        for f, examples in _forms_of(sorted(ag), form):
            for m in systems:
                def hit(e):
                    if m == "(majority vote)":
                        return int(bool(ag[e]["majority_matches_gold"]))
                    return got.get(e, {}).get(m)

                split = {1: [], 0: []}
                for e in examples:
                    h = hit(e)
                    if h is not None:
                        split[int(bool(ag[e]["full_agreement"]))].append(h)
                a, d = split[1], split[0]
                ra = sum(a) / len(a) if a else None
                rd = sum(d) / len(d) if d else None
                out.append([*_lead(units, s), f, _shown(m, s.models), len(a), ra, *wilson(sum(a), len(a)), len(d), rd,
                            *wilson(sum(d), len(d)), ra - rd if a and d else None])
            if len(s.models) >= 2:
                levels = [ag[e]["majority_count"] / ag[e]["n_models"] for e in examples]
                right = [int(bool(ag[e]["majority_matches_gold"])) for e in examples]
                low, high = bootstrap(lambda idx: aurc([levels[j] for j in idx], [right[j] for j in idx]),
                                      len(examples))
                area_rows.append([*_lead(units, s), f, len(s.models), len(examples), aurc(levels, right),
                                  low, high, len(set(round(lv, 6) for lv in levels)), 1 - sum(right) / len(right)])
        if len(s.models) >= 2 and s.evaluation_id > 0:
            pts = store.query("SELECT agreement_level, covered, total, coverage, risk FROM risk_coverage "
                            "WHERE evaluation_id = :e ORDER BY coverage", e=s.evaluation_id)
            curve_rows += [[s.run_id, s.evaluation_id, p["agreement_level"], p["covered"], p["total"],
                            p["coverage"], p["risk"]] for p in pts]
    cols = [*_lead_columns(units), "instruction_form", "model", "agree_examples", "accuracy_when_all_agree",
            "accuracy_when_all_agree_low", "accuracy_when_all_agree_high", "disagree_examples", "accuracy_when_not",
            "accuracy_when_not_low", "accuracy_when_not_high", "difference"]
    t1 = Table("confidence", "Agreement as confidence: accuracy where all models agree vs where they do not", cols,
               out, ["accuracy: the normalized type equals the gold's; _low/_high: 95% Wilson score interval; "
                     + TIE_RULE, "(baseline) rows: a reference classifier's accuracy on the examples the models "
                     "agree on and on the rest (are the agreed examples simply easier?); never part of the agreement",
                     *([POOLED_NOTE] if lead > 2 else [])],
               group=lead + 1)
    t2 = Table("risk_coverage", "Risk-coverage of the majority vote, ordered by agreement",
               ["run_id", "evaluation_id", "agreement_level", "covered", "total", "coverage", "risk"], curve_rows,
               ["agreement level = (models giving the majority type) / models; each point covers every example "
                "at or above its level; risk = 1 - majority-vote accuracy on the covered examples"])
    t3 = Table("aurc", "AURC (area under the risk-coverage curve; lower is better), overall and per instruction form",
               [*_lead_columns(units), "instruction_form", "models", "examples", "aurc", "aurc_low", "aurc_high",
                "points", "risk_at_full_coverage"], area_rows,
               ["step integration: sum of risk x coverage gained at each level; equal to the full-coverage risk "
                "when agreement carries no information, lower when agreeing examples are more often right",
                f"_low/_high: percentile bootstrap over examples ({BOOTSTRAP_RESAMPLES} resamples, seed "
                f"{BOOTSTRAP_SEED})", *([POOLED_NOTE] if lead > 2 else [])], group=lead + 1)
    return [t1, t2, t3]


# ---------------------------------------------------------------- Q4
def by_type(store: Store, sel: Sequence[Selected]) -> list[Table]:
    from ..parse import CANONICAL_LABELS
    from ..stats import wilson

    _, hits, form, agr, gold = _per_example(store, sel)
    acc_rows, conf_rows = [], []
    units = _units(sel, hits, agr)
    lead = len(_lead_columns(units))
    for s in units:
        got, ag = hits.get(s.evaluation_id, {}), agr.get(s.evaluation_id, {})
        systems = s.models + _baselines_in(got, s.models)
        for f, examples in _forms_of(sorted(ag), form):
            labels: dict[str, list[int]] = defaultdict(list)
            for e in examples:
                labels[gold[e]].append(e)

            def cell(label, m):
                vals = [got[e][m] for e in labels[label] if m in got.get(e, {})]
                return sum(vals), len(vals)

            hardness = {label: sum(k / n for k, n in (cell(label, m) for m in s.models) if n) for label in labels}
            for label in sorted(labels, key=lambda l: (hardness[l], l)):  # hardest first
                rate = sum(1 - int(bool(ag[e]["full_agreement"])) for e in labels[label]) / len(labels[label])
                for m in systems:
                    k, n = cell(label, m)
                    if n:
                        acc_rows.append([*_lead(units, s), f, label, n, rate,
                                         _shown(m, s.models), k, k / n, *wilson(k, n)])
        ids = [s.evaluation_id] if s.evaluation_id > 0 else [x.evaluation_id for x in sel
                                                              if (x.study_id, x.seed) == (s.study_id, s.seed)]
        conf = store.query(f"SELECT model, gold_label, predicted_label, SUM(n) AS n FROM confusion "
                         f"WHERE evaluation_id IN ({','.join(map(str, ids))}) GROUP BY model, gold_label, predicted_label")
        predicted = [l for l in CANONICAL_LABELS if any(c["predicted_label"] == l for c in conf)]
        predicted += sorted({c["predicted_label"] for c in conf} - set(predicted) - {"(other)"})
        if any(c["predicted_label"] == "(other)" for c in conf):
            predicted.append("(other)")
        gold_labels = sorted({c["gold_label"] for c in conf})
        for m in s.models:
            counts = {(c["gold_label"], c["predicted_label"]): c["n"] for c in conf if c["model"] == m}
            conf_rows += [[*_lead(units, s), m, g, p, counts.get((g, p), 0)]
                          for g in gold_labels for p in predicted]
    pooled = [POOLED_NOTE] if lead > 2 else []
    return [
        Table("by_type", "Error analysis by gadget type (hardest first), overall and per instruction form",
              [*_lead_columns(units), "instruction_form", "gold_type", "examples", "disagreement_rate", "model",
               "correct", "accuracy", "accuracy_low", "accuracy_high"], acc_rows,
              ["accuracy: the model's normalized type equals the gold's; _low/_high: 95% Wilson score interval; "
               "disagreement_rate: examples of this type where the models' normalized types differ; (baseline): a "
               "reference classifier fitted on the training split", *pooled],
              wide=Wide("model", ("accuracy",), hide=("correct",)), group=lead + 1),
        Table("confusion", "Confusion matrices (rows: model and gold label; columns: predicted canonical label)",
              [*_lead_columns(units), "model", "gold_label", "predicted_label", "n"], conf_rows,
              ["(other): a gadget type that normalizes to none of the six canonical labels, or no type at all",
               *pooled], wide=Wide("predicted_label", ("n",)), group=lead + 1),
    ]


# ---------------------------------------------------------------- Q5
def vote(store: Store, sel: Sequence[Selected]) -> list[Table]:
    from ..stats import wilson

    _, hits, form, agr, _ = _per_example(store, sel)
    out = []
    units = _units(sel, hits, agr)
    lead = len(_lead_columns(units))
    for s in units:
        got, ag = hits.get(s.evaluation_id, {}), agr.get(s.evaluation_id, {})
        baselines = _baselines_in(got, s.models)
        for f, examples in _forms_of(sorted(ag), form):
            def rate(system):
                if system == "(majority vote)":
                    vals = [int(bool(ag[e]["majority_matches_gold"])) for e in examples]
                else:
                    vals = [got[e][system] for e in examples if system in got.get(e, {})]
                return (sum(vals) / len(vals), len(vals), sum(vals)) if vals else (None, 0, 0)

            mv = rate("(majority vote)")[0]
            best = max((r for r in (rate(m)[0] for m in s.models) if r is not None), default=None)
            ties = sum(ag[e]["majority_count"] * 2 <= ag[e]["n_models"] for e in examples)
            for m in s.models + ["(majority vote)"] + baselines:
                acc, n, k = rate(m)
                if not n:
                    continue
                gain = (mv - best if best is not None else None) if m == "(majority vote)" else mv - acc
                out.append([*_lead(units, s), f, len(s.models), _shown(m, s.models), n, acc, *wilson(k, n),
                            ties if m == "(majority vote)" else None, gain])
    notes = [TIE_RULE, "_low/_high: 95% Wilson score interval; (baseline) rows: reference classifiers fitted on the "
             "training split, never part of the vote",
             "vote_gain: majority-vote accuracy minus this model's (for the vote row: minus the best single model; for a "
             "baseline row: minus the baseline's)"]
    if any(len(s.models) < 3 for s in sel):
        notes.append("with two models a vote cannot break a disagreement: the tie rule returns the first model's "
                     "answer, so the vote equals that model wherever they disagree; it is meaningful with three or more")
    if lead > 2:
        notes.append(POOLED_NOTE)
    return [Table("vote", "Majority voting against each model, overall and per instruction form",
                  [*_lead_columns(units), "instruction_form", "models", "model", "examples", "accuracy",
                   "accuracy_low", "accuracy_high", "ties_or_no_majority", "vote_gain"], out, notes, group=lead + 2)]


# ---------------------------------------------------------------- Q6
AGREEMENT_TERMS = ("full_agreement: share of examples where every model gave the same non-empty normalized type "
                   "(as the comparison counts it); observed_agreement: share where the normalized types are equal, "
                   "an empty type counting as a category of its own (what the kappa is computed from)")


def _per_example(store: Store, sel: Sequence[Selected]):
    """Per evaluation and example, for the statistics the views cannot resample or split by form:
    types[e][x][model] (normalized type), hits[e][x][system] (1 when the gold type; models and
    baselines), form[x] (instruction form), agr[e][x] (the agreement row) and gold[x] (gold type)."""
    types: dict[int, dict[int, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    hits: dict[int, dict[int, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    form: dict[int, str] = {}
    gold: dict[int, str] = {}
    for r in store.query(f"SELECT p.evaluation_id, p.example_id, p.model, p.normalized_type, p.matches_gold, "
                       f"x.instruction_form, COALESCE(x.gold_type, '(none)') AS gold_type "
                       f"FROM predictions p JOIN examples x ON x.id = p.example_id "
                       f"WHERE p.evaluation_id IN ({_ids(sel)})"):
        types[r["evaluation_id"]][r["example_id"]][r["model"]] = r["normalized_type"] or ""
        hits[r["evaluation_id"]][r["example_id"]][r["model"]] = int(bool(r["matches_gold"]))
        form[r["example_id"]], gold[r["example_id"]] = r["instruction_form"], r["gold_type"]
    for r in store.query(f"SELECT evaluation_id, example_id, baseline, matches_gold FROM baseline_predictions "
                       f"WHERE evaluation_id IN ({_ids(sel)})"):
        hits[r["evaluation_id"]][r["example_id"]][r["baseline"]] = int(bool(r["matches_gold"]))
    agr: dict[int, dict[int, dict]] = defaultdict(dict)
    for r in store.query(f"SELECT evaluation_id, example_id, full_agreement, majority_count, n_models, "
                       f"majority_matches_gold FROM agreements WHERE evaluation_id IN ({_ids(sel)})"):
        agr[r["evaluation_id"]][r["example_id"]] = r
    return types, hits, form, agr, gold


def _units(sel: Sequence[Selected], *per_eval: dict) -> list[Selected]:
    """The selected evaluations, then for each study and seed one pooled unit over its folds (every
    example once): its per-example data merged, in each `per_eval` dict, under a key of its own
    (a negative number, never an evaluation id). A pooled unit has no run and no evaluation."""
    units = list(sel)
    groups: dict[tuple[int, int], list[Selected]] = defaultdict(list)
    for s in sel:
        if s.study_id is not None:
            groups[(s.study_id, s.seed)].append(s)
    for n, ((sid, seed), ss) in enumerate(sorted(groups.items()), 1):
        for table in per_eval:
            merged: dict = {}
            for s in ss:
                merged.update(table.get(s.evaluation_id, {}))
            table[-n] = merged
        units.append(Selected(None, -n, list(dict.fromkeys(m for s in ss for m in s.models)), sid, None, seed))
    return units


def _lead_columns(units: Sequence[Selected]) -> list[str]:
    return (["study_id", "seed"] if any(u.study_id is not None for u in units) else []) + ["run_id", "evaluation_id"]


def _lead(units: Sequence[Selected], u: Selected) -> list:
    """A row's leading cells: study and seed where the selection holds a study; run and evaluation
    (empty for a study's pooled rows)."""
    head = [u.study_id, u.seed] if any(x.study_id is not None for x in units) else []
    return head + ([u.run_id, u.evaluation_id] if u.evaluation_id > 0 else [None, None])


POOLED_NOTE = ("rows with a study_id and no run: the study's folds pooled (every example once per seed), "
               "their intervals over all of its examples")


def _shown(system: str, models: Sequence[str]) -> str:
    """A system's name in a table: a baseline marked as one."""
    return system if system in models or system == "(majority vote)" else f"(baseline) {system}"


def _baselines_in(hits_of_eval: dict, models: Sequence[str]) -> list[str]:
    from ..baseline import in_order

    return in_order(b for h in hits_of_eval.values() for b in h if b not in models)


def _forms_of(examples, form) -> list[tuple[str, list]]:
    """("all", every example) and each instruction form present, in FORMS order."""
    out = [("all", list(examples))]
    for f in FORMS[1:]:
        mine = [e for e in examples if form.get(e) == f]
        if mine:
            out.append((f, mine))
    return out


def agreement(store: Store, sel: Sequence[Selected]) -> list[Table]:
    from ..stats import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap, cohen_kappa, cohen_parts, fleiss_kappa,
                         fleiss_parts, wilson)

    types, _, form, _, _ = _per_example(store, sel)
    pair_rows, all_rows = [], []
    units = _units(sel, types)
    lead = len(_lead_columns(units))
    for s in units:
        got = types.get(s.evaluation_id, {})
        for f, examples in _forms_of(sorted(got), form):
            items = [got[e] for e in examples if all(m in got[e] for m in s.models)]
            n = len(items)
            for i, a in enumerate(s.models):
                for b in s.models[i + 1:]:
                    xa, xb = [it[a] for it in items], [it[b] for it in items]
                    same = sum(x == y for x, y in zip(xa, xb))
                    full = sum(x == y and x != "" for x, y in zip(xa, xb))
                    _, pe = cohen_parts(xa, xb)
                    kappa = cohen_kappa(xa, xb)
                    low, high = bootstrap(lambda idx: cohen_kappa([xa[j] for j in idx], [xb[j] for j in idx]), n)
                    pair_rows.append([*_lead(units, s), f, a, b, n, full / n, *wilson(full, n), same / n,
                                      *wilson(same, n), pe, kappa, low, high])
            if len(s.models) >= 2 and items:
                cats = [[it[m] for m in s.models] for it in items]
                full = sum(len(set(c)) == 1 and c[0] != "" for c in cats)
                p_bar, p_e = fleiss_parts(cats)
                low, high = bootstrap(lambda idx: fleiss_kappa([cats[j] for j in idx]), n)
                all_rows.append([*_lead(units, s), f, len(s.models), n, full / n, *wilson(full, n),
                                 p_bar, p_e, fleiss_kappa(cats), low, high])
    boot = (f"_low/_high of a kappa: percentile bootstrap over examples ({BOOTSTRAP_RESAMPLES} resamples, seed "
            f"{BOOTSTRAP_SEED}); of a rate: 95% Wilson score interval")
    t1 = Table("pairwise", "Pairwise agreement (Cohen's kappa on normalized types), overall and per instruction form",
               [*_lead_columns(units), "instruction_form", "model_a", "model_b", "examples", "full_agreement",
                "full_agreement_low", "full_agreement_high", "observed_agreement", "observed_agreement_low",
                "observed_agreement_high", "expected_agreement", "cohen_kappa", "cohen_kappa_low", "cohen_kappa_high"],
               pair_rows,
               [AGREEMENT_TERMS, "kappa = (observed - expected) / (1 - expected), expected from each model's own "
                "type frequencies; undefined (-) when expected agreement is 1", boot,
                *([POOLED_NOTE] if lead > 2 else [])], group=lead + 1)
    t2 = Table("all_models", "Agreement of all models (Fleiss' kappa), overall and per instruction form",
               [*_lead_columns(units), "instruction_form", "models", "examples", "full_agreement",
                "full_agreement_low", "full_agreement_high", "observed_agreement", "expected_agreement",
                "fleiss_kappa", "fleiss_kappa_low", "fleiss_kappa_high"],
               all_rows, [AGREEMENT_TERMS + "; for more than two models observed_agreement is Fleiss' mean pairwise "
                          "agreement per example", boot, *([POOLED_NOTE] if lead > 2 else [])], group=lead + 1)
    sem = store.query(f"SELECT * FROM semantic_agreement WHERE evaluation_id IN ({_ids(sel)}) "
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


def runs(store: Store, run_ids: Sequence[int] | None = None) -> list[Table]:
    """One record per run and model: the configuration that differs between the runs, and the results."""
    rows = store.query("SELECT * FROM run_summary ORDER BY run_id, model")
    if run_ids:
        rows = [r for r in rows if r["run_id"] in set(run_ids)]
    order = {(r["run_id"], r["name"]): r["position"] for r in store.query("SELECT run_id, name, position FROM run_models")}
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
    from ..stats import wilson_of_rate

    evals = [rs[0]["evaluation_id"] for rs in by_run.values() if rs[0]["evaluation_id"] is not None]
    acc = defaultdict(dict)  # evaluation -> (system, form) -> (accuracy, examples, kind)
    for a in store.query(f"SELECT evaluation_id, system, kind, instruction_form, accuracy, examples "
                       f"FROM system_accuracy WHERE evaluation_id IN ({','.join(map(str, evals)) or 'NULL'})"):
        acc[a["evaluation_id"]][(a["system"], a["instruction_form"])] = (a["accuracy"], a["examples"], a["kind"])
    from ..baseline import in_order

    cols = ["run_id", "status"] + varying + ["agreement_rate", "agreement_rate_low", "agreement_rate_high", "model",
                                             "format_accuracy", "format_accuracy_low", "format_accuracy_high",
                                             "gold_accuracy",
                                             "gold_accuracy_low", "gold_accuracy_high", "gold_accuracy_open",
                                             "gold_accuracy_open_low", "gold_accuracy_open_high"]
    out = []
    for rid, rs in by_run.items():
        ev = acc.get(rs[0]["evaluation_id"], {})
        systems = [(r["model"], r["format_accuracy"]) for r in rs]
        systems += [(name, None) for name in in_order(name for (name, form), v in ev.items()
                                                      if form == "all" and v[2] == "baseline")]
        n = max((v[1] for (_, form), v in ev.items() if form == "all"), default=0)
        for name, fmt in systems:
            overall, open_ = ev.get((name, "all"), (None, 0, None)), ev.get((name, "open"), (None, 0, None))
            shown = name if overall[2] != "baseline" else f"(baseline) {name}"
            out.append([rid, rs[0]["status"]] + [configs[rid][c] for c in varying]
                       + [rs[0]["agreement_rate"], *wilson_of_rate(rs[0]["agreement_rate"], n), shown, fmt,
                          *wilson_of_rate(fmt, n), overall[0], *wilson_of_rate(overall[0], overall[1]),
                          open_[0], *wilson_of_rate(open_[0], open_[1])])
    notes = [f"configuration columns shown: those that differ between the runs ({', '.join(varying)})"
             if len(varying) < len(CONFIG_COLUMNS) else "no configuration differs, so all of it is shown",
             "results are from each run's latest completed comparison; _low/_high: 95% Wilson score interval; "
             "_open: examples whose instruction names no category; (baseline): a reference classifier fitted on "
             "the run's training split"]
    return [Table("runs", "Runs: how results move with the configuration", cols, out, notes,
                  group=len(varying) + 5)]


QUESTIONS = {
    "disagreements": disagreements,
    "models": models,
    "confidence": confidence,
    "by-type": by_type,
    "vote": vote,
    "agreement": agreement,
}
