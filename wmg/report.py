"""`wmg report`: one self-contained HTML page of a run or a study, to share with a colleague.

The page holds the configuration, each model's loss curves, the accuracy table with intervals
and the reference baselines, accuracy per gadget type, confusion matrices, agreement as
confidence (tables and the risk-coverage curve) and every disagreement side by side with the
gold output. The tables are the ones `wmg analyze` prints (the same `Table` objects, so the
figures are the same); the figures are `wmg plot`'s PNGs embedded as data URIs, so the file
needs nothing beside it. Every text that comes from data (excerpts, outputs, labels, paths) is
HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .analysis import AnalysisError, Selected, select
from .console import Table, cell, merge_intervals, widen
from .store import Store

NAV = {"configuration": "Configuration", "training": "Loss curves", "accuracy": "Accuracy", "by-type": "Per type",
       "confidence": "Agreement as confidence", "disagreements": "Disagreements"}
# More disagreements than this are counted, not all printed (a 5-fold study can have hundreds).
MAX_DISAGREEMENTS = 300

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1.5em; color: #1d1d1f; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em;
margin-top: 2em; } h3 { margin-bottom: 0.3em; }
.meta { color: #555; } nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 12.5px; }
th, td { border: 1px solid #d0d0d0; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
.scroll { overflow-x: auto; } .note { color: #555; font-size: 12px; margin: 0.1em 0; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure img { max-width: 560px; width: 100%; border: 1px solid #eee; }
.ex { border: 1px solid #d0d0d0; border-radius: 6px; padding: 0.6em 0.9em; margin: 0.8em 0; }
.ex .excerpt { background: #f7f7f7; padding: 0.4em 0.6em; white-space: pre-wrap; }
.out { white-space: pre-wrap; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.right { color: #0a7a2f; font-weight: 600; } .wrong { color: #b3261e; font-weight: 600; }
"""


def _e(v: Any) -> str:
    return html.escape(cell(v) if not isinstance(v, str) else v, quote=True)


def html_table(t: Table, section: str) -> str:
    """A `Table` as `wmg analyze` prints it (intervals merged into one cell, long tables widened)."""
    out = [f'<h3 id="{_e(section)}-{_e(t.name)}">{_e(t.title)}</h3>']
    if not t.rows:
        out.append('<p class="note">(no rows)</p>')
    else:
        cols, rows = widen(t) if t.wide else merge_intervals(t.columns, t.rows)
        out.append(f'<div class="scroll"><table data-table="{_e(t.name)}"><thead><tr>'
                   + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr></thead><tbody>")
        out += ["<tr>" + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>" for r in rows]
        out.append("</tbody></table></div>")
    out += [f'<p class="note">{_e(n)}</p>' for n in t.notes]
    return "\n".join(out)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption class=\"note\">{_e(alt)}</figcaption></figure>")


def _field_table(name: str, title: str, pairs: Sequence[tuple[str, Any]]) -> Table:
    return Table(name, title, ["field", "value"], [[k, v] for k, v in pairs])


def _configuration(store: Store, run_id: int | None, study_id: int | None) -> list[Table]:
    from .console import show_tables

    if run_id is not None:
        run, models, config = show_tables(store.get_run(run_id))
        keep = {"run_id", "status", "created_at", "data_path", "data_sha256", "n_train", "n_validation", "seed",
                "init_requested", "device", "platform", "train_seconds", "study_id", "fold", "train_fraction", "extra_train",
                "evaluation_id", "evaluation_examples", "evaluation_examples_open"}
        run = Table(run.name, "Run", run.columns, [r for r in run.rows if r[0] in keep or r[0].startswith("version_")])
        return [run, models, config]
    st = store.get_study(study_id)
    train = st.config.get("train", {})
    study = _field_table("study", f"Study {st.id}", [
        ("study_id", st.id), ("created_at", st.created_at), ("data_path", st.data_path),
        ("data_sha256", st.data_sha256), ("folds", st.folds), ("seeds", ", ".join(map(str, st.seeds))),
        *[(f"train.{k}", v) for k, v in sorted(train.items()) if k not in ("overrides", "sources")],
        *[(f"train.{k}", v) for k, v in sorted((train.get("overrides") or {}).items())],
        *[(f"compare.{k}", v) for k, v in sorted(st.config.get("compare", {}).items())]])
    runs = Table("study_runs", "Its runs", ["run_id", "seed", "fold", "status", "n_train", "n_validation",
                                            "train_seconds", "compared"],
                 [[r.id, r.seed, r.fold, r.status, r.n_train, r.n_validation, r.train_seconds, r.compared]
                  for r in st.runs])
    models = Table("models", "Models (the first run's; every run of a study has the same options)",
                   ["model", "init", "parameters", "vocab_size", "hyperparameters"],
                   [[m.name, m.init, m.parameters, m.vocab_size,
                     ", ".join(f"{k} {v}" for k, v in sorted((m.hyperparams or {}).items()))]
                    for m in (st.runs[0].models if st.runs else [])])
    return [study, runs, models]


def _disagreements(store: Store, sel: Sequence[Selected]) -> str:
    ids = ",".join(str(int(s.evaluation_id)) for s in sel)
    rows = store.query(
        "SELECT a.evaluation_id, e.run_id, x.id AS example_id, x.position, x.instruction, x.input, x.gold_output, "
        "x.gold_type, x.instruction_form, p.model, p.raw_text, p.normalized_type, p.matches_gold "
        "FROM agreements a JOIN evaluations e ON e.id = a.evaluation_id "
        "JOIN examples x ON x.id = a.example_id JOIN predictions p ON p.evaluation_id = a.evaluation_id "
        f"AND p.example_id = a.example_id WHERE a.evaluation_id IN ({ids}) AND a.n_unique_normalized > 1 "
        "ORDER BY e.run_id, x.position, p.run_model_id")
    by: dict[tuple, dict] = {}
    for r in rows:
        g = by.setdefault((r["run_id"], r["position"]), {"row": r, "preds": []})
        g["preds"].append(r)
    out = [f'<p class="meta" id="disagreement-count">{len(by)} examples on which the models\' normalized types '
           f'differ{f"; the first {MAX_DISAGREEMENTS} are shown" if len(by) > MAX_DISAGREEMENTS else ""}.</p>']
    for (run, pos), g in list(by.items())[:MAX_DISAGREEMENTS]:
        x = g["row"]
        out.append(f'<div class="ex" data-example="{_e(x["example_id"])}">'
                   f'<div class="meta">run {_e(run)}, example {_e(pos)}, {_e(x["instruction_form"])} form; '
                   f'gold type <b>{_e(x["gold_type"] or "(none)")}</b></div>'
                   f'<div class="meta">{_e(x["instruction"])}</div><div class="excerpt">{_e(x["input"])}</div>'
                   '<table><thead><tr><th>who</th><th>output</th><th>normalized type</th></tr></thead><tbody>'
                   f'<tr><td>gold</td><td class="out">{_e(x["gold_output"])}</td><td>{_e(x["gold_type"])}</td></tr>')
        for p in g["preds"]:
            mark = '<span class="right">right</span>' if p["matches_gold"] else '<span class="wrong">wrong</span>'
            out.append(f'<tr><td>{_e(p["model"])}</td><td class="out">{_e(p["raw_text"])}</td>'
                       f'<td>{_e(p["normalized_type"] or "(none)")} {mark}</td></tr>')
        out.append("</tbody></table></div>")
    return "\n".join(out)


def build(store: Store, run_id: int | None = None, study_id: int | None = None) -> str:
    """The report page's HTML."""
    from .analysis import plots, questions

    if (run_id is None) == (study_id is None):
        raise AnalysisError("a report is of one run (--run-id) or one study (--study)")
    sel = select(store, run_ids=[run_id] if run_id is not None else [],
                 study_ids=[study_id] if study_id is not None else [])
    what = f"run {run_id}" if run_id is not None else f"study {study_id}"
    stem = f"run{run_id}" if run_id is not None else f"study{study_id}"
    pooled = "" if run_id is not None else f" (pooled over {len(sel)} folds: every example once per seed)"
    sections: list[tuple[str, str, str]] = []  # (anchor, title, html); the anchor is also the nav's word
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        sections.append(("configuration", "Configuration",
                         "\n".join(html_table(t, "configuration") for t in _configuration(store, run_id, study_id))))
        curves = [(s, p) for s in sel if (p := plots.loss_curves(store, s.run_id, out))]
        sections.append(("training", "Training: loss curves", "\n".join(
            _img(p, f"Training and validation loss, run {s.run_id}") for s, p in curves)
            or '<p class="note">no training steps stored</p>'))
        sections.append(("accuracy", f"Accuracy, with intervals and the reference baselines{pooled}",
                         "\n".join(html_table(t, "accuracy") for t in questions.models(store, sel))))
        types = questions.by_type(store, sel)
        matrices = plots.confusion(store, sel, out, stem, what)
        sections.append(("by-type", "Accuracy per gadget type" + (", confusion matrices" if run_id is not None else
                                                                 " per fold, confusion matrices pooled over the folds"),
                         html_table(types[0], "by-type") + "\n" + "".join(_img(p, p.stem.split("_confusion_")[-1] + ": confusion")
                                                              for p in matrices) + "\n" + html_table(types[1], "by-type")))
        rc = plots.risk_coverage(store, sel, out, stem, what)
        sections.append(("confidence", f"Agreement as confidence{pooled}",
                         (_img(rc, f"Risk-coverage of the majority vote, {what}") if rc else "")
                         + "\n".join(html_table(t, "confidence") for t in questions.confidence(store, sel))))
        sections.append(("disagreements", "Disagreements, side by side with the gold output",
                         _disagreements(store, sel)))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = " ".join(f'<a href="#{k}">{_e(NAV[k])}</a>' for k, _, _ in sections)
    body = "\n".join(f'<section id="{k}"><h2>{_e(title)}</h2>\n{content}\n</section>' for k, title, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>wmg report: {_e(what)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>wmg report: {_e(what)}</h1>\n"
            f'<p class="meta">Results store {_e(store.shown)}; written {stamp} by wmg {_e(__version__)}. '
            f"Intervals are 95% (Wilson score for rates, bootstrap where noted).</p>\n<nav>{nav}</nav>\n"
            f"{body}\n</body></html>\n")


def write(store: Store, out: str | Path, run_id: int | None = None, study_id: int | None = None) -> Path:
    """Write the page to `out` whole (a temporary file renamed into place)."""
    from .checkpoint import atomic_write_text

    page = build(store, run_id, study_id)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out
