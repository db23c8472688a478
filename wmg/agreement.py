"""Agreement between any number of models on one example (pure functions)."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Mapping

from .parse import matches_gold, normalize_type


@dataclass(frozen=True)
class Agreement:
    full_agreement: bool
    unique_types: list[str]
    gadget_types: dict[str, str | None]
    normalized_types: dict[str, str]
    unique_normalized_types: list[str]
    majority_type: str | None  # an original spelling of the most common normalized type
    majority_normalized: str | None
    majority_count: int
    matches_gold: dict[str, bool]
    gold_normalized: str

    @property
    def majority_matches_gold(self) -> bool:
        return bool(self.majority_normalized) and self.majority_normalized == self.gold_normalized

    def to_dict(self) -> dict:
        return asdict(self)


def _ordered_unique(values) -> list:
    seen: dict = {}
    for v in values:
        seen.setdefault(v, None)
    return list(seen)


def agreement(gadget_types: Mapping[str, str | None], gold_type: str | None) -> Agreement:
    """Full agreement: every model produced a type and all normalized types are equal.

    The majority is the most common non-empty normalized type; ties go to the
    type first produced in model order (the order of `gadget_types`).
    """
    norm = {m: normalize_type(t or "") for m, t in gadget_types.items()}
    present = [n for n in norm.values() if n]
    counts = Counter(present)
    if counts:
        best = max(counts.values())
        majority_norm = next(n for n in present if counts[n] == best)
        majority_type = next(t for m, t in gadget_types.items() if norm[m] == majority_norm)
    else:
        best, majority_norm, majority_type = 0, None, None
    gold_norm = normalize_type(gold_type or "")
    return Agreement(
        full_agreement=bool(norm) and len(present) == len(norm) and len(counts) == 1,
        unique_types=_ordered_unique(t for t in gadget_types.values() if t),
        gadget_types=dict(gadget_types),
        normalized_types=norm,
        unique_normalized_types=_ordered_unique(present),
        majority_type=majority_type,
        majority_normalized=majority_norm,
        majority_count=best,
        matches_gold={m: matches_gold(t, gold_type) for m, t in gadget_types.items()},
        gold_normalized=gold_norm,
    )
