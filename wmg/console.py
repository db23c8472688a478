"""Everything wmg shows: results as tables for people, JSON or CSV for programs.

Library code returns `Table`s (or plain results); this module renders them. One convention
for every command that prints results:

- `--format table` (default): aligned text for a terminal. A table may be shown *wide*
  (one column per model, say) while its records stay long.
- `--format json`: a list of flat records in long form, one per model / label / ...; a
  command with several tables adds a `table` field to each record (`--table NAME` keeps one).
- `--format csv`: one tidy table per invocation: the command's first table, or the one
  named by `--table NAME`; `--out DIR` writes every table to its own file instead.

An empty selection is an empty result (`[]`, a header line) and exit status 0. Banners,
logs and progress never share stdout with JSON or CSV (see `wmg.progress`).
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

FORMATS = ("table", "json", "csv")
RULE = "=" * 80


@dataclass(frozen=True)
class Wide:
    """Show a long table wide: one column per value of `across` for each of `values`
    (headers "<value of across> <value column>"), the other columns as the row key."""
    across: str
    values: tuple[str, ...]
    hide: tuple[str, ...] = ()  # per-`across` columns left out of the wide view


@dataclass
class Table:
    name: str  # for --table, file names and the `table` field of JSON records
    title: str
    columns: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)
    wide: Wide | None = None
    group: int = 0  # table view: blank these leading cells when they repeat the row above

    def records(self) -> list[dict[str, Any]]:
        return [{c: _plain(v) for c, v in zip(self.columns, r)} for r in self.rows]


class OutputError(ValueError):
    """A --table that names no table of the command (a usage error)."""


def _plain(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, (_dt.datetime, _dt.date)):
        return v.isoformat()
    if isinstance(v, Path):
        return str(v)
    return v


# ---------------------------------------------------------------- table view
def cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v and abs(v) < 5e-5:  # a small p-value is not 0
            return f"{v:.2g}"
        return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.3g}"
    if isinstance(v, (_dt.datetime,)):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


def format_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], group: int = 0) -> list[str]:
    """Aligned text lines: a header, a rule, and one line per row."""
    cells = [[cell(c) for c in r] for r in rows]
    for i in range(len(cells) - 1, 0, -1):  # from the bottom, so each row compares with the original above
        same = 0
        while same < group and cells[i][same] == cells[i - 1][same]:
            same += 1
        cells[i][:same] = [""] * same
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(columns)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells]


def widen(t: Table) -> tuple[list[str], list[list[Any]]]:
    """The wide view of a long table: rows keyed by the other columns, in first-seen order."""
    from .stats import pct

    w = t.wide
    assert w is not None
    a = t.columns.index(w.across)
    vals = [t.columns.index(v) for v in w.values]
    hidden = [t.columns.index(h) for h in w.hide]
    bounds = {v: (t.columns.index(t.columns[v] + "_low"), t.columns.index(t.columns[v] + "_high")) for v in vals
              if t.columns[v] + "_low" in t.columns and t.columns[v] + "_high" in t.columns}
    hidden += [j for lo_hi in bounds.values() for j in lo_hi]
    keys = [i for i in range(len(t.columns)) if i != a and i not in vals and i not in hidden]
    across: list[Any] = []
    rows: dict[tuple, dict] = {}
    for r in t.rows:
        if r[a] not in across:
            across.append(r[a])
        rows.setdefault(tuple(r[i] for i in keys), {})[r[a]] = [
            pct(r[i], r[bounds[i][0]], r[bounds[i][1]]) if i in bounds and isinstance(r[i], float) else r[i]
            for i in vals]
    single = len(vals) == 1
    cols = [t.columns[i] for i in keys]
    for x in across:
        cols += [str(x) if single else f"{x} {t.columns[v]}" for v in vals]
    out = []
    for key, by in rows.items():
        row = list(key)
        for x in across:
            row += by.get(x, [None] * len(vals))
        out.append(row)
    return cols, out


def merge_intervals(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[list[str], list[list[Any]]]:
    """For people: a rate and its `_low`/`_high` columns become one cell, `73.6% [60.4, 83.6]`; a
    statistic that is not a rate (a kappa, an AURC) keeps its scale, `0.412 [0.215, 0.598]`."""
    from .stats import pct

    def statistic(x, low, high) -> str:
        return f"{x:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")

    cols = list(columns)
    triples = [(i, cols.index(c + "_low"), cols.index(c + "_high")) for i, c in enumerate(cols)
               if c + "_low" in cols and c + "_high" in cols]
    # a rate's mean and standard deviation over folds or seeds: `63.2% ± 4.1`
    spreads = [(i, cols.index(c[:-5] + "_sd")) for i, c in enumerate(cols) if c.endswith("_mean")
               and c[:-5] + "_sd" in cols]
    if not triples and not spreads:
        return cols, [list(r) for r in rows]
    drop = {j for _, lo, hi in triples for j in (lo, hi)} | {sd for _, sd in spreads}
    out = []
    for r in rows:
        r = list(r)
        for i, lo, hi in triples:
            if isinstance(r[i], (int, float)) and not isinstance(r[i], bool):
                scale = statistic if any(k in cols[i] for k in ("kappa", "aurc")) else pct
                r[i] = scale(r[i], r[lo], r[hi])
        for i, sd in spreads:
            if isinstance(r[i], (int, float)):
                r[i] = f"{r[i]:.1%}" + (f" ± {r[sd] * 100:.1f}" if r[sd] is not None else "")
        out.append([v for j, v in enumerate(r) if j not in drop])
    names = {i: cols[i].removesuffix("_mean") + "_mean_sd" for i, _ in spreads}
    return [names.get(j, c) for j, c in enumerate(cols) if j not in drop], out


def render_table(t: Table) -> str:
    out = [t.title, "=" * len(t.title)]
    if not t.rows:
        out.append("(no rows)")
    elif t.wide:
        out += format_rows(*widen(t), t.group)
    else:
        cols, rows = merge_intervals(t.columns, t.rows)
        group = t.group - sum(1 for c in t.columns[:t.group] if c.endswith(("_low", "_high")))
        out += format_rows(cols, rows, group)
    out += [f"note: {n}" for n in t.notes]
    return "\n".join(out)


# ---------------------------------------------------------------- machine formats
def pick(tables: Sequence[Table], name: str | None) -> list[Table]:
    if name is None:
        return list(tables)
    chosen = [t for t in tables if t.name == name]
    if not chosen:
        raise OutputError(f"--table {name}: this command's tables are {', '.join(t.name for t in tables)}")
    return chosen


def to_json(tables: Sequence[Table]) -> str:
    if len(tables) == 1:
        records = tables[0].records()
    else:
        records = [{"table": t.name, **r} for t in tables for r in t.records()]
    return json.dumps(records, indent=2, ensure_ascii=False, default=str)


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.columns)
    w.writerows([["" if v is None else v for v in r.values()] for r in t.records()])
    return buf.getvalue()


def render(tables: Sequence[Table], fmt: str, table: str | None = None) -> str:
    """The text to print: every table (or the one named) in `fmt`; CSV is always one table."""
    chosen = pick(tables, table)
    if fmt == "json":
        return to_json(chosen)
    if fmt == "csv":
        return to_csv(chosen[0]).rstrip("\n") if chosen else ""
    return "\n\n".join(render_table(t) for t in chosen)


def write_files(tables: Sequence[Table], fmt: str, out: str | Path, table: str | None = None) -> list[Path]:
    """One file per table in `out` (NAME.csv or NAME.json; NAME.txt for the table view)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in pick(tables, table):
        ext = {"csv": "csv", "json": "json"}.get(fmt, "txt")
        path = folder / f"{t.name}.{ext}"
        body = to_csv(t) if fmt == "csv" else to_json([t]) + "\n" if fmt == "json" else render_table(t) + "\n"
        path.write_text(body, encoding="utf-8")
        paths.append(path)
    return paths


def emit(tables: Sequence[Table], fmt: str = "table", table: str | None = None, out: str | None = None,
         echo=print, warn=None) -> None:
    """Print (or with `out`, write) a command's result tables. With CSV and several tables
    and no --table, the first is printed and `warn` names the others."""
    if out:
        for p in write_files(tables, fmt, out, table):
            (warn or echo)(f"wrote {p}")
        return
    chosen = pick(tables, table)
    if fmt == "csv" and len(chosen) > 1 and warn is not None:
        warn(f"csv holds one table: printed '{chosen[0].name}'; the others ({', '.join(t.name for t in chosen[1:])}) "
             "with --table NAME, or all of them with --out DIR")
    text = render(chosen, fmt)
    if text or fmt != "csv":
        echo(text)


# ---------------------------------------------------------------- runs
def runs_table(runs) -> Table:
    """One record per run and model, each model's figures on its own row (never by position)."""
    from .stats import wilson_of_rate

    rows = []
    for r in runs:
        ev = r.latest_evaluation
        n = ev.n_examples if ev else None
        n_open = ev.n_open if ev else None
        agree = ev.full_agreement_rate if ev else None
        study = f"{r.study_id}/{r.fold}" if r.study_id is not None else None
        systems = [(m.name, m.name, m.init, m.final_loss, m.final_val_loss, (ev.format_accuracy or {}).get(m.name)
                    if ev else None, (ev.gold_accuracy or {}).get(m.name) if ev else None) for m in r.models]
        systems += [(b, f"(baseline) {b}", "baseline", None, None, None, g)
                    for b, g in ((ev.baseline_accuracy or {}).items() if ev else [])]
        for key, name, init, loss, val_loss, fmt, gold in systems:
            gold_open = (ev.gold_accuracy_open or {}).get(key) if ev else None
            rows.append([
                r.id, r.created_at, r.status, study, r.n_train + r.n_validation, ev.id if ev else None, n,
                agree, *wilson_of_rate(agree, n), name, init, loss, val_loss,
                fmt, *wilson_of_rate(fmt, n), gold, *wilson_of_rate(gold, n), n_open or None, gold_open,
                *wilson_of_rate(gold_open, n_open),
            ])
    return Table("runs", "Runs", ["run_id", "created_at", "status", "study_fold", "examples", "evaluation_id",
                                  "evaluated", "agreement_rate", "agreement_rate_low", "agreement_rate_high", "model",
                                  "init", "final_loss", "final_val_loss", "format_accuracy", "format_accuracy_low",
                                  "format_accuracy_high", "gold_accuracy", "gold_accuracy_low",
                                  "gold_accuracy_high", "evaluated_open", "gold_accuracy_open",
                                  "gold_accuracy_open_low", "gold_accuracy_open_high"], rows,
                 ["figures from each run's latest comparison of `evaluated` examples; agreement_rate: every model "
                  "gave the same non-empty normalized type; _low/_high: 95% Wilson score interval",
                  "_open: the examples whose instruction names no category (the model must decide); (baseline): a "
                  "reference classifier fitted on the run's training split, gold type only; study_fold: study id / "
                  "fold of a `wmg train --folds` run"], group=10)


def _rate_and_interval(rate, ev) -> list:
    from .stats import wilson_of_rate

    return [rate, *wilson_of_rate(rate, ev.n_examples if ev else None)]


def show_tables(r) -> list[Table]:
    """`wmg show`: the run as field/value pairs, one record per model, and the recorded options."""
    from .stats import wilson_of_rate

    ev = r.latest_evaluation
    fields: list[tuple[str, Any]] = [
        ("run_id", r.id), ("status", r.status), ("created_at", r.created_at), ("error", r.error),
        ("data_path", r.data_path), ("data_sha256", r.data_sha256), ("n_train", r.n_train),
        ("n_validation", r.n_validation), ("seed", r.seed), ("init_requested", r.init_requested),
        ("device", r.device), ("platform", r.platform), ("train_seconds", r.train_seconds),
        ("checkpoint_dir", r.checkpoint_dir), ("resumes", r.resumes), ("study_id", r.study_id), ("fold", r.fold),
        ("train_fraction", (r.config or {}).get("train_fraction", 1.0)),
        ("extra_train", ", ".join((r.config or {}).get("extra_train") or []) or None),
    ]
    if r.status == "running" and r.pid:
        fields += [("pid", r.pid), ("host", r.host)]
    fields += [(f"version_{k}", v) for k, v in (r.versions or {}).items()]
    fields += [("evaluation_id", ev.id if ev else None), ("evaluation_status", ev.status if ev else None),
               ("evaluation_source", ev.source if ev else None), ("evaluation_examples", ev.n_examples if ev else None),
               ("full_agreement_rate", ev.full_agreement_rate if ev else None),
               ("evaluation_peak_rss_mb", ev.peak_rss_mb if ev else None)]
    lo, hi = _rate_and_interval(ev.full_agreement_rate if ev else None, ev)[1:]
    fields += [("full_agreement_rate_low", lo), ("full_agreement_rate_high", hi)]
    for b, g in ((ev.baseline_accuracy or {}).items() if ev else []):
        lo, hi = _rate_and_interval(g, ev)[1:]
        fields += [(f"baseline_{b}_gold_accuracy", g), (f"baseline_{b}_gold_accuracy_low", lo),
                   (f"baseline_{b}_gold_accuracy_high", hi)]
    if ev and ev.n_open:
        fields += [("evaluation_examples_open", ev.n_open)]
        for name, g in ev.gold_accuracy_open.items():
            lo, hi = wilson_of_rate(g, ev.n_open)
            name = f"baseline_{name}" if name in (ev.baseline_accuracy or {}) else name
            fields += [(f"{name}_gold_accuracy_open", g), (f"{name}_gold_accuracy_open_low", lo),
                       (f"{name}_gold_accuracy_open_high", hi)]
    run = Table("run", f"Run {r.id}", ["field", "value"], [[k, v] for k, v in fields],
                [] if ev else [f"no comparison yet: run `wmg compare --run-id {r.id}`"])
    hp_keys = ("learning_rate", "epochs", "micro_batch_size", "grad_accum", "schedule", "warmup_ratio",
               "weight_decay", "dropout", "precision", "causal_loss", "prompt_loss_weight", "type_loss_weight", "location_loss_weight", "unlikelihood", "label_smoothing", "quote_mix", "quote_shuffle", "tie_embeddings", "copy_head", "copy_scope", "copy_vocab_loss", "open_copies", "dev_fraction", "average_epochs", "tapt_epochs", "tapt_denoise",
               "tapt_quotes", "optimizer")
    models = Table("models", "Models", ["model", "status", "init", "parameters", "vocab_size", "steps", "chosen_epoch",
                                        "kept_average", "average_dev_accuracy", "final_loss",
                                        "final_val_loss", "train_seconds", "peak_rss_mb", "format_accuracy", "format_accuracy_low",
                                        "format_accuracy_high", "gold_accuracy", "gold_accuracy_low",
                                        "gold_accuracy_high", *hp_keys, "init_note"],
                   [[m.name, m.status, m.init, m.parameters, m.vocab_size, m.steps, m.chosen_epoch, m.kept_average,
                     m.average_dev_accuracy, m.final_loss,
                     m.final_val_loss,
                     m.train_seconds, m.peak_rss_mb, *_rate_and_interval((ev.format_accuracy or {}).get(m.name) if ev else None, ev),
                     *_rate_and_interval((ev.gold_accuracy or {}).get(m.name) if ev else None, ev),
                     *[(m.hyperparams or {}).get(k) for k in hp_keys], m.init_note] for m in r.models],
                   ["_low/_high: 95% Wilson score interval over the latest comparison's examples",
                    "chosen_epoch: the epoch best on the development slice (dev_fraction of the training split), "
                    "whose weights were kept unless kept_average; empty: the last epoch",
                    "kept_average: with average_epochs K, whether the saved weights are the average of the last K "
                    "epochs (average_dev_accuracy: its score on the development slice); empty: no averaging",
                    "peak_rss_mb: the wmg process's peak resident memory while it trained the model (Linux; empty: "
                    "not measured); the comparison's is evaluation_peak_rss_mb"])
    config = Table("config", "Options the run was started with", ["option", "value"],
                   [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in sorted((r.config or {}).items())
                    if k != "model_configs"])  # the models table shows them (as built)
    return [run, models, config]


# ---------------------------------------------------------------- comparisons
def banner(echo, title: str) -> None:
    echo("")
    echo(RULE)
    echo(title)
    echo(RULE)


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _span_check(in_excerpt: bool | None) -> str:
    return "" if in_excerpt is None else f" location_in_excerpt={'ok' if in_excerpt else 'no'}"


def _checks(checks: dict[str, bool]) -> str:
    return " ".join(f"{k}={'ok' if v else 'missing'}" for k, v in checks.items())


def show_example(echo, i: int, total: int, r: dict, names: Sequence[str]) -> None:
    """One example of a comparison (a record of the report's `results`), as the tutorial printed it."""
    agr = r["agreement"]
    banner(echo, f"VALIDATION EXAMPLE {i + 1}/{total}")
    echo("")
    echo(f"INSTRUCTION: {_short(r['instruction'], 100)}")
    echo(f"EXCERPT: {_short(r['excerpt'])}")
    echo(f"GOLD: {_short(r['gold_output'])}")
    for m in names:
        echo("")
        echo(f"  [{m}] Output: {_short(r['predictions'][m]) or '(empty)'}")
    echo("")
    echo("─" * 80)
    echo("AGREEMENT ANALYSIS:")
    echo("─" * 80)
    echo(f"  Full agreement: {'✓ YES' if agr['full_agreement'] else '✗ NO'}")
    echo(f"  Unique gadget types: {agr['unique_types']}")
    echo(f"  Majority type: {agr['majority_type']} ({agr['majority_count']}/{len(names)})")
    echo("")
    echo("  Model-specific gadget types:")
    for m in names:
        mark = "✓" if agr["matches_gold"][m] else "✗"
        echo(f"    - {m}: {agr['gadget_types'][m]}  [normalized: {agr['normalized_types'][m] or '-'}; gold {mark}]")
    echo("")
    echo("  Format checks:")
    for m in names:
        checks = r["format_checks"][m]
        span = _span_check((r.get("location_in_excerpt") or {}).get(m))
        echo(f"    {'✓' if all(checks.values()) else '✗'} {m}: {_checks(checks)}{span}")


def show_summary(echo, summary: dict, report_path: str | None) -> None:
    from .stats import pct

    banner(echo, "SAVING COMPARISON REPORT")
    if report_path:
        echo(f"✓ Report saved to: {report_path}")
    echo(f"✓ Results stored as evaluation {summary['evaluation_id']} of run {summary['run_id']}")
    echo("")
    echo("SUMMARY (95% Wilson intervals in brackets):")
    n = summary["total_examples"]
    ci = summary.get("full_agreement_rate_interval") or [None, None]
    echo(f"  Total examples: {n}")
    echo(f"  Full agreement: {summary['full_agreements']} ({pct(summary['full_agreement_rate'], *ci)})")
    echo(f"  Disagreements: {n - summary['full_agreements']} ({summary['disagreement_rate']:.1%})")
    echo("")
    def rates(title: str, key: str, suffix=lambda name: "") -> None:  # one line per model or baseline
        values = summary.get(key) or {}
        if values:
            echo(title)
            for name, v in values.items():
                echo(f"    - {name}: {pct(v, *summary.get(key + '_interval', {}).get(name, [None, None]))}"
                     f"{suffix(name)}")

    rates("  Format accuracy by model:", "model_format_accuracy")
    rates("  Location an exact span of the excerpt (of the well-formed outputs):", "model_location_in_excerpt")
    rates("  Gold-type accuracy by model (normalized type equals the gold's):", "model_gold_type_accuracy",
          lambda m: f"  [init={summary['model_init'].get(m)}]")
    rates("  Reference baselines, fitted on the training split (gold type only):", "baseline_gold_type_accuracy")
    forms = summary.get("by_instruction_form") or {}
    if forms:
        echo("  By instruction form (category: the instruction names the answer; open: the model must decide):")
        for form, f in forms.items():
            gold = ", ".join(f"{m} {pct(v, *f['model_gold_type_accuracy_interval'][m])}"
                             for m, v in f["model_gold_type_accuracy"].items())
            echo(f"    - {form} ({f['total_examples']} examples): gold type {gold}; full agreement "
                 f"{pct(f['full_agreement_rate'], *f['full_agreement_rate_interval'])}")
    if "open" in forms:
        o = forms["open"]
        figures = [f"{m} {pct(v, *o['model_gold_type_accuracy_interval'][m])}"
                   for m, v in o["model_gold_type_accuracy"].items()]
        figures += [f"baseline {b} {pct(v, *o['baseline_gold_type_accuracy_interval'][b])}"
                    for b, v in (o.get("baseline_gold_type_accuracy") or {}).items()]
        echo(f"  Headline, open form ({o['total_examples']} examples): " + ", ".join(figures))


def comparison_table(summary: dict) -> Table:
    """A comparison's result, one record per model and instruction form ('all' first)."""
    rows = []
    parts = [("all", summary)] + [(f, s) for f, s in (summary.get("by_instruction_form") or {}).items()]
    for form, s in parts:
        for m in summary["model_format_accuracy"]:
            fi = s.get("model_format_accuracy_interval", {}).get(m, [None, None])
            gi = s.get("model_gold_type_accuracy_interval", {}).get(m, [None, None])
            ai = s.get("full_agreement_rate_interval") or [None, None]
            li = s.get("model_location_in_excerpt_interval", {}).get(m, [None, None])
            rows.append([summary["run_id"], summary["evaluation_id"], form, m, summary["model_init"].get(m),
                         s["total_examples"], s["model_format_accuracy"][m], *fi,
                         (s.get("model_location_in_excerpt") or {}).get(m), *li,
                         s["model_gold_type_accuracy"][m], *gi, s["full_agreement_rate"], *ai])
        for b, v in (s.get("baseline_gold_type_accuracy") or {}).items():
            rows.append([summary["run_id"], summary["evaluation_id"], form, b, "baseline", s["total_examples"],
                         None, None, None, None, None, None, v, *s["baseline_gold_type_accuracy_interval"][b],
                         None, None, None])
    return Table("comparison", "Comparison", ["run_id", "evaluation_id", "instruction_form", "model", "init",
                                              "examples", "format_accuracy", "format_accuracy_low",
                                              "format_accuracy_high", "location_in_excerpt", "location_in_excerpt_low",
                                              "location_in_excerpt_high", "gold_accuracy", "gold_accuracy_low",
                                              "gold_accuracy_high", "full_agreement_rate", "full_agreement_rate_low",
                                              "full_agreement_rate_high"], rows,
                 ["_low/_high: 95% Wilson score interval; init 'baseline': a reference baseline fitted on the "
                  "training split (gold type only, never part of the models' agreement); location_in_excerpt: "
                  "share of the well-formed outputs whose location is an exact span of the excerpt"], group=3)


# ---------------------------------------------------------------- one custom excerpt
def prediction_tables(result: dict) -> list[Table]:
    names = list(result["predictions"])
    parsed, agr = result["parsed"], result["agreement"]
    rows = []
    for m in names:
        p = parsed[m]
        checks = p["format_checks"]
        rows.append([m, result["predictions"][m], p["gadget_type"], p["location"], p["explanation"],
                     p["normalized_type"], all(checks.values()), *checks.values(), p.get("location_in_excerpt"),
                     agr["full_agreement"], agr["majority_type"], agr["majority_count"]])
    first = parsed[names[0]]["format_checks"] if names else {}
    return [Table("predictions", "Predictions", ["model", "output", "gadget_type", "location", "explanation",
                                                 "normalized_type", "format_ok", *[f"has_{k}" for k in first],
                                                 "location_in_excerpt", "full_agreement", "majority_type",
                                                 "majority_count"], rows,
                  ["location_in_excerpt: the location is an exact span of the excerpt (empty: no location)"])]


def show_prediction(echo, result: dict) -> None:
    names = list(result["predictions"])
    agr = result["agreement"]
    banner(echo, "CUSTOM INFERENCE")
    for m in names:
        p = result["parsed"][m]
        echo(f"[{m}] {result['predictions'][m] or '(empty)'}")
        echo(f"    gadget_type: {p['gadget_type']} | location: {p['location']} | explanation: {p['explanation']}")
        echo(f"    format checks: {_checks(p['format_checks'])}{_span_check(p.get('location_in_excerpt'))}")
    echo("")
    echo(f"Full agreement: {'✓ YES' if agr['full_agreement'] else '✗ NO'}; unique types: {agr['unique_types']}; "
         f"majority: {agr['majority_type']} ({agr['majority_count']}/{len(names)})")


def quiet_transformers() -> None:
    """Hide transformers' own per-file progress bars and info chatter (wmg draws its own)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
