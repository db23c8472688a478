"""A lever against the run it changes, example by example: two runs of the same fold (say a study's
run and a run of the same fold with one option changed), each possibly in its own store, paired on
the examples both were compared on (the same excerpt and instruction in the same comparison source:
the held-out fold, or a `--data` file). Prints, per source, model and form (all, open), both
accuracies, the difference with a bootstrap interval, the examples only one got right and McNemar's
exact p, and both format rates; the figures of the README's lever tables.

    python benchmarks/paired_runs.py --base study.db:1 --lever lever.db:1
"""
from __future__ import annotations

import argparse
import pathlib
import sqlite3

from wmg.stats import paired


def outcomes(db: str, run: int) -> dict[tuple, tuple]:
    """(source, model, excerpt, instruction) -> (form, right, well-formed) for every comparison of a run."""
    out = {}
    with sqlite3.connect(db) as conn:
        for ev, source in conn.execute("SELECT id, source FROM evaluations WHERE run_id = ? ORDER BY id", (run,)):
            for model, inp, ins, form, ok, fmt in conn.execute(
                    "SELECT p.model, x.input, x.instruction, x.instruction_form, p.matches_gold, p.format_ok "
                    "FROM predictions p JOIN examples x ON x.id = p.example_id WHERE p.evaluation_id = ?", (ev,)):
                out[(source, model, inp, ins)] = (form, int(ok), int(fmt))  # a later comparison replaces one
    return out


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
    base, lever = outcomes(bdb, brun), outcomes(ldb, lrun)
    shared = sorted(set(base) & set(lever))
    if not shared:
        raise SystemExit("the two runs share no compared example (other folds, or not compared yet)")
    for source in sorted({k[0] for k in shared}):
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
