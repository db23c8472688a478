"""Reference baselines: what a model must beat to have learned more than keywords.

- `tfidf-logreg`: TF-IDF of word 1-2-grams of the instruction and excerpt, then a logistic
  regression (scikit-learn), fitted on the run's own training split to predict the gold type.
- `majority-class`: the most common gold type of the training split (ties: the first in
  alphabetical order).

Both take seconds, are deterministic for a seed, and predict only the gadget type, so they are
scored on gold-type accuracy alone. Their predictions are stored apart from the models'
(`baseline_predictions`) and never enter the models' agreement.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from .parse import gold_type

BASELINES = ("tfidf-logreg", "majority-class")


def in_order(names) -> list[str]:
    """Baseline names in the order reports list them (BASELINES first, any other after, by name)."""
    return sorted(set(names), key=lambda b: (BASELINES.index(b) if b in BASELINES else len(BASELINES), b))


def _text(instruction: str, excerpt: str) -> str:
    return f"{instruction}\n{excerpt}"


def fit_predict(train: Sequence, evaluate: Sequence, seed: int = 42) -> dict[str, list[str | None]]:
    """Each baseline's predicted gold type for every example of `evaluate`.

    `train` and `evaluate` hold objects with `instruction`, `input` and `output` (the gold output).
    """
    labelled = [(x, gold_type(x.output)) for x in train]
    labelled = [(x, y) for x, y in labelled if y]
    if not labelled:
        return {name: [None] * len(evaluate) for name in BASELINES}
    counts = Counter(y for _, y in labelled)
    majority = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    out: dict[str, list[str | None]] = {"majority-class": [majority] * len(evaluate)}
    if len(counts) < 2:
        out["tfidf-logreg"] = [majority] * len(evaluate)
        return {name: out[name] for name in BASELINES}
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                        LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit([_text(x.instruction, x.input) for x, _ in labelled], [y for _, y in labelled])
    out["tfidf-logreg"] = list(clf.predict([_text(x.instruction, x.input) for x in evaluate])) if evaluate else []
    return {name: out[name] for name in BASELINES}
