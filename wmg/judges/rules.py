"""The `rules` judge: offline and deterministic.

A free-text gadget type is mapped to one of the six canonical categories
through a lexicon of PLC mnemonics and words; a type that is a category name
("ReadWrite", "Control-Flow gadget") is *generic*, anything else that maps is
*specific* ("BOOL tag", "Command enable logic"). Garbled output (repetition,
run-on text, a missing field, a "type" longer than a label) is invalid.

Decision: garbled -> invalid; same normalized type, or same category at the same
specificity -> full; same category, one specific and one generic -> partial;
different categories -> disagreement; a type that maps to no category (or to
two equally) cannot be matched -> disagreement with low confidence.
"""
from __future__ import annotations

import re
from collections import Counter

from ..parse import CANONICAL_LABELS, Parsed, normalize_type, parse_output
from .base import Judge, Verdict

RW, AR, CF, IO, TS, CO = CANONICAL_LABELS

# Words and mnemonics that point at a category (matched against the lowercased
# words of a gadget type; multi-word entries are matched as phrases).
LEXICON: dict[str, tuple[str, ...]] = {
    RW: ("readwrite", "read", "write", "writes", "rw", "mov", "move", "cop", "cps", "fll", "copy", "fill", "tag",
         "tags", "memory", "pointer", "pointers", "indirect", "index", "indexed", "indexing", "array", "arrays",
         "address", "addressing", "alias", "db", "data block", "datablock", "peek", "poke", "produced", "consumed",
         "bool", "dint", "int", "register", "registers", "variable", "variables", "retentive", "variant",
         "reference", "buffer", "store"),
    AR: ("arithmetic", "computation", "compute", "computing", "math", "add", "sub", "mul", "div", "mod", "cpt",
         "shift", "rotate", "shl", "shr", "rol", "ror", "bsl", "bsr", "btd", "fal", "fsc", "conversion", "convert",
         "scale", "scaling", "overflow", "carry", "calculation", "calculate", "expression", "sqrt", "wraparound",
         "wrap", "integer", "float", "bit field"),
    CF: ("control", "flow", "controlflow", "jump", "jmp", "lbl", "label", "jsr", "sbr", "ret", "subroutine", "call",
         "branch", "branching", "mcr", "afi", "loop", "loops", "for", "while", "repeat", "case", "if", "sfc",
         "transition", "transitions", "enable", "enablein", "condition", "conditional", "rung", "goto", "return",
         "prescan", "fend", "execution"),
    IO: ("io", "output", "outputs", "ote", "otl", "otu", "coil", "msg", "message", "messaging", "communication",
         "communications", "iot", "gsv", "ssv", "alarm", "alarms", "log", "logging", "side", "effect", "sideeffect",
         "network", "socket", "send", "trace", "hmi", "email", "module configuration", "physical", "input"),
    TS: ("timing", "timer", "timers", "ton", "tof", "rto", "tp", "counter", "counters", "ctu", "ctd", "periodic",
         "event", "task", "tasks", "interrupt", "interrupts", "watchdog", "uid", "uie", "semaphore", "lock", "mutex",
         "priority", "scan", "cycle", "cyclic", "delay", "synchronization", "synchronisation", "sync", "clock",
         "time", "wait", "pacing", "race"),
    CO: ("composition", "compose", "composed", "aoi", "add on", "addon", "function block", "fb", "udfb", "dfb",
         "chain", "chaining", "chained", "dispatcher", "state machine", "statemachine", "sequencer", "sqo", "sqi",
         "recipe", "batch", "library", "reusable", "pattern", "method", "inheritance"),
}
# Normalized types that name a category rather than an instance of it.
GENERIC = {normalize_type(l) for l in CANONICAL_LABELS} | {
    "readwrite", "read", "write", "arithmetic", "computation", "control", "controlflow", "flow", "io", "sideeffect",
    "iosideeffect", "timing", "synchronization", "composition"}

MAX_TYPE_WORDS = 6  # the longest canonical label has 4 words
MAX_OUTPUT_WORDS = 150  # gold outputs run 30 to 100 words


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def category(gadget_type: str | None) -> str | None:
    """The canonical category a gadget type points at, or None when it points at none or at two equally."""
    if not gadget_type:
        return None
    norm = normalize_type(gadget_type)
    for label in CANONICAL_LABELS:
        if normalize_type(label) == norm:
            return label
    words = _words(gadget_type)
    joined = " " + " ".join(words) + " "
    hits = Counter()
    for label, terms in LEXICON.items():
        for term in terms:
            if " " in term:
                hits[label] += joined.count(f" {term} ")
            else:
                hits[label] += words.count(term)
    if not hits or max(hits.values()) == 0:
        return None
    best = hits.most_common()
    if len(best) > 1 and best[0][1] == best[1][1]:
        return None
    return best[0][0]


def is_generic(gadget_type: str | None) -> bool:
    return bool(gadget_type) and normalize_type(gadget_type) in GENERIC


def garbled(text: str, parsed: Parsed | None = None) -> str | None:
    """Why an output is garbled, or None when it is clean."""
    parsed = parsed or parse_output(text)
    missing = [f for f, ok in parsed.format_checks.items() if not ok]
    if missing:
        return f"missing {', '.join(missing)}"
    type_words = len(parsed.gadget_type.split())
    if type_words > MAX_TYPE_WORDS:
        return f"a gadget type of {type_words} words is not a label"
    words = _words(text)
    if len(words) > MAX_OUTPUT_WORDS:
        return f"run-on output of {len(words)} words"
    run = longest = 1
    for prev, cur in zip(words, words[1:]):
        run = run + 1 if cur == prev else 1
        longest = max(longest, run)
    if longest >= 4:
        return "a word repeated over and over"
    grams = Counter(tuple(words[i:i + 3]) for i in range(len(words) - 2))
    if grams and grams.most_common(1)[0][1] >= 3:
        return f"the phrase {' '.join(grams.most_common(1)[0][0])!r} repeated {grams.most_common(1)[0][1]} times"
    return None


class RulesJudge(Judge):
    name = "rules"
    version = "1"

    def _decide(self, a: str, b: str, b_is_gold: bool = False) -> Verdict:
        pa, pb = parse_output(a), parse_output(b)
        ga, gb = garbled(a, pa), (None if b_is_gold else garbled(b, pb))
        if ga or gb:
            who = "; ".join(f"{side} is garbled ({why})" for side, why in (("A", ga), ("B", gb)) if why)
            return Verdict("invalid", who + ".", 0.9)
        ta, tb = pa.gadget_type, pb.gadget_type
        if normalize_type(ta) == normalize_type(tb):
            return Verdict("full", f"Both name the same gadget type ({ta!r} ~ {tb!r}).", 0.95)
        ca, cb = category(ta), category(tb)
        if ca is None or cb is None:
            unknown = ", ".join(repr(t) for t, c in ((ta, ca), (tb, cb)) if c is None)
            return Verdict("disagreement", f"{unknown} maps to no single gadget category.", 0.5)
        if ca != cb:
            return Verdict("disagreement", f"{ta!r} is a {ca} but {tb!r} is a {cb}.", 0.85)
        if is_generic(ta) == is_generic(tb):
            return Verdict("full", f"Both are {ca}s at the same level of detail ({ta!r}, {tb!r}).", 0.8)
        specific, generic = (ta, tb) if is_generic(tb) else (tb, ta)
        return Verdict("partial", f"{specific!r} is a specific instance of the {generic!r} category.", 0.75)

    def compare(self, a: str, b: str, gold: str) -> Verdict:
        return self._decide(a, b)

    def against_gold(self, prediction: str, gold: str) -> Verdict:
        return self._decide(prediction, gold, b_is_gold=True)
