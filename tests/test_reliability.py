"""Reliability guarantees (README "Reliability"), each proven here: interrupted runs
resume with the same losses, killed runs are found, checkpoints are written atomically
and loaded safely, several processes share one store, old stores upgrade in place,
and bad input fails with one line leaving earlier runs intact."""
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from wmg.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = FIXTURES / "gadgets_small.jsonl"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")

# Tiny models, one example per step (9 steps per epoch: the open-form copies are off, they
# only add lines), dropout on so that the RNG state matters, fp32, so that a run takes seconds.
# The resume tests run under both platforms' default loader settings (unix: worker processes,
# persistent across epochs; windows: none); the others need no workers.
BASE = ["train", "--tiny", "--data", str(SMALL), "--epochs", "4", "--batch-size", "1", "--grad-accum", "1", "--eval-split", "0.25",
        "--seed", "3", "--log-every", "1", "--dropout", "0.1", "--no-progress", "--no-compare",
        "--precision", "fp32", "--no-open-copies"]
TRAIN = [*BASE, "--platform", "windows"]
STEPS_PER_EPOCH = 9


def wmg(args, cwd, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "wmg", *map(str, args)], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=600, **kw)


def q(db, sql, *args):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def losses(db):
    return q(db, "SELECT m.name, s.step, s.loss, s.lr FROM train_steps s JOIN run_models m ON m.id = s.run_model_id "
                 "ORDER BY m.name, s.step")


def epoch_losses(db):
    return q(db, "SELECT m.name, e.epoch, e.train_loss, e.val_loss FROM epoch_losses e "
                 "JOIN run_models m ON m.id = e.run_model_id ORDER BY m.name, e.epoch")


def assert_same_curve(a, b):
    assert len(a) == len(b) and a, (len(a), len(b))
    for x, y in zip(a, b):
        assert x[:2] == y[:2]
        for u, v in zip(x[2:], y[2:]):
            assert u == pytest.approx(v, rel=1e-6, abs=1e-7), (x, y)


def start_training(work, db, platform="windows", session=False):
    """`session`: in a process group of its own, as a job under a shell or a batch scheduler."""
    return subprocess.Popen([sys.executable, "-m", "wmg", *BASE, "--platform", platform, "--db", db,
                             "--checkpoints", "ck"], cwd=work, start_new_session=session,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(proc, step):
    """Read the child's log until it reports `step` (of its first model)."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if f": step={step} " in line:  # `flan-t5-small: step=13 epoch=1.44 loss=... learning_rate=...`
            return seen
    raise AssertionError("training ended before step %d:\n%s" % (step, "".join(seen[-30:])))


@pytest.fixture(scope="module", params=["unix", "windows"])
def reference(tmp_path_factory, request):
    """The same run, never interrupted: the loss curve every resumed run must reproduce, and the
    platform whose loader settings it ran with."""
    work = tmp_path_factory.mktemp("reference")
    r = wmg([*BASE, "--platform", request.param, "--db", "ref.db", "--checkpoints", "ck"], cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    workers = re.search(r"Data loading processes: (\d+) \((\w+)", r.stdout)
    assert workers and workers[2] == request.param and (int(workers[1]) > 0) == (request.param == "unix"), r.stdout
    db = str(work / "ref.db")
    assert len(losses(db)) == 2 * 4 * STEPS_PER_EPOCH
    return losses(db), epoch_losses(db), request.param


# ---------------------------------------------------------------- interruption and resume
@pytest.mark.parametrize("sig, code, to", [(signal.SIGINT, 130, "process"), (signal.SIGTERM, 143, "process"),
                                           (signal.SIGTERM, 143, "group")])
def test_signal_mid_epoch_checkpoints_and_resume_gives_the_same_losses(tmp_path, reference, sig, code, to):
    """`group`: the signal reaches the data loader's worker processes too, as a batch scheduler's
    SIGTERM to a job does; the workers leave the stop to wmg (Ctrl-C, SIGINT to the group, was
    measured to pass before the workers ignored it too: PyTorch's workers already ignore SIGINT)."""
    db = str(tmp_path / "results.db")
    proc = start_training(tmp_path, db, reference[2], session=to == "group")
    wait_for_step(proc, STEPS_PER_EPOCH + 4)  # in the middle of the second epoch of flan-t5-small
    if to == "group":
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out[-2000:]
    assert f"Interrupted: run 1 stopped by {signal.Signals(sig).name}" in out
    status, error = q(db, "SELECT status, error FROM runs")[0]
    assert status == "interrupted" and "wmg train --resume 1" in error
    step = int(error.split("after step ")[1].split(";")[0])
    assert STEPS_PER_EPOCH < step < 4 * STEPS_PER_EPOCH  # stopped mid-run, not at its end
    assert q(db, "SELECT MAX(step) FROM train_steps") == [(step,)]  # every step up to the stop is stored

    r = wmg(["train", "--resume", "1", "--db", db, "--no-progress", "--no-compare"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"Resuming from" in r.stdout and f"step {step} of {4 * STEPS_PER_EPOCH}" in r.stdout
    assert_same_curve(losses(db), reference[0])
    assert_same_curve(epoch_losses(db), reference[1])
    assert q(db, "SELECT status, resumes, error FROM runs") == [("completed", 1, None)]
    assert not list(tmp_path.glob("ck/run-1/*/resume"))  # resume state removed once the final model is saved


def test_sigkill_is_found_by_wmg_runs_and_the_run_resumes(tmp_path, reference):
    db = str(tmp_path / "results.db")
    proc = start_training(tmp_path, db, reference[2])
    wait_for_step(proc, 2 * STEPS_PER_EPOCH + 3)
    proc.kill()
    proc.communicate(timeout=60)
    assert q(db, "SELECT status FROM runs") == [("running",)]  # nobody could mark it

    r = wmg(["runs", "--db", db, "--format", "json"], cwd=tmp_path)
    assert r.returncode == 0
    assert "run 1: its process is gone" in r.stderr
    assert {rec["status"] for rec in json.loads(r.stdout)} == {"interrupted"}
    assert q(db, "SELECT status FROM run_models ORDER BY position") == [("interrupted",), ("interrupted",)]

    r = wmg(["train", "--resume", "1", "--db", db, "--no-progress", "--no-compare"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"step {2 * STEPS_PER_EPOCH} of" in r.stdout  # from the checkpoint of the last epoch end
    assert_same_curve(losses(db), reference[0])
    assert_same_curve(epoch_losses(db), reference[1])


def test_a_live_run_is_not_reaped_and_cannot_be_resumed_twice(tmp_path):
    db = str(tmp_path / "results.db")
    proc = start_training(tmp_path, db)
    try:
        wait_for_step(proc, 2)
        r = wmg(["runs", "--db", db, "--format", "json"], cwd=tmp_path)
        assert {rec["status"] for rec in json.loads(r.stdout)} == {"running"}
        r = wmg(["train", "--resume", "1", "--db", db], cwd=tmp_path)
        assert r.returncode == 1 and r.stderr.strip().count("\n") == 0
        assert "still running" in r.stderr
    finally:
        proc.kill()
        proc.communicate(timeout=60)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run stopped by SIGINT in its second epoch (copied by each test that damages it)."""
    work = tmp_path_factory.mktemp("interrupted")
    proc = start_training(work, str(work / "results.db"))
    wait_for_step(proc, STEPS_PER_EPOCH + 2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    return work


def _copy(src, dst):
    """A copy of a run's folder, its store pointing at the copied checkpoints."""
    shutil.copytree(src, dst)
    db = str(dst / "results.db")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET checkpoint_dir = ?", (str(dst / "ck" / "run-1"),))
    return db, next((dst / "ck" / "run-1" / "flan-t5-small" / "resume").glob("step-*"))


def test_resume_refuses_other_options_and_completed_runs(interrupted, tmp_path):
    db, _ = _copy(interrupted, tmp_path / "w")
    r = CliRunner().invoke(main, ["train", "--resume", "1", "--epochs", "9", "--db", db])
    assert r.exit_code == 2 and "do not give --epochs" in r.output  # a usage error
    r = CliRunner().invoke(main, ["train", "--resume", "abc", "--db", db])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "not a run id" in r.output


def test_a_resumed_run_compares_with_the_options_it_was_started_with(interrupted, tmp_path):
    """The comparison options given to `wmg train` are kept with the run: a resume compares as the
    start asked (here: not at all, --no-compare) unless an option is given again; a run recorded
    before they were kept says so in one line and takes the options given and the defaults."""
    db, _ = _copy(interrupted, tmp_path / "w")
    assert json.loads(q(db, "SELECT config_json FROM runs")[0][0])["compare"]["compare"] is False
    r = wmg(["train", "--resume", "1", "--max-new-tokens", "8", "--db", db], cwd=tmp_path / "w")
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(l for l in r.stdout.splitlines() if "Comparison options as run 1 was started" in l)
    assert "compare=False" in line and "no_repeat_ngram_size=3" in line and "max_new_tokens" not in line
    assert q(db, "SELECT COUNT(*) FROM evaluations") == [(0,)]

    db, _ = _copy(interrupted, tmp_path / "older")
    with sqlite3.connect(db) as conn:  # as a run recorded before the options were kept
        cfg = json.loads(conn.execute("SELECT config_json FROM runs").fetchone()[0])
        del cfg["compare"]
        conn.execute("UPDATE runs SET config_json = ?", (json.dumps(cfg),))
    r = wmg(["train", "--resume", "1", "--max-new-tokens", "8", "--no-repeat-ngram-size", "0", "--db", db],
            cwd=tmp_path / "older")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "! Run 1 kept no comparison options" in r.stdout
    (ev,) = q(db, "SELECT config_json FROM evaluations")
    assert {k: json.loads(ev[0])[k] for k in ("max_new_tokens", "no_repeat_ngram_size")} == \
        {"max_new_tokens": 8, "no_repeat_ngram_size": 0}


def test_truncated_checkpoint_is_one_clear_line_and_the_run_stays_as_it_was(interrupted, tmp_path):
    db, folder = _copy(interrupted, tmp_path / "w")
    before = q(db, "SELECT * FROM runs"), losses(db)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    r = wmg(["train", "--resume", "1", "--db", db, "--no-progress"], cwd=tmp_path / "w")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"Error: {weights}: truncated or damaged "
                                             f"({len(data) // 2} bytes, expected {len(data)})"]
    assert (q(db, "SELECT * FROM runs"), losses(db)) == before


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_state_cannot_execute_code(interrupted, tmp_path):
    """trainer_state.pt is read with torch.load(weights_only=True): a pickle that would run a
    command is refused, even when the manifest was forged to match it."""
    db, folder = _copy(interrupted, tmp_path / "w")
    marker = tmp_path / "pwned"
    _Exploit.marker = marker
    state = folder / "trainer_state.pt"
    state.write_bytes(pickle.dumps({"format": 1, "step": _Exploit()}))
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    manifest["trainer_state.pt"] = {"bytes": state.stat().st_size, "sha256": hashlib.sha256(state.read_bytes()).hexdigest()}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))
    r = wmg(["train", "--resume", "1", "--db", db, "--no-progress"], cwd=tmp_path / "w")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{state}: cannot be loaded" in lines[0], r.stderr
    assert not marker.exists()
    assert q(db, "SELECT status FROM runs") == [("interrupted",)]


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch

    from wmg.checkpoint import CheckpointError, ResumeDir
    from wmg.config import resolve_models
    from wmg.models import build_scratch
    from wmg.pipeline import TINY

    spec = resolve_models("distilgpt2")[0]
    model, tok = build_scratch(spec, ["a tiny corpus for a tiny tokenizer"] * 4, 300, TINY["causal"])
    rd = ResumeDir(tmp_path / "resume")
    first = rd.save(model, tok, {"step": 1, "x": torch.ones(3)})
    real_save = torch.save

    def disk_full(obj, f, *a, **k):  # half a file, then the disk is full
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="trainer_state.pt: cannot be written .*No space left on device"):
        rd.save(model, tok, {"step": 2, "x": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    assert rd.latest() == first
    rd.verify(first)
    assert rd.load_state(first)["step"] == 1
    assert sorted(p.name for p in rd.root.iterdir()) == ["LATEST", "step-000001"]  # no half-written folder
    cfg = first / "config.json"
    text = cfg.read_text()
    cfg.write_text(text.replace('"', "'", 1))  # same size, one byte changed
    with pytest.raises(CheckpointError, match="config.json: damaged"):
        rd.verify(first)
    cfg.write_text(text[:-5])
    with pytest.raises(CheckpointError, match="config.json: truncated or damaged"):
        rd.verify(first)


# ---------------------------------------------------------------- concurrent use
WRITER = r"""
import sys
from wmg.data import Example
from wmg.store import AgreementRow, PredictionRow, Store
from wmg.config import resolve_models

db, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
specs = resolve_models("flan-t5-small,distilgpt2")
gold = "gadget_type: ReadWrite gadget; location: here; explanation: why."
exs = [Example(i, "Find the gadget.", f"excerpt {i} of {name}", gold) for i in range(12)]
store = Store(db)
for k in range(n):
    run_id, ids = store.create_run(data_path=name, data_sha256="0" * 64, examples_requested=None, eval_split=0.5,
                                   seed=k, init_requested="scratch", device="cpu", platform="unix", config={},
                                   versions={}, models=[(s, {}) for s in specs], train=exs[:6], validation=exs[6:])
    for mid in ids.values():
        store.record_epoch(mid, [], 1, 1.0, 1.0)
    eid, stored = store.create_evaluation(run_id, "validation", {})
    preds = [PredictionRow(x.id, s.name, gold, "ReadWrite gadget", "here", "why.", "readwrite", "ReadWrite gadget",
                           {"gadget_type": True, "location": True, "explanation": True}, True, 5, 0.1)
             for x in stored for s in specs]
    agr = [AgreementRow(x.id, 2, True, ["ReadWrite gadget"], ["readwrite"], "ReadWrite gadget", "readwrite", 2, True)
           for x in stored]
    store.complete_evaluation(eid, preds, agr, 1.0, None)
    store.finish_run(run_id, "completed", None, 1.0)
"""

READER = r"""
import sys, time
from wmg.store import Store
db, seconds = sys.argv[1], float(sys.argv[2])
end, checks = time.time() + seconds, 0
while time.time() < end:
    for row in Store(db).query("SELECT e.id, e.n_examples, (SELECT COUNT(*) FROM predictions p WHERE p.evaluation_id = e.id) AS p, "
                               "(SELECT COUNT(*) FROM agreements a WHERE a.evaluation_id = e.id) AS a "
                               "FROM evaluations e WHERE e.status = 'completed'"):
        assert row["p"] == 2 * row["n_examples"] and row["a"] == row["n_examples"], row
        checks += 1
    Store(db).query("SELECT * FROM model_comparison")
print(checks)
"""


def test_concurrent_writers_and_a_reader_on_a_fresh_store(any_db):
    """Four writer processes start at once on a store that does not exist yet (so they also race to
    create its schema) while a reader checks that no comparison is ever seen half-written. On SQLite
    (a file) and on PostgreSQL (an empty database of the session's throwaway server)."""
    from conftest import is_pg, sql

    db = any_db
    n = 8
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, db, f"w{i}", str(n)], env=ENV, stderr=subprocess.PIPE,
                                text=True) for i in range(4)]
    time.sleep(0.5)
    reader = subprocess.Popen([sys.executable, "-c", READER, db, "6"], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    for w in writers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-2000:]
    out, err = reader.communicate(timeout=300)
    assert reader.returncode == 0, err[-2000:]
    assert int(out) > 0  # the reader did look at completed comparisons
    assert sql(db, "SELECT COUNT(*), SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) FROM runs") \
        == [(4 * n, 4 * n)]
    assert sql(db, "SELECT COUNT(*) FROM predictions") == [(4 * n * 6 * 2,)]
    assert sql(db, "SELECT COUNT(*) FROM examples") == [(4 * n * 12,)]
    assert sql(db, "SELECT data_path, COUNT(*) FROM runs GROUP BY data_path ORDER BY data_path") \
        == [(f"w{i}", n) for i in range(4)]
    if not is_pg(db):
        assert q(db, "PRAGMA integrity_check") == [("ok",)]


def test_two_trainings_a_comparison_and_an_analysis_at_once(any_db, tmp_path):
    """SQLite and a real PostgreSQL server: concurrent writers and a reader lose nothing."""
    from conftest import sql

    db = any_db
    common = ["--tiny", "--data", SMALL, "--epochs", "1", "--batch-size", "4", "--eval-split", "0.25",
              "--max-new-tokens", "8", "--no-progress", "--no-show-examples", "--platform", "windows", "--db", db]
    first = wmg(["train", *common, "--checkpoints", "ck0", "--report", "r0.json"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]

    def spawn(args):
        return subprocess.Popen([sys.executable, "-m", "wmg", *map(str, args)], cwd=tmp_path, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [spawn(["train", *common, "--seed", "1", "--checkpoints", "ck1", "--report", "r1.json"]),
             spawn(["train", *common, "--seed", "2", "--checkpoints", "ck2", "--report", "r2.json"]),
             spawn(["compare", "--run-id", "1", "--db", db, "--no-progress", "--max-new-tokens", "8",
                    "--report", "r3.json", "--no-show-examples"])]
    analyses = 0
    while any(p.poll() is None for p in procs):
        r = wmg(["analyze", "models", "--all-runs", "--db", db], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        analyses += 1
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, err[-2000:]
    assert analyses >= 1
    assert sql(db, "SELECT id, status FROM runs ORDER BY id") == [(1, "completed"), (2, "completed"), (3, "completed")]
    assert sql(db, "SELECT run_id, COUNT(*) FROM evaluations WHERE status = 'completed' GROUP BY run_id "
                   "ORDER BY run_id") == [(1, 2), (2, 1), (3, 1)]
    # every step and prediction of every run is there once
    assert sql(db, "SELECT COUNT(*) FROM run_models WHERE status = 'completed'") == [(6,)]
    assert sql(db, "SELECT COUNT(*), COUNT(DISTINCT run_model_id || '-' || step) FROM train_steps") == \
        sql(db, "SELECT SUM(steps), SUM(steps) FROM run_models")


def test_lock_held_too_long_is_one_clear_line(tmp_path, monkeypatch):
    """When another process keeps the write lock past the busy timeout and every retry, the
    command fails with one line instead of a traceback, and nothing is half-written."""
    import wmg.store.session as session

    db = str(tmp_path / "locked.db")
    assert CliRunner().invoke(main, ["db", "upgrade", "--db", db]).exit_code == 0
    monkeypatch.setattr(session, "LOCK_RETRIES", 2)
    holder = sqlite3.connect(db, isolation_level=None, timeout=0.1)
    holder.execute("BEGIN IMMEDIATE")
    try:
        from wmg.store import Store, StoreError

        with monkeypatch.context() as m:
            m.setattr(session, "BUSY_TIMEOUT_MS", 100)
            session._engine.cache_clear()
            with pytest.raises(StoreError, match="locked by another process; gave up after 2 tries"):
                Store(db).set_checkpoint_dir(1, "x")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        session._engine.cache_clear()


# ---------------------------------------------------------------- schema upgrades
# The stores made by each past revision are SQLite files, so these upgrades are SQLite's only; no
# PostgreSQL store predates this wmg. A fresh PostgreSQL store's upgrade, all at once and one
# revision at a time, is tested in tests/test_store.py.
OLD = sorted((FIXTURES / "db").glob("*.db"))


def test_every_past_revision_has_a_stored_database():
    from alembic.script import ScriptDirectory

    from wmg.store.session import alembic_config, head_revision

    revisions = {r.revision for r in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()}
    assert {p.stem for p in OLD} == revisions - {head_revision()}


def _tables(path):
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                            "AND name NOT LIKE 'sqlite_%' AND name != 'alembic_version'")]
        return {n: (
            [c[1] for c in conn.execute(f"PRAGMA table_info({n})")],
            conn.execute(f"SELECT * FROM {n} ORDER BY 1").fetchall(),
        ) for n in names}


@pytest.mark.parametrize("asset", OLD, ids=[p.stem for p in OLD])
def test_old_database_upgrades_in_place_without_losing_data(asset, tmp_path):
    from conftest import schema_drift
    from wmg.store import Store

    db = str(tmp_path / "results.db")
    shutil.copy(asset, db)
    assert q(db, "SELECT version_num FROM alembic_version") == [(asset.stem,)]
    before = _tables(db)
    assert before["runs"][1] and before["predictions"][1] and before["train_steps"][1]

    r = CliRunner().invoke(main, ["runs", "--db", db])  # any command upgrades on first use
    assert r.exit_code == 0, r.output
    assert Store(db).revision() == Store.head()
    after = _tables(db)
    for table, (cols, rows) in before.items():
        new_cols = after[table][0]
        keep = [new_cols.index(c) for c in cols]
        assert [tuple(row[i] for i in keep) for row in after[table][1]] == rows, table
    assert schema_drift(db) == []
    # the upgraded store answers the analyses and takes new rows
    for cmd in (["show", "--run-id", "1"], ["analyze", "models", "--all-runs"], ["analyze", "runs"]):
        r = CliRunner().invoke(main, [*cmd, "--db", db])
        assert r.exit_code == 0, (cmd, r.output)
    assert q(db, "SELECT resumes FROM runs") == [(0,)] * len(before["runs"][1])
    assert q(db, "PRAGMA integrity_check") == [("ok",)]


def test_upgrading_twice_and_a_current_store_change_nothing(tmp_path):
    db = str(tmp_path / "results.db")
    shutil.copy(OLD[0], db)
    for _ in range(3):
        r = CliRunner().invoke(main, ["db", "upgrade", "--db", db])
        assert r.exit_code == 0, r.output
    from wmg.store.session import head_revision

    r = CliRunner().invoke(main, ["db", "current", "--db", db, "--format", "json"])
    assert json.loads(r.output) == [{"revision": head_revision(), "head": head_revision()}]


# ---------------------------------------------------------------- bad input
def one_line(r):
    """A failed subprocess: exactly one line on stderr, no traceback."""
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def store_with_a_run(tmp_path_factory):
    """A store holding one finished tiny run; bad input must leave it exactly as it is."""
    work = tmp_path_factory.mktemp("store")
    r = wmg(["train", "--tiny", "--data", SMALL, "--epochs", "1", "--batch-size", "4", "--eval-split", "0.25",
             "--max-new-tokens", "8", "--no-progress", "--no-show-examples", "--platform", "windows",
             "--db", "results.db", "--checkpoints", "ck"], cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    return work


def _fingerprint(db):
    return {t: rows for t, (_, rows) in _tables(db).items()}


@pytest.fixture
def store(store_with_a_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(store_with_a_run, work)
    return work, str(work / "results.db"), _fingerprint(str(work / "results.db"))


GOOD = json.loads(SMALL.read_text().splitlines()[0])


def _jsonl(path, *objs, raw=b""):
    path.write_bytes(b"".join(json.dumps(o).encode() + b"\n" for o in objs) + raw)
    return path


@pytest.mark.parametrize("case, expect", [
    ("utf8", ":2: not UTF-8 text"),
    ("huge_line", ":2: line longer than 4 MiB"),
    ("null_field", ":2: field 'input' is null"),
    ("number_field", ":2: field 'output' must be a string, got int"),
    ("not_object", ":2: expected a JSON object, got list"),
    ("deep", ":2: "),
    ("nul_char", ":2: field 'instruction' contains a NUL character"),
])
def test_bad_data_files(store, case, expect):
    work, db, before = store
    path = work / f"{case}.jsonl"
    if case == "utf8":
        _jsonl(path, GOOD, raw=b'{"instruction": "caf\xe9"}\n')
    elif case == "huge_line":
        _jsonl(path, GOOD, raw=b'{"input": "' + b"a" * (10 * 1024 * 1024) + b'"}\n')
    elif case == "null_field":
        _jsonl(path, GOOD, dict(GOOD, input=None))
    elif case == "number_field":
        _jsonl(path, GOOD, dict(GOOD, output=5))
    elif case == "not_object":
        _jsonl(path, GOOD, [1, 2])
    elif case == "deep":
        _jsonl(path, GOOD, raw=b"[" * 100000 + b"]" * 100000 + b"\n")
    elif case == "nul_char":
        _jsonl(path, GOOD, dict(GOOD, instruction="a\x00b"))
    for cmd in (["train", "--tiny", "--no-progress", "--data", path], ["compare", "--run-id", "1", "--data", path]):
        line = one_line(wmg([*cmd, "--db", db], cwd=work))
        assert line.startswith(f"Error: {path}") and expect in line, line
    assert _fingerprint(db) == before


def test_extra_fields_are_ignored_and_a_100k_word_excerpt_is_truncated(store):
    work, db, before = store
    long_excerpt = " ".join(["The rung latches the coil."] * 20000)  # 100,000 words
    path = _jsonl(work / "odd.jsonl", dict(GOOD, source="manual p. 12", reviewer=None),
                  dict(GOOD, input=long_excerpt))
    r = wmg(["compare", "--run-id", "1", "--data", path, "--db", db, "--no-progress", "--max-new-tokens", "8",
             "--no-show-examples"], cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    words = q(db, "SELECT MAX(excerpt_words) FROM examples")[0][0]
    assert words == 100000  # stored whole; the model saw its head and tail (max input length)
    # (in-process: an argument of 600 kB is more than a command line may carry)
    r = CliRunner().invoke(main, ["predict", "--run-id", "1", "--db", db, "--excerpt", long_excerpt,
                                  "--max-new-tokens", "8", "--json"])
    assert r.exit_code == 0, r.output[-2000:]
    assert [rec["model"] for rec in json.loads(r.stdout)] == ["flan-t5-small", "distilgpt2"]


def test_encoding_truncates_to_the_models_limits():
    from wmg.batching import encode_causal, encode_seq2seq
    from wmg.config import resolve_models
    from wmg.models import train_tokenizer

    words = " ".join(["coil"] * 100000)
    for spec in resolve_models("flan-t5-small,distilgpt2"):
        tok = train_tokenizer(spec, ["coil latch rung timer"] * 10, 300)
        s = encode_seq2seq(tok, "Task: x\n\nExcerpt:\n" + words + "\n\nAnswer:", words, 512, 256)
        assert len(s.input_ids) == 512 and len(s.labels) == 256
        c = encode_causal(tok, "Task: x\n\nExcerpt:\n" + words + "\n\nAnswer:", " " + words, 768, 256, "answer")
        assert len(c.input_ids) == 768


@pytest.mark.parametrize("args, expect", [
    (["show", "--run-id", "x1"], "Error: Invalid value for '--run-id': 'x1' is not a run id"),
    (["compare", "--run-id", "-3"], "is not a run id"),
    (["train", "--resume", "1.5"], "is not a run id"),
    (["show", "--run-id", "99"], "Error: no run with id 99"),
    (["analyze", "models", "--run-id", "nope"], "is not a run id"),
])
def test_bad_run_ids(store, args, expect):
    work, db, before = store
    assert expect in one_line(wmg([*args, "--db", db], cwd=work))
    assert _fingerprint(db) == before


def test_a_file_that_is_not_sqlite_is_left_alone(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"my thesis notes, not a database" * 100)
    before = path.read_bytes()
    for cmd in (["runs"], ["train", "--tiny", "--data", SMALL], ["analyze", "runs"], ["db", "upgrade"]):
        assert "not a SQLite database" in one_line(wmg([*cmd, "--db", path], cwd=tmp_path))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_read_only_store_reads_and_refuses_writes_in_one_line(store):
    work, db, before = store
    ro = f"sqlite:///file:{db}?mode=ro&uri=true"
    r = wmg(["runs", "--db", ro], cwd=work)
    assert r.returncode == 0 and "completed" in r.stdout
    assert wmg(["analyze", "models", "--all-runs", "--db", ro], cwd=work).returncode == 0
    line = one_line(wmg(["train", "--tiny", "--no-progress", "--data", SMALL, "--db", ro], cwd=work))
    assert "readonly database" in line
    line = one_line(wmg(["compare", "--run-id", "1", "--no-progress", "--db", ro], cwd=work))
    assert "readonly database" in line
    assert _fingerprint(db) == before


def _limit_file_size(limit):
    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.skipif(sys.platform == "win32", reason="file size limits are POSIX")
@pytest.mark.parametrize("limit", [20_000, 400_000], ids=["store-write-fails", "checkpoint-write-fails"])
def test_full_disk_fails_in_one_line_and_keeps_earlier_runs(store, limit):
    """A disk that fills up (simulated with RLIMIT_FSIZE: every write past `limit` bytes in one file
    fails) while a new run trains: one line, and the earlier run is untouched."""
    work, db, before = store
    r = subprocess.run([sys.executable, "-m", "wmg", "train", "--tiny", "--data", str(SMALL), "--epochs", "1",
                        "--no-progress", "--no-show-examples", "--platform", "windows", "--db", db,
                        "--checkpoints", "ck-full"],
                       cwd=work, env=ENV, capture_output=True, text=True, timeout=600,
                       preexec_fn=_limit_file_size(limit))
    line = one_line(r)
    assert "File too large" in line or "disk" in line.lower(), line
    after = _fingerprint(db)
    for table, rows in before.items():
        assert after[table][: len(rows)] == rows, table  # every earlier row as it was
    assert q(db, "PRAGMA integrity_check") == [("ok",)]
    assert q(db, "SELECT status FROM runs WHERE id = 1") == [("completed",)]


# ---------------------------------------------------------------- no secrets at rest
def test_keys_and_tokens_never_reach_disk(store):
    """A hub token in the environment of `wmg train` and an API key given to `wmg compare --judge llm`
    appear in no file the commands leave behind (store, its WAL, reports, checkpoints) nor in their output."""
    import threading

    from tests.test_judge_llm import Scripted, openai_reply, verdict_json

    work, db, _ = store
    token, key = "hf_TOPSECRETtoken123", "sk-live-TOPSECRET-456"
    srv = Scripted()
    env = dict(ENV, HF_TOKEN=token, HUGGING_FACE_HUB_TOKEN=token, OPENAI_API_KEY=key,
               OPENAI_BASE_URL=srv.url + "/v1", WMG_JUDGE_MODEL="local-judge")
    srv.script.extend([openai_reply(verdict_json("PARTIAL"))] * 64)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        outputs = [wmg(["train", "--tiny", "--data", SMALL, "--epochs", "2", "--eval-split", "0.25", "--no-progress",
                        "--no-show-examples", "--platform", "windows", "--max-new-tokens", "8", "--db", db,
                        "--checkpoints", "ck"], cwd=work, env=env),
                   wmg(["compare", "--run-id", "1", "--judge", "llm", "--report", "judged.json", "--no-progress",
                        "--max-new-tokens", "8", "--db", db], cwd=work, env=env)]
    finally:
        srv.shutdown()
    for r in outputs:
        assert r.returncode == 0, r.stderr[-2000:]
        assert token not in r.stdout + r.stderr and key not in r.stdout + r.stderr
    assert all(req["headers"].get("authorization") == f"Bearer {key}" for req in srv.requests)
    assert json.loads((work / "judged.json").read_text())["summary"]["semantic_agreement"]
    files = [p for p in work.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files) and any(p.name.endswith("-wal") or p.suffix == ".db" for p in files)
    for p in files:
        data = p.read_bytes()
        assert token.encode() not in data and key.encode() not in data, p


def test_sigterm_during_a_comparison_marks_it_failed(store):
    """Outside training SIGTERM unwinds like Ctrl-C: the comparison in progress is marked failed
    (not left `running`), exit status 143, earlier rows untouched."""
    work, db, before = store
    proc = subprocess.Popen([sys.executable, "-m", "wmg", "compare", "--run-id", "1", "--db", db, "--no-progress",
                             "--batch-size", "1", "--max-new-tokens", "256", "--no-repeat-ngram-size", "0",
                             "--data", str(SMALL)],
                            cwd=work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "Generating" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines() == ["Interrupted by SIGTERM"]
    assert q(db, "SELECT id, status, error FROM evaluations ORDER BY id")[-1][1:] == ("failed", "Terminated: ")
    after = _fingerprint(db)
    assert after["runs"] == before["runs"] and after["predictions"] == before["predictions"]


def test_upgrade_names_the_paraphrase_form_and_adds_the_study_columns(tmp_path):
    """0007: the third instruction form was stored as `other`; it is `paraphrase` now."""
    db = str(tmp_path / "results.db")
    shutil.copy(Path(__file__).parent / "fixtures" / "db" / "0006_baselines.db", db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE examples SET instruction_form = 'other' WHERE id IN (1, 2)")
    r = CliRunner().invoke(main, ["runs", "--db", db])
    assert r.exit_code == 0, r.output
    assert q(db, "SELECT DISTINCT instruction_form FROM examples WHERE id IN (1, 2)") == [("paraphrase",)]
    assert q(db, "SELECT COUNT(*) FROM examples WHERE instruction_form = 'other'") == [(0,)]
    assert q(db, "SELECT DISTINCT study_id, fold FROM runs") == [(None, None)]
    assert q(db, "SELECT COUNT(*) FROM system_accuracy WHERE kind = 'baseline' AND instruction_form = 'all'") == [(4,)]


def test_upgrade_fills_in_location_in_excerpt_for_stored_predictions(tmp_path):
    """0008: the check is computed for the predictions a store already holds."""
    db = str(tmp_path / "results.db")
    shutil.copy(Path(__file__).parent / "fixtures" / "db" / "0007_studies.db", db)
    with sqlite3.connect(db) as conn:
        (pid_in, ex_in), (pid_out, _), (pid_none, _) = conn.execute(
            "SELECT id, example_id FROM predictions ORDER BY id LIMIT 3").fetchall()
        excerpt = conn.execute("SELECT input FROM examples WHERE id = ?", (ex_in,)).fetchone()[0]
        span = "  ".join(excerpt.split()[2:6])  # four words of the excerpt, spaced differently
        conn.execute("UPDATE predictions SET location = ? WHERE id = ?", (span, pid_in))
        conn.execute("UPDATE predictions SET location = 'words that are nowhere in it' WHERE id = ?", (pid_out,))
    r = CliRunner().invoke(main, ["runs", "--db", db])
    assert r.exit_code == 0, r.output
    got = dict(q(db, "SELECT id, location_in_excerpt FROM predictions WHERE id IN (?, ?, ?)", pid_in, pid_out, pid_none))
    assert got == {pid_in: 1, pid_out: 0, pid_none: None}


def test_upgrade_adds_the_chosen_epoch_and_keeps_every_epoch_row(tmp_path):
    """0009: development-slice scores and the kept epoch are new, NULL for runs that kept their last epoch."""
    db = str(tmp_path / "results.db")
    shutil.copy(Path(__file__).parent / "fixtures" / "db" / "0008_location_in_excerpt.db", db)
    before = q(db, "SELECT run_model_id, epoch, train_loss, val_loss FROM epoch_losses ORDER BY id")
    r = CliRunner().invoke(main, ["runs", "--db", db])
    assert r.exit_code == 0, r.output
    assert q(db, "SELECT run_model_id, epoch, train_loss, val_loss FROM epoch_losses ORDER BY id") == before
    assert before and q(db, "SELECT DISTINCT dev_accuracy, dev_format FROM epoch_losses") == [(None, None)]
    assert q(db, "SELECT DISTINCT chosen_epoch FROM run_models") == [(None,)]
