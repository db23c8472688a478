"""A lever against the run it changes, example by example: two runs of the same fold (say a study's
run and a run of the same fold with one option changed), each possibly in its own store, paired on
the examples both were compared on (the same excerpt and instruction in the same comparison source:
the held-out fold, or a `--data` file). Prints, per source, model and form (all, open), both
accuracies, the difference with a bootstrap interval, the examples only one got right and McNemar's
exact p, and both format rates; the figures of the README's lever tables. A source whose two
comparisons were generated with other settings (precision, n-gram rule, ...) is flagged.

    python benchmarks/paired_runs.py --base study.db:1 --lever lever.db:1
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sqlite3

from wmg.stats import paired


# What changes the generated text besides the weights: pairs made under other settings mix the
# lever with them (bf16 and fp32 greedy outputs differ, so do the n-gram rule's)
SETTINGS = ("precision", "no_repeat_ngram_size", "max_new_tokens", "location_span", "batch_size")


def outcomes(db: str, run: int) -> tuple[dict[tuple, tuple], dict[str, dict]]:
    """(source, model, excerpt, instruction) -> (form, right, well-formed) for every comparison of a
    run, and each source's generation settings (the latest comparison's, which the pairs use)."""
    out, settings = {}, {}
    with sqlite3.connect(db) as conn:
        for ev, source, config in conn.execute("SELECT id, source, config_json FROM evaluations WHERE run_id = ? "
                                               "AND status = 'completed' ORDER BY id", (run,)):
            cfg = json.loads(config)
            settings[source] = {k: cfg.get(k) for k in SETTINGS}
            for model, inp, ins, form, ok, fmt in conn.execute(
                    "SELECT p.model, x.input, x.instruction, x.instruction_form, p.matches_gold, p.format_ok "
                    "FROM predictions p JOIN examples x ON x.id = p.example_id WHERE p.evaluation_id = ?", (ev,)):
                out[(source, model, inp, ins)] = (form, int(ok), int(fmt))  # a later comparison replaces one
    return out, settings


def differences(base: dict, lever: dict) -> str:
    """The generation settings two comparisons differ in, as `name base -> lever`; empty if none."""
    return ", ".join(f"{k} {base.get(k)} -> {lever.get(k)}" for k in SETTINGS if base.get(k) != lever.get(k))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, metavar="DB:RUN", help="the run without the lever")
    ap.add_argument("--lever", required=True, metavar="DB:RUN", help="the run with it")
    args = ap.parse_args()
    try:
        (bdb, brun), (ldb, lrun) = ((db, int(run)) for db, run in (a.rsplit(":", 1) for a in (args.base, args.lever)))
    except ValueError:
        raise SystemExit("give each run as DB:RUN, e.g. results.db:3") from None
    for db in (bdb, ldb):
        if not pathlib.Path(db).is_file():
            raise SystemExit(f"{db}: no such store")
    (base, base_settings), (lever, lever_settings) = outcomes(bdb, brun), outcomes(ldb, lrun)
    shared = sorted(set(base) & set(lever))
    if not shared:
        raise SystemExit("the two runs share no compared example (other folds, or not compared yet)")
    for source in sorted({k[0] for k in shared}):
        changed = differences(base_settings[source], lever_settings[source])
        if changed:
            print(f"! {source}: the two comparisons were generated differently ({changed}): "
                  "its changes mix the lever with that; compare again with the same options to pair them")
        for model in sorted({k[1] for k in shared if k[0] == source}):
            keys = [k for k in shared if k[:2] == (source, model)]
            for form, sel in (("all", keys), ("open", [k for k in keys if lever[k][0] == "open"])):
                if not sel:
                    continue
                p = paired([lever[k][1] for k in sel], [base[k][1] for k in sel])
                rate = lambda d, i: sum(d[k][i] for k in sel) / len(sel)  # noqa: E731
                print(f"{source:32s} {model:14s} {form:4s} n={len(sel):4d}  base {rate(base, 1):6.1%}  "
                      f"lever {rate(lever, 1):6.1%}  change {p['difference']:+.1%} "
                      f"[{p['difference_low']:+.1%}, {p['difference_high']:+.1%}]  only lever right "
                      f"{p['a_only_right']}, only base right {p['b_only_right']}, McNemar p = {p['mcnemar_p']:.2g}  "
                      f"format {rate(base, 2):.1%} -> {rate(lever, 2):.1%}")


if __name__ == "__main__":
    main()
