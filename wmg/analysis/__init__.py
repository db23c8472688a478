"""Research analyses over the results store. SQL first: every question is a view
created by a migration (`migrations/versions/0002_analysis_views.py`); this
package selects evaluations, reads the views, adds the statistics SQL cannot
give (correlations, significance), and shapes the answer as tables.

Nothing here loads a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from ..console import Table, Wide  # noqa: F401  (the analyses' result type)
from ..store import Store, StoreError


@dataclass(frozen=True)
class Selected:
    run_id: int
    evaluation_id: int
    models: list[str]
    study_id: int | None = None  # set when selected through --study
    fold: int | None = None
    seed: int | None = None
    source: str = "validation"  # the study's comparisons: its held-out folds, or every line of a file


class AnalysisError(StoreError):
    """A selection that cannot be analysed (reported as one line)."""


def _ids(sel: Sequence[Selected]) -> str:
    """An IN list of evaluation ids (integers from the database, safe to inline)."""
    return ",".join(str(int(s.evaluation_id)) for s in sel) or "NULL"


def _study_comparisons(store: Store, sid: int, source: str) -> list[dict]:
    """Each run of the study with its latest completed comparison on `source`: the held-out fold
    ("validation"), or a data file, matched by its name as given to `wmg compare --data` or by
    its content (the SHA-256 recorded with the comparison), so that a file named from another
    folder, or by an absolute path, is still the same file."""
    import json
    import os

    from ..checkpoint import file_sha256

    sha = file_sha256(source) if source != "validation" and os.path.isfile(source) else None
    latest: dict[int, dict] = {}
    for r in store.query("SELECT r.id AS run_id, r.fold, r.seed, e.id AS eid, e.source, e.config_json FROM runs r "
                         "JOIN evaluations e ON e.run_id = r.id AND e.status = 'completed' WHERE r.study_id = :s",
                         s=sid):
        same = r["source"] == source or (
            sha is not None and r["source"] != "validation" and json.loads(r["config_json"] or "{}").get("data_sha256") == sha)
        if same and (r["run_id"] not in latest or r["eid"] > latest[r["run_id"]]["eid"]):
            latest[r["run_id"]] = {k: r[k] for k in ("run_id", "fold", "seed", "eid")}
    return sorted(latest.values(), key=lambda r: (r["seed"], r["fold"]))


def select(store: Store, run_ids: Iterable[int] = (), all_runs: bool = False,
           evaluation_ids: Iterable[int] = (), study_ids: Iterable[int] = (),
           source: str = "validation") -> list[Selected]:
    """The evaluations to analyse: each run's latest comparison, or the ones named; with a
    study, the latest completed comparison of each of its runs on its held-out fold (a study
    still running gives the folds done so far, and the analyses say how many), or with
    `source`, each run's latest comparison on every line of that file (`wmg compare --data`).

    Unknown runs, runs without a comparison and runs whose latest comparison failed
    are errors, not silently skipped.
    """
    run_ids, evaluation_ids, study_ids = list(run_ids), list(evaluation_ids), list(study_ids)
    if not (run_ids or all_runs or evaluation_ids or study_ids):
        raise AnalysisError("nothing selected: give --run-id N (repeatable), --evaluation-id N, --study ID "
                            "or --all-runs")
    chosen: list[tuple[int, int]] = []
    in_study: dict[int, tuple[int, int, int]] = {}  # evaluation -> (study, fold, seed)
    for sid in study_ids:
        if not store.query("SELECT id FROM studies WHERE id = :s", s=sid):
            raise AnalysisError(f"no study with id {sid}")
        rows = _study_comparisons(store, sid, source)
        if not rows and source != "validation":
            known = [r["source"] for r in store.query(
                "SELECT DISTINCT e.source FROM evaluations e JOIN runs r ON r.id = e.run_id WHERE r.study_id = :s "
                "AND e.status = 'completed' AND e.source <> 'validation' ORDER BY e.source", s=sid)]
            raise AnalysisError(f"no run of study {sid} has a comparison on {source}: `wmg compare --run-id N --data "
                                f"{source}` for each of its runs"
                                + (f" (its runs were compared on: {', '.join(known)})" if known else ""))
        if not rows:
            raise AnalysisError(f"study {sid} has no compared run yet: `wmg train --study {sid}` makes its runs")
        for r in rows:
            chosen.append((r["run_id"], r["eid"]))
            in_study[r["eid"]] = (sid, r["fold"], r["seed"])
    for eid in evaluation_ids:
        row = store.query("SELECT id, run_id, status, error FROM evaluations WHERE id = :i", i=eid)
        if not row:
            raise AnalysisError(f"no evaluation with id {eid}")
        if row[0]["status"] != "completed":
            raise AnalysisError(f"evaluation {eid} is {row[0]['status']}"
                                + (f": {row[0]['error']}" if row[0]["error"] else ""))
        chosen.append((row[0]["run_id"], eid))
    if all_runs:
        rows = store.query("SELECT run_id, id FROM latest_evaluations ORDER BY run_id")
        chosen += [(r["run_id"], r["id"]) for r in rows]
    for rid in run_ids:
        if not store.query("SELECT id FROM runs WHERE id = :r", r=rid):
            raise AnalysisError(f"no run with id {rid}")
        last = store.query("SELECT id, status, error FROM evaluations WHERE run_id = :r ORDER BY id DESC LIMIT 1", r=rid)
        if not last:
            raise AnalysisError(f"run {rid} has no comparison yet: run `wmg compare --run-id {rid}` first")
        if last[0]["status"] == "failed":
            raise AnalysisError(f"the latest comparison of run {rid} (evaluation {last[0]['id']}) failed: "
                                f"{last[0]['error'] or 'no error recorded'}; re-run `wmg compare --run-id {rid}` "
                                "or pick an earlier one with --evaluation-id")
        if last[0]["status"] == "running":
            raise AnalysisError(f"the latest comparison of run {rid} (evaluation {last[0]['id']}) has not finished")
        chosen.append((rid, last[0]["id"]))
    out, seen = [], set()
    for rid, eid in chosen:
        if eid in seen:
            continue
        seen.add(eid)
        models = [r["model"] for r in store.query("SELECT DISTINCT p.model, m.position FROM predictions p JOIN run_models m ON m.id = p.run_model_id "
                "WHERE p.evaluation_id = :e ORDER BY m.position", e=eid)]
        if not models:
            raise AnalysisError(f"evaluation {eid} of run {rid} has no predictions")
        out.append(Selected(rid, eid, models, *in_study.get(eid, (None, None, None)),
                            source=source if eid in in_study else "validation"))
    return out
