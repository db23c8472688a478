"""`wmg work`: a study's runs shared by worker processes through leases in the store, on SQLite
and on a real PostgreSQL server (tests/pg.py)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SMALL, sql
from wmg.store import Claim, Lease, Store, StoreError

ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def _run(db, study_id, seed, fold, lease):
    return Store(db).create_run(data_path="d.jsonl", data_sha256="0" * 64, examples_requested=None, eval_split=0.25,
                                seed=seed, init_requested="scratch", device="cpu", platform="unix", config={}, versions={},
                                models=[], train=[], validation=[], owner=("h", 1, None), study_id=study_id,
                                fold=fold, lease=lease)[0]


def test_claims_hand_out_each_fold_once_and_an_expired_lease_is_taken_over(any_db):
    store = Store(any_db)
    sid = store.create_study(data_path="d.jsonl", data_sha256="0" * 64, folds=3, seeds=[7], config={})
    a, b, c = (Lease(f"host-{n}:1:1", 0.5) for n in "abc")
    assert store.claim_study_run(sid, a) == Claim(7, 1)
    run1 = _run(any_db, sid, 7, 1, a)
    assert store.claim_study_run(sid, b) == Claim(7, 2)  # fold 1 is a's now
    with pytest.raises(StoreError, match="already has a run for fold 1"):  # two workers on one fold meet here
        _run(any_db, sid, 7, 1, b)
    _run(any_db, sid, 7, 2, b)
    _run(any_db, sid, 7, 3, b)
    assert store.claim_study_run(sid, c) == Claim(waiting=3)  # all held, none done
    assert store.renew_lease(sid, 7, 2, b) and store.renew_lease(sid, 7, 3, b)
    time.sleep(0.6)  # a stops renewing; b renewed just before: only fold 1's lease runs out
    store.renew_lease(sid, 7, 2, b), store.renew_lease(sid, 7, 3, b)
    claim = store.claim_study_run(sid, c)
    assert (claim.seed, claim.fold, claim.run_id, claim.taken_from) == (7, 1, run1, a.owner)
    taken = store.get_run(run1)
    assert (taken.status, taken.lease_owner) == ("interrupted", c.owner)
    assert "stopped renewing its lease" in taken.error
    assert store.renew_lease(sid, 7, 1, a) is False  # a, back from a stall, learns it lost the run
    assert store.renew_lease(sid, 7, 1, c) is True
    store.release_lease(sid, 7, 1, c)
    assert store.get_run(run1).lease_until is None
    assert store.claim_study_run(sid, c, fold=1) == Claim(7, 1, run1)  # ours again, at once


def test_a_fold_compared_on_its_held_out_split_stays_done_while_another_file_is_compared(any_db):
    """A comparison of a finished fold's models on another file (`wmg compare --run-id N --data
    OTHER`), running or failed, is not the fold's own: a worker must not take the fold again and
    repeat its held-out comparison (one did, in a study whose runs were compared out of
    distribution while the workers went on)."""
    store = Store(any_db)
    sid = store.create_study(data_path="d.jsonl", data_sha256="0" * 64, folds=2, seeds=[7], config={})
    a, b, c = (Lease(f"host-{n}:1:1", 60) for n in "abc")
    run1 = _run(any_db, sid, 7, 1, a)
    store.finish_run(run1, "completed")
    store.release_lease(sid, 7, 1, a)
    assert store.claim_study_run(sid, b) == Claim(7, 1, run1)  # trained, not compared yet: still to make
    held = store.create_evaluation(run1, "validation", {})
    store.complete_evaluation(held.id, [], [], 1.0, None)
    store.release_lease(sid, 7, 1, b)
    assert store.get_run(run1).compared and store.claim_study_run(sid, c) == Claim(7, 2)
    other = store.create_evaluation(run1, "data/heldout_platforms_2.jsonl", {}, external=[])
    assert store.get_run(run1).latest_evaluation.status == "running"
    assert store.get_run(run1).compared and store.claim_study_run(sid, c) == Claim(7, 2)
    store.fail_evaluation(other.id, "stopped")
    assert store.get_run(run1).compared and store.claim_study_run(sid, c) == Claim(7, 2)
    again = store.create_evaluation(run1, "validation", {})  # a held-out comparison made again, failed
    store.fail_evaluation(again.id, "stopped")
    assert store.get_run(run1).compared  # the one that completed still stands


# ---------------------------------------------------------------- three workers, one killed
# Tiny models, one example per step with a log line each (the kill lands after the first epoch's
# checkpoint), fp32, no loader processes. The dead worker is on this machine, so the others free its
# lease at once (`reap_dead_runs`); a lease that runs out is the test above. Leases are long enough
# that a worker slowed down by the others never loses its own.
STUDY = ["train", "--tiny", "--data", str(SMALL), "--folds", "3", "--epochs", "4", "--batch-size", "1",
         "--log-every", "1", "--max-new-tokens", "16", "--no-progress", "--platform", "windows", "--precision", "fp32",
         "--record-only"]
WORK = ["work", "--study", "1", "--lease-seconds", "30", "--poll-seconds", "0.2", "--no-progress", "--format", "json"]
STEP = re.compile(r"^(flan-t5-small|distilgpt2): step=\d+ epoch=([\d.]+) ", re.M)


def _worker(db, log: Path):
    fh = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "wmg", *WORK, "--db", db], env=ENV, stdout=subprocess.PIPE,
                            stderr=fh, text=True)


def test_three_workers_on_postgresql_make_every_fold_once_with_one_killed_mid_run(new_store, tmp_path):
    db = new_store("postgresql")
    r = subprocess.run([sys.executable, "-m", "wmg", *STUDY, "--db", db, "--checkpoints", str(tmp_path / "ck"),
                        "--report", str(tmp_path / "report.json")], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wmg work --study 1" in r.stdout and sql(db, "SELECT COUNT(*) FROM runs") == [(0,)]

    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    workers = [_worker(db, log) for log in logs]
    victim, log = workers[0], logs[0]
    deadline = time.monotonic() + 300
    while not any(float(m.group(2)) > 1 for m in STEP.finditer(log.read_text())):  # past epoch 1's checkpoint
        assert victim.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    outs = [w.communicate(timeout=600)[0] for w in workers[1:]]
    assert [w.returncode for w in workers[1:]] == [0, 0], [p.read_text()[-2000:] for p in logs[1:]]

    victim_owner = f":{victim.pid}:"
    runs = sql(db, "SELECT seed, fold, status, resumes, lease_owner FROM runs ORDER BY fold")
    assert [(s, f, st) for s, f, st, *_ in runs] == [(42, 1, "completed"), (42, 2, "completed"), (42, 3, "completed")]
    taken = [x for x in runs if x[3] == 1]  # the victim's run, resumed once by the worker that took it over
    assert len(taken) == 1 and sum(x[3] for x in runs) == 1 and victim_owner not in taken[0][4]
    said = "".join(p.read_text() for p in logs[1:])
    assert re.search(rf"taken over from worker [^ ]*{victim_owner}", said), said[-3000:]
    assert re.search(r"Resuming from .*step-\d+: step [1-9]\d* of", said)  # from its checkpoint, not from scratch
    # every example held out and compared exactly once, each run compared once
    held = sql(db, "SELECT x.source_line FROM examples x WHERE x.split = 'validation' AND x.evaluation_id IS NULL")
    assert sorted(h for h, in held) == list(range(12))
    assert sql(db, "SELECT COUNT(*), COUNT(DISTINCT run_id) FROM evaluations WHERE status = 'completed'") == [(3, 3)]
    # both survivors end with the study complete and print its pooled analysis
    for out in outs:
        study = [rec for rec in json.loads(out) if rec.get("table") == "study"]
        assert {(rec["examples"], rec["folds_done"]) for rec in study if rec["instruction_form"] == "all"} == {(12, 3)}
