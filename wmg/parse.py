"""Parsing model outputs: fields, format checks, normalized gadget type.

An output looks like
    gadget_type: <label>; location: <where>; explanation: <why>
Keys are case-insensitive, whitespace is tolerated, and a missing or empty
field fails its format check. Everything here is pure and never raises on
arbitrary text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

FIELDS = ("gadget_type", "location", "explanation")

# A key is a field name (spaces or underscores between words) followed by a colon.
_KEY = re.compile(r"(?i)\b(gadget[ _]?type|location|explanation)\s*:")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_DROP = {"gadget", "gadgets", "and"}

CANONICAL_LABELS = (
    "ReadWrite gadget",
    "Arithmetic/Computation gadget",
    "Control-Flow gadget",
    "IO and Side-Effect gadget",
    "Timing/Synchronization gadget",
    "Composition gadget",
)


@dataclass(frozen=True)
class Parsed:
    gadget_type: str | None
    location: str | None
    explanation: str | None

    @property
    def format_checks(self) -> dict[str, bool]:
        return {f: bool(getattr(self, f)) for f in FIELDS}

    @property
    def format_ok(self) -> bool:
        return all(self.format_checks.values())

    @property
    def normalized_type(self) -> str:
        return normalize_type(self.gadget_type or "")


def parse_output(text: str) -> Parsed:
    """Split an output into its three fields.

    Each field's value runs from its key to the next `;` or the next key,
    whichever comes first; the first occurrence of a key wins.
    """
    values: dict[str, str] = {}
    matches = list(_KEY.finditer(text))
    for i, m in enumerate(matches):
        key = m.group(1).lower().replace(" ", "_")
        if key == "gadgettype":
            key = "gadget_type"
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        value = text[m.end():end].split(";", 1)[0].strip()
        if key not in values:
            values[key] = value
    return Parsed(*(values.get(f) or None for f in FIELDS))


def normalize_type(gadget_type: str) -> str:
    """Lowercase, split into words on non-alphanumerics, drop gadget(s)/and, join.

    Word level, not substring: "Command enable logic" keeps its "and" letters.
    """
    words = _WORD.findall(gadget_type.lower())
    joined = "".join(w for w in words if w not in _DROP)
    # "a-n-d" joins to "and": drop it too, so that normalizing twice changes nothing
    return "" if joined in _DROP else joined


CANONICAL_NORMALIZED = {normalize_type(label): label for label in CANONICAL_LABELS}


def named_labels(text: str) -> list[str]:
    """The canonical labels a text names, in the normalization's terms: a run of one to four
    words (gadget/and dropped) whose joined form is a label's ("READ/WRITE", "control flow",
    "IO AND SIDE-EFFECT" all count). An instruction that names the gold label gives the
    answer away; the open form names none."""
    words = [w for w in _WORD.findall(text.lower()) if w not in _DROP]
    found: list[str] = []
    for i in range(len(words)):
        for n in range(1, 5):
            label = CANONICAL_NORMALIZED.get("".join(words[i:i + n])) if i + n <= len(words) else None
            if label and label not in found:
                found.append(label)
    return found


def matches_gold(gadget_type: str | None, gold_type: str | None) -> bool:
    """Whether a predicted type is the gold one: equal non-empty normalized forms (the rule of
    every stored `matches_gold`)."""
    n = normalize_type(gadget_type or "")
    return bool(n) and n == normalize_type(gold_type or "")


def canonical_label(gadget_type: str | None) -> str | None:
    """The canonical label whose normalized form equals this type's, if any."""
    if not gadget_type:
        return None
    return CANONICAL_NORMALIZED.get(normalize_type(gadget_type))


def location_in_excerpt(location: str | None, excerpt: str) -> bool | None:
    """Whether a location is an exact span of the excerpt (whitespace runs count as one space,
    nothing else is forgiven: case, punctuation and every character must match); None when
    there is no location to check."""
    if not location or not location.strip():
        return None
    squash = lambda t: " ".join(t.split())  # noqa: E731
    return squash(location) in squash(excerpt)


def gold_type(output: str) -> str | None:
    return parse_output(output).gadget_type
