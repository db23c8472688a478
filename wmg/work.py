"""`wmg work --study ID`: one of any number of worker processes, on any machines sharing the
results store, that make a study's runs between them.

A worker claims one (seed, fold) at a time under a lease (`Store.claim_study_run`), renews the
lease from a background thread while it trains and compares, and gives it up when the run is
done. A worker that dies (SIGKILL, power loss, a machine cut off) stops renewing; once its
lease has run out another worker takes the run over and resumes it from its last checkpoint,
which must therefore sit in a folder every worker can read (`--checkpoints` on a shared
file system). When nothing is claimable but runs are held by other workers, a worker waits
for them: it takes over any whose lease runs out, and exits once the study is complete.

A worker that could not renew its lease for the lease's whole length may have lost its run
to another worker: it stops at once (exit status 75) instead of racing it, writing nothing
more to the store.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

from .console import banner
from .interrupt import process_alive, process_identity
from .pipeline import Echo, _study_ready, make_study_run
from .store import Lease, Store, StoreError, StudyInfo

LEASE_SECONDS = 120.0
LOST_LEASE_EXIT = 75  # EX_TEMPFAIL: nothing wrong with the run; another worker has it


def worker_name() -> str:
    host, pid, start = process_identity()
    return f"{host}:{pid}:{start if start is not None else '-'}"


class Heartbeat:
    """Renews the lease on one (seed, fold) every third of its length, in a daemon thread."""

    def __init__(self, store: Store, study_id: int, seed: int, fold: int, lease: Lease):
        self.store, self.key, self.lease = store, (study_id, seed, fold), lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="wmg-lease", daemon=True)

    def _beat(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.lease.seconds / 3):
            try:
                held = self.store.renew_lease(*self.key, self.lease)
            except Exception as exc:  # the store unreachable for a moment: try again next beat
                held = None
                print(f"wmg work: could not renew the lease on study {self.key[0]} fold {self.key[2]}: "
                      f"{' '.join(str(exc).split())[:200]}", file=sys.stderr, flush=True)
            if held:
                renewed = time.monotonic()
            if held is False or time.monotonic() - renewed > self.lease.seconds:
                print(f"wmg work: lost the lease on study {self.key[0]}, seed {self.key[1]}, fold {self.key[2]} "
                      f"(another worker may have taken it over); stopping at once", file=sys.stderr, flush=True)
                os._exit(LOST_LEASE_EXIT)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class WorkDone:
    """What one worker made: the runs it finished, the runs it took over from dead workers."""
    study: StudyInfo
    made: list[int]
    taken_over: list[int]


def work_study(store: Store, study_id: int, echo: Echo = print, progress: bool = True, lease_seconds: float = LEASE_SECONDS,
               poll_seconds: float | None = None, only_fold: int | None = None, on_comparison=None) -> WorkDone:
    """Claim, make and compare the study's runs until none is left; see the module's docstring."""
    study = _study_ready(store, study_id, only_fold)
    lease = Lease(worker_name(), lease_seconds)
    poll = poll_seconds if poll_seconds is not None else max(1.0, lease_seconds / 4)
    echo(f"✓ Worker {lease.owner} on study {study_id} ({study.folds} folds x {len(study.seeds)} seeds), "
         f"lease {lease_seconds:g} s")
    made, taken, waited = [], [], False
    while True:
        store.reap_dead_runs(process_alive)  # this machine's dead processes, at once
        claim = store.claim_study_run(study_id, lease, only_fold)
        if claim.done:
            break
        if claim.seed is None:
            if not waited:
                echo(f"  waiting: {claim.waiting} run(s) held by other workers; taking over any whose lease runs out")
                waited = True
            time.sleep(poll)
            continue
        waited = False
        run = None
        if claim.run_id is not None:
            run = store.get_run(claim.run_id)
        banner(echo, f"STUDY {study_id}: FOLD {claim.fold} OF {study.folds}, SEED {claim.seed} (worker {lease.owner})")
        if claim.taken_from:
            echo(f"✓ Run {claim.run_id} taken over from worker {claim.taken_from}: {run.error or 'its lease ran out'}")
            taken.append(claim.run_id)
        try:
            with Heartbeat(store, study_id, claim.seed, claim.fold, lease):
                try:
                    run_id = make_study_run(store, study, claim.seed, claim.fold, run, echo, progress, on_comparison,
                                            lease=lease)
                except StoreError as exc:
                    if "already has a run" not in str(exc):
                        raise
                    echo(f"  fold {claim.fold}, seed {claim.seed} was just taken by another worker; claiming again")
                    continue
        finally:
            store.release_lease(study_id, claim.seed, claim.fold, lease)
        made.append(run_id)
    return WorkDone(store.get_study(study_id), made, taken)
