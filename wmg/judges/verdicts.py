"""Semantic agreement: run a judge over an evaluation, store its verdicts, compare
judges with manual labels, and the annotation session."""
from __future__ import annotations

import json
import time
from collections import Counter
from itertools import combinations
from typing import Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from ..console import Table, Wide
from ..store import EvaluationItem, JudgmentRow, Store
from .base import VERDICTS, Judge, JudgeError, Verdict

JUDGES = ("rules", "embedding", "llm")
LABELS = VERDICTS  # the manual labels are the judges' verdicts


def _safe_url(url: str | None) -> str | None:
    """A base URL without any user:password part, fit to be stored."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def make_judge(name: str, store: Store | None = None, **llm) -> tuple[Judge, dict]:
    """The judge and the configuration stored with its verdicts (never a key). The embedding judge
    is fitted on the manual labels of `store` when one is given."""
    if name == "rules":
        from .rules import RulesJudge

        return RulesJudge(), {}
    if name == "embedding":
        from .embedding import EmbeddingJudge

        judge = EmbeddingJudge.fit(manual_pairs(store)) if store is not None else EmbeddingJudge()
        return judge, {"full_threshold": judge.full_threshold, "partial_threshold": judge.partial_threshold,
                       "fitted_on_annotations": judge.fitted_on}
    if name == "llm":
        from .llm import LLMJudge

        judge = LLMJudge(**{k: v for k, v in llm.items() if v is not None})
        return judge, {"api": judge.api, "base_url": _safe_url(judge.base_url), "timeout": judge.timeout,
                       "retries": judge.retries}
    raise JudgeError(f"unknown judge {name!r}; judges: {', '.join(JUDGES)}")


def manual_pairs(store: Store) -> list[tuple[str, str, str]]:
    """(first model's output, second model's output, manual label) for every annotation in the store."""
    rows = store.query("""
        SELECT a.id, a.label, p.raw_text FROM annotations a
        JOIN predictions p ON p.evaluation_id = a.evaluation_id AND p.example_id = a.example_id
        JOIN run_models m ON m.id = p.run_model_id ORDER BY a.id, m.position""")
    texts: dict[tuple[int, str], list[str]] = {}
    for r in rows:
        aid, label, raw = r["id"], r["label"], r["raw_text"]
        texts.setdefault((aid, label), []).append(raw)
    return [(t[0], t[1], label) for (_, label), t in texts.items() if len(t) >= 2]


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """The overall verdict of an example from its pairwise verdicts."""
    kinds = [v.verdict for v in verdicts]
    conf = min(v.confidence for v in verdicts)
    for outcome in ("invalid", "error", "disagreement"):
        if outcome in kinds:
            return Verdict(outcome, f"{kinds.count(outcome)} of {len(kinds)} pairs: {outcome}.", conf)
    if all(k == "full" for k in kinds):
        return Verdict("full", f"all {len(kinds)} pairs agree fully.", conf)
    return Verdict("partial", f"{kinds.count('partial')} of {len(kinds)} pairs agree partially, the rest fully.", conf)


def judge_items(judge: Judge, items: Sequence[EvaluationItem], progress: bool = True) -> list[JudgmentRow]:
    from ..progress import bar as progress_bar

    rows: list[JudgmentRow] = []
    bar = progress_bar(len(items), f"judge {judge.name}", enabled=progress, unit="examples")
    for it in items:
        models = list(it.outputs)
        pair_verdicts = []
        for a, b in combinations(models, 2):
            v = judge.compare(it.outputs[a], it.outputs[b], it.gold_output)
            pair_verdicts.append(v)
            rows.append(JudgmentRow(it.example_id, "pair", a, b, v.verdict, v.explanation, v.confidence))
        if len(pair_verdicts) == 1:
            v = pair_verdicts[0]
            rows.append(JudgmentRow(it.example_id, "overall", None, None, v.verdict, v.explanation, v.confidence))
        elif pair_verdicts:
            v = combine(pair_verdicts)
            rows.append(JudgmentRow(it.example_id, "overall", None, None, v.verdict, v.explanation, v.confidence))
        for m in models:
            v = judge.against_gold(it.outputs[m], it.gold_output)
            rows.append(JudgmentRow(it.example_id, "gold", m, None, v.verdict, v.explanation, v.confidence))
        bar.update(1)
    bar.close()
    return rows


def judge_evaluation(store: Store, evaluation_id: int, name: str, replace: bool = False, progress: bool = True,
                     **llm) -> tuple[int, list[JudgmentRow]]:
    """Judge every example; the verdicts are stored only if every one was reached."""
    judge, config = make_judge(name, store, **llm)
    items = store.evaluation_items(evaluation_id)
    if not items:
        raise JudgeError(f"evaluation {evaluation_id} has no predictions to judge")
    start = time.perf_counter()
    rows = judge_items(judge, items, progress)
    set_id = store.save_judgments(evaluation_id, judge.describe(), config, rows, time.perf_counter() - start,
                                 replace=replace)
    return set_id, rows


def summary(rows: Sequence[JudgmentRow]) -> dict:
    overall = [r.verdict for r in rows if r.kind == "overall"]
    n = max(1, len(overall))
    c = Counter(overall)
    return {"examples": len(overall), "full_rate": c["full"] / n, "full_or_partial_rate": (c["full"] + c["partial"]) / n,
            "counts": {k: c.get(k, 0) for k in LABELS + ("error",)}}


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two label sequences (exact formula); None when chance agreement is 1."""
    n = len(a)
    if n == 0:
        return None
    po = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[k] * cb[k] for k in ca) / (n * n)
    return None if pe >= 1 else (po - pe) / (1 - pe)


def compare_to_manual(store: Store, evaluation_id: int, judges: Sequence[str] = ()) -> list[Table]:
    """How well each judge's latest verdicts (and plain string matching) match the manual labels."""
    labels = store.annotations(evaluation_id)
    if not labels:
        raise JudgeError(f"evaluation {evaluation_id} has no manual labels yet: run `wmg annotate` first")
    items = {it.example_id: it for it in store.evaluation_items(evaluation_id)}
    candidates: dict[str, dict[int, str]] = {
        "string match": {eid: ("full" if it.full_agreement else "disagreement") for eid, it in items.items()}}
    sets = store.judgment_sets(evaluation_id)
    for name in dict.fromkeys(s.judge for s in sets):
        if judges and name not in judges:
            continue
        latest = [s for s in sets if s.judge == name][-1]
        candidates[f"{name} (set {latest.id})"] = store.overall_verdicts(latest.id)
    missing = [j for j in judges if not any(k.startswith(j + " ") for k in candidates)]
    if missing:
        raise JudgeError(f"judge {missing[0]!r} has not judged evaluation {evaluation_id}: "
                         f"run `wmg judge --evaluation-id {evaluation_id} --judge {missing[0]}` first")
    summary_rows, conf_rows = [], []
    for name, verdicts in candidates.items():
        pairs = [(l.label, verdicts[l.example_id]) for l in labels if l.example_id in verdicts]
        if not pairs:
            continue
        manual, judged = [p[0] for p in pairs], [p[1] for p in pairs]
        acc = sum(m == j for m, j in pairs) / len(pairs)
        related = sum((m in ("full", "partial")) == (j in ("full", "partial")) for m, j in pairs) / len(pairs)
        summary_rows.append([evaluation_id, name, len(pairs), acc, cohen_kappa(manual, judged), related])
        cols = list(LABELS) + (["error"] if "error" in judged else [])
        counts = Counter(pairs)
        conf_rows += [[evaluation_id, name, m, j, counts[(m, j)]] for m in LABELS for j in cols]
    head = Table("judges", f"Judges against manual labels (evaluation {evaluation_id})",
                 ["evaluation_id", "judge", "labelled", "accuracy", "cohen_kappa", "related_accuracy"], summary_rows,
                 ["accuracy: the judge's overall verdict equals the manual label; related_accuracy: both say "
                  "full-or-partial or both say neither; 'string match' is normalized-type equality "
                  "(full when equal, else disagreement), the baseline the judges should beat"])
    conf = Table("confusion", "Confusion: manual label (rows) against each judge's verdict (columns)",
                 ["evaluation_id", "judge", "manual_label", "judge_verdict", "n"], conf_rows,
                 wide=Wide("judge_verdict", ("n",)), group=2)
    return [head, conf]


# ---------------------------------------------------------------- annotation
def annotate_session(store: Store, evaluation_id: int, annotator: str, ask: Callable[[str], str],
                     say: Callable[[str], None], include_agreements: bool = False) -> tuple[int, int]:
    """Show each unlabelled disagreement and record a label; returns (labelled now, remaining).

    Every label is stored as soon as it is given, so quitting and starting again
    resumes where the annotator stopped.
    """
    done = {a.example_id for a in store.annotations(evaluation_id, annotator)}
    todo = [it for it in store.evaluation_items(evaluation_id)
            if (include_agreements or not it.full_agreement) and it.example_id not in done]
    keys = {"f": "full", "p": "partial", "d": "disagreement", "i": "invalid"}
    labelled = 0
    for n, it in enumerate(todo, 1):
        say("=" * 80)
        say(f"Example {it.position} ({n}/{len(todo)} to label, evaluation {evaluation_id})")
        say(f"INSTRUCTION: {it.instruction}")
        say(f"EXCERPT: {it.input}")
        say(f"GOLD: {it.gold_output}")
        for m, text in it.outputs.items():
            say(f"[{m}] {text or '(empty)'}")
        while True:
            answer = ask("Verdict [f]ull / [p]artial / [d]isagreement / [i]nvalid, [s]kip, [q]uit").strip().lower()
            if answer[:1] in keys or answer in keys.values() or answer[:1] in ("s", "q"):
                break
            say("please answer f, p, d, i, s or q")
        if answer[:1] == "q":
            return labelled, len(todo) - labelled
        if answer[:1] == "s":
            continue
        label = keys.get(answer[:1], answer)
        note = ask("Note (optional, Enter to skip)").strip()
        store.save_annotation(evaluation_id, it.example_id, annotator, label, note)
        labelled += 1
    return labelled, len(todo) - labelled


CSV_FIELDS = ["evaluation_id", "example_id", "position", "annotator", "label", "note"]


def export_csv(store: Store, evaluation_id: int, path: str) -> int:
    import csv

    rows = store.annotations(evaluation_id)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows({f: getattr(r, f) for f in CSV_FIELDS} for r in rows)
    return len(rows)


def import_csv(store: Store, evaluation_id: int, path: str, default_annotator: str) -> int:
    """Labels made elsewhere: rows name the example by example_id or by position; all are checked first."""
    import csv

    items = {it.example_id: it for it in store.evaluation_items(evaluation_id)}
    by_pos = {it.position: it.example_id for it in items.values()}
    parsed = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "label" not in reader.fieldnames:
            raise JudgeError(f"{path}: a CSV with a 'label' column and 'example_id' or 'position' is expected")
        for lineno, row in enumerate(reader, 2):
            label = (row.get("label") or "").strip().lower()
            if label not in LABELS:
                raise JudgeError(f"{path}:{lineno}: label {label!r} is not one of {', '.join(LABELS)}")
            try:
                if (row.get("example_id") or "").strip():
                    eid = int(row["example_id"])
                else:
                    eid = by_pos[int(row["position"])]
            except (KeyError, TypeError, ValueError):
                raise JudgeError(f"{path}:{lineno}: no such example in evaluation {evaluation_id}") from None
            if eid not in items:
                raise JudgeError(f"{path}:{lineno}: example {eid} is not in evaluation {evaluation_id}")
            parsed.append((eid, (row.get("annotator") or "").strip() or default_annotator, label,
                           (row.get("note") or "").strip()))
    for eid, who, label, note in parsed:
        store.save_annotation(evaluation_id, eid, who, label, note)
    return len(parsed)


def add_to_report(report_path: str, store: Store, set_ids: dict[str, int]) -> None:
    """Put each judge's verdicts and semantic agreement rates into an ensemble report."""
    from ..pipeline import write_report

    with open(report_path, encoding="utf-8") as fh:
        report = json.load(fh)
    sem = {}
    for name, sid in set_ids.items():
        rows = store.set_judgments(sid)
        sem[name] = dict(summary(rows), judgment_set_id=sid)
        by_example: dict[int, dict] = {}
        for r in rows:
            d = by_example.setdefault(r.example_id, {"pairs": [], "gold": {}})
            entry = {"verdict": r.verdict, "explanation": r.explanation, "confidence": r.confidence}
            if r.kind == "overall":
                d["overall"] = entry
            elif r.kind == "pair":
                d["pairs"].append(dict(entry, models=[r.model_a, r.model_b]))
            else:
                d["gold"][r.model_a] = entry
        for res in report["results"]:
            res.setdefault("judgments", {})[name] = by_example.get(res.get("example_row_id"), {})
    report["summary"]["semantic_agreement"] = sem
    write_report(report_path, report["summary"], report["results"])
