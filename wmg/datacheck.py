"""`wmg data check`: validate a dataset file and describe it.

Errors (the line cannot be used): not JSON, not an object, a missing, extra or
non-string field, an output not in the `gadget_type: ...; location: ...;
explanation: ...` form. Findings (reported; fatal only with --strict): labels
outside the six canonical ones, label balance, excerpt length, location
length, instruction forms, shared sentences and near-duplicate excerpts.
"""
from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .data import REQUIRED, instruction_form
from .parse import CANONICAL_LABELS, location_in_excerpt, named_labels

OUTPUT_RE = re.compile(r"^gadget_type: ([^;]+); location: ([^;]+); explanation: ([^;]+)$")
NEAR_DUPLICATE = 0.5
BOUNDS = {"label_share": (0.14, 0.20), "open_share_min": 0.40, "excerpt_words": (40, 160), "location_words": (2, 10)}


def five_grams(text: str) -> set[tuple[str, ...]]:
    w = re.findall(r"\w+", text.lower())
    return {tuple(w[i:i + 5]) for i in range(len(w) - 4)}


def sentences(text: str) -> list[str]:
    """Sentences of five words or more, lowercased (short ones like "Example:" may repeat)."""
    return [s.strip().lower() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 5]


@dataclass
class Report:
    path: str
    lines: int = 0
    valid: int = 0
    errors: list[str] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)
    unknown_labels: Counter = field(default_factory=Counter)
    forms: Counter = field(default_factory=Counter)
    excerpt_words: list[int] = field(default_factory=list)
    location_words: list[int] = field(default_factory=list)
    near_duplicates: list[tuple[int, int, float]] = field(default_factory=list)
    shared_sentences: list[tuple[int, int, str]] = field(default_factory=list)
    mismatched_categories: list[tuple[int, str, str]] = field(default_factory=list)
    names_gold: Counter = field(default_factory=Counter)  # instruction form -> lines naming their gold label
    location_not_in_excerpt: list[int] = field(default_factory=list)  # lines whose location is no span of the excerpt
    max_jaccard: float = 0.0

    def findings(self) -> list[str]:
        """Bounds of the bundled dataset that this file misses."""
        out = []
        n = max(1, self.valid)
        lo, hi = BOUNDS["label_share"]
        for label in CANONICAL_LABELS:
            share = self.labels.get(label, 0) / n
            if not lo <= share <= hi:
                out.append(f"label {label!r} is {share:.1%} of lines (bound {lo:.0%}..{hi:.0%})")
        if self.unknown_labels:
            out.append(f"labels outside the six canonical ones: {dict(self.unknown_labels)}")
        if self.forms.get("open", 0) / n < BOUNDS["open_share_min"]:
            out.append(f"open-form instructions are {self.forms.get('open', 0) / n:.1%} (at least 40%)")
        wlo, whi = BOUNDS["excerpt_words"]
        bad = sum(not wlo <= w <= whi for w in self.excerpt_words)
        if bad:
            out.append(f"{bad} excerpts outside {wlo}..{whi} words")
        llo, lhi = BOUNDS["location_words"]
        bad = sum(not llo <= w <= lhi for w in self.location_words)
        if bad:
            out.append(f"{bad} locations outside {llo}..{lhi} words")
        if self.location_not_in_excerpt:
            shown = ", ".join(map(str, self.location_not_in_excerpt[:10]))
            out.append(f"{len(self.location_not_in_excerpt)} locations are not an exact span of their excerpt "
                       f"(lines {shown}{', ...' if len(self.location_not_in_excerpt) > 10 else ''})")
        for lineno, named, label in self.mismatched_categories[:5]:
            out.append(f"line {lineno}: the instruction names {named!r} but the label is {label!r}")
        if len(self.mismatched_categories) > 5:
            out.append(f"{len(self.mismatched_categories) - 5} more instructions name a label other than their own")
        if self.near_duplicates:
            out.append(f"{len(self.near_duplicates)} near-duplicate pairs (5-gram Jaccard > {NEAR_DUPLICATE})")
        if self.shared_sentences:
            out.append(f"{len(self.shared_sentences)} sentences shared between excerpts")
        return out

    def to_dict(self) -> dict:
        w = sorted(self.excerpt_words)
        q = lambda p: w[min(len(w) - 1, int(p * len(w)))] if w else None
        return {
            "path": self.path, "lines": self.lines, "valid": self.valid, "invalid": len(self.errors),
            "errors": self.errors,
            "labels": dict(self.labels.most_common()),
            "label_shares": {k: round(v / max(1, self.valid), 4) for k, v in self.labels.most_common()},
            "unknown_labels": dict(self.unknown_labels),
            "instruction_forms": dict(self.forms),
            "instructions_naming_gold": sum(self.names_gold.values()),
            "instructions_naming_gold_by_form": dict(self.names_gold),
            "instructions_naming_another_label": len(self.mismatched_categories),
            "locations_not_in_excerpt": len(self.location_not_in_excerpt),
            "excerpt_words": {"min": w[0] if w else None, "p25": q(0.25), "median": q(0.5), "p75": q(0.75),
                              "max": w[-1] if w else None, "mean": round(sum(w) / len(w), 1) if w else None},
            "near_duplicates": [{"lines": [a, b], "jaccard": round(j, 3)} for a, b, j in self.near_duplicates],
            "shared_sentences": [{"lines": [a, b], "sentence": s} for a, b, s in self.shared_sentences],
            "max_5gram_jaccard": round(self.max_jaccard, 4),
            "findings": self.findings(),
        }


def check(path: str | Path) -> Report:
    path = Path(path)
    rep = Report(str(path))
    texts: list[tuple[int, str]] = []
    with path.open("rb") as fh:
        raw_lines = fh.read().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for lineno, raw in enumerate(raw_lines, 1):
        rep.lines += 1
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            rep.errors.append(f"{where}: not UTF-8 text")
            continue
        if not line.strip():
            rep.errors.append(f"{where}: blank line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            rep.errors.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            rep.errors.append(f"{where}: expected a JSON object")
            continue
        missing = [k for k in REQUIRED if k not in obj]
        extra = sorted(set(obj) - set(REQUIRED))
        if missing or extra:
            rep.errors.append(f"{where}: " + "; ".join(
                ([f"missing field(s) {', '.join(missing)}"] if missing else [])
                + ([f"unexpected field(s) {', '.join(extra)}"] if extra else [])))
            continue
        bad = [k for k in REQUIRED if not isinstance(obj[k], str) or not obj[k].strip()]
        if bad:
            rep.errors.append(f"{where}: field(s) {', '.join(bad)} must be non-empty strings")
            continue
        m = OUTPUT_RE.match(obj["output"].strip())
        if not m:
            rep.errors.append(f"{where}: output is not 'gadget_type: ...; location: ...; explanation: ...' "
                              "(three fields, no semicolon inside a value)")
            continue
        label, location, _ = (g.strip() for g in m.groups())
        rep.valid += 1
        rep.labels[label] += 1
        if label not in CANONICAL_LABELS:
            rep.unknown_labels[label] += 1
        form = instruction_form(obj["instruction"])
        rep.forms[form] += 1
        named = named_labels(obj["instruction"])
        if label in named:
            rep.names_gold[form] += 1
        for other in named:
            if other != label:
                rep.mismatched_categories.append((lineno, other, label))
        rep.excerpt_words.append(len(obj["input"].split()))
        rep.location_words.append(len(location.split()))
        if not location_in_excerpt(location, obj["input"]):
            rep.location_not_in_excerpt.append(lineno)
        texts.append((lineno, obj["input"]))
    _overlaps(rep, texts)
    return rep


def _overlaps(rep: Report, texts: list[tuple[int, str]]) -> None:
    seen: dict[str, int] = {}
    for lineno, text in texts:
        for s in sentences(text):
            if s in seen and seen[s] != lineno:
                rep.shared_sentences.append((seen[s], lineno, s))
            seen.setdefault(s, lineno)
    grams = [(n, five_grams(t)) for n, t in texts]
    for (a, ga), (b, gb) in itertools.combinations(grams, 2):
        if not ga or not gb:
            continue
        inter = len(ga & gb)
        if not inter:
            continue
        j = inter / len(ga | gb)
        rep.max_jaccard = max(rep.max_jaccard, j)
        if j > NEAR_DUPLICATE:
            rep.near_duplicates.append((a, b, j))


def render(rep: Report) -> str:
    d = rep.to_dict()
    out = [f"{rep.path}: {rep.lines} lines, {rep.valid} valid, {len(rep.errors)} invalid"]
    out += [f"  error: {e}" for e in rep.errors[:50]]
    if len(rep.errors) > 50:
        out.append(f"  ... and {len(rep.errors) - 50} more errors")
    out.append("labels:")
    for label, n in d["labels"].items():
        mark = "" if label in CANONICAL_LABELS else "  (not a canonical label)"
        out.append(f"  {label:<32} {n:>5}  {d['label_shares'][label]:6.1%}{mark}")
    out.append("instruction forms: " + ", ".join(f"{k} {v}" for k, v in sorted(d["instruction_forms"].items())))
    by_form = ", ".join(f"{k} {v}" for k, v in sorted(rep.names_gold.items())) or "none"
    out.append(f"instructions naming their gold label (the answer given away): {d['instructions_naming_gold']} "
               f"of {rep.valid} ({by_form}); naming another label: {d['instructions_naming_another_label']}")
    for lineno, named, label in rep.mismatched_categories[:20]:
        out.append(f"  line {lineno}: names {named!r}, labelled {label!r}")
    out.append(f"locations that are an exact span of their excerpt: {rep.valid - len(rep.location_not_in_excerpt)} "
               f"of {rep.valid}")
    e = d["excerpt_words"]
    out.append(f"excerpt words: min {e['min']}, p25 {e['p25']}, median {e['median']}, p75 {e['p75']}, "
               f"max {e['max']}, mean {e['mean']}")
    out.append(f"near-duplicate pairs (5-gram Jaccard > {NEAR_DUPLICATE}): {len(rep.near_duplicates)}; "
               f"highest Jaccard {rep.max_jaccard:.3f}; shared sentences: {len(rep.shared_sentences)}")
    for a, b, j in rep.near_duplicates[:20]:
        out.append(f"  lines {a} and {b}: {j:.2f}")
    for a, b, s in rep.shared_sentences[:20]:
        out.append(f"  lines {a} and {b} share: {s[:70]}")
    findings = rep.findings()
    out.append("bounds of the bundled dataset: " + ("all met" if not findings else f"{len(findings)} not met"))
    out += [f"  - {f}" for f in findings]
    return "\n".join(out)


def tables(rep: Report):
    """The statistics as tidy tables (for --format json|csv)."""
    from .console import Table

    d = rep.to_dict()
    e = d["excerpt_words"]
    summary = [["path", rep.path], ["lines", rep.lines], ["valid", rep.valid], ["invalid", len(rep.errors)]]
    summary += [[f"excerpt_words_{k}", v] for k, v in e.items()]
    summary += [["near_duplicate_pairs", len(rep.near_duplicates)], ["max_5gram_jaccard", d["max_5gram_jaccard"]],
                ["shared_sentences", len(rep.shared_sentences)],
                ["instructions_naming_gold", d["instructions_naming_gold"]],
                ["instructions_naming_another_label", d["instructions_naming_another_label"]],
                ["locations_not_in_excerpt", d["locations_not_in_excerpt"]],
                ["bounds_not_met", len(d["findings"])]]
    return [
        Table("summary", f"Dataset {rep.path}", ["metric", "value"], summary),
        Table("labels", "Labels", ["label", "examples", "share", "canonical"],
              [[k, n, d["label_shares"][k], k in CANONICAL_LABELS] for k, n in d["labels"].items()]),
        Table("forms", "Instruction forms", ["form", "examples", "naming_gold_label"],
              [[k, v, rep.names_gold.get(k, 0)] for k, v in sorted(d["instruction_forms"].items())]),
        Table("errors", "Invalid lines", ["error"], [[x] for x in rep.errors]),
        Table("findings", "Bounds of the bundled dataset not met", ["finding"], [[f] for f in d["findings"]]),
    ]
