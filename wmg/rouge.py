"""ROUGE-1 and ROUGE-L F1 of a prediction against the gold output (the `rouge-score` package)."""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def rouge_f1(prediction: str, gold: str) -> tuple[float, float]:
    scores = _scorer().score(gold, prediction)
    return scores["rouge1"].fmeasure, scores["rougeL"].fmeasure
