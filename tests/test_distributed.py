"""Training under torchrun: two local processes (DistributedDataParallel over gloo) give the losses
of one process, only rank 0 writes, and a rank that dies leaves the run interrupted and resumable."""
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SMALL
from wmg.distributed import Ranks

ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
# Tiny models, no dropout (each rank draws its own masks), fp32. Micro-batches of 3 rows with 2 per
# optimizer step: ranks get 2+1 rows, a last micro-batch of 1 row leaves rank 1 without rows, and
# the accumulation runs DDP's no_sync path.
TRAIN = ["train", "--tiny", "--data", str(SMALL), "--epochs", "3", "--batch-size", "3", "--grad-accum", "2",
         "--log-every", "1", "--dropout", "0", "--no-progress", "--no-compare", "--platform", "windows",
         "--precision", "fp32", "--seed", "5"]


def q(db, sql):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def torchrun(n, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
            "-m", "wmg", *map(str, args)]


@pytest.mark.parametrize("n,rows", [(2, 3), (2, 1), (3, 2), (2, 0)])
def test_each_rank_gets_a_contiguous_share_and_together_every_row(n, rows):
    shares = [Ranks(r, n).rows(rows) for r in range(n)]
    assert shares[0][0] == 0 and shares[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
    assert max(b - a for a, b in shares) - min(b - a for a, b in shares) <= 1


def test_two_processes_give_every_step_the_loss_of_one(tmp_path):
    one, two = str(tmp_path / "one.db"), str(tmp_path / "two.db")
    r = subprocess.run([sys.executable, "-m", "wmg", *TRAIN, "--db", one, "--checkpoints", tmp_path / "ck1"],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(torchrun(2, *TRAIN, "--db", two, "--checkpoints", tmp_path / "ck2"), env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "shared by 2 torchrun processes" in r.stdout
    steps = "SELECT m.name, s.step, s.loss, s.lr FROM train_steps s JOIN run_models m ON m.id = s.run_model_id " \
            "ORDER BY m.name, s.step"
    a, b = q(one, steps), q(two, steps)
    assert len(a) == len(b) > 12  # 2 models x 3 epochs of steps, each stored once (rank 0 alone)
    for x, y in zip(a, b):
        assert x[:2] == y[:2] and y[2] == pytest.approx(x[2], rel=1e-4) and y[3] == pytest.approx(x[3], rel=1e-9)
    assert q(two, "SELECT COUNT(*), MIN(status) FROM runs") == [(1, "completed")]
    epochs = "SELECT m.name, e.epoch, e.train_loss, e.val_loss FROM epoch_losses e JOIN run_models m " \
             "ON m.id = e.run_model_id ORDER BY m.name, e.epoch"
    for x, y in zip(q(one, epochs), q(two, epochs)):
        assert y[2] == pytest.approx(x[2], rel=1e-4) and y[3] == pytest.approx(x[3], rel=1e-4)


def _children(pid):
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _rank_of(pid):
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)


def test_a_rank_that_dies_leaves_the_run_interrupted_and_it_resumes(tmp_path):
    db, log = str(tmp_path / "results.db"), tmp_path / "rank0.log"
    opts = [*TRAIN, "--epochs", "3", "--batch-size", "1", "--grad-accum", "1"]
    with log.open("w") as fh:
        agent = subprocess.Popen(torchrun(2, *opts, "--db", db, "--checkpoints", tmp_path / "ck"), env=ENV,
                                 stdout=fh, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    step = re.compile(r"^flan-t5-small: step=\d+ epoch=([\d.]+) ", re.M)
    while not any(float(e) > 1 for e in step.findall(log.read_text())):  # past epoch 1's checkpoint
        assert agent.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    follower = next(p for p in _children(agent.pid) if _rank_of(p) == 1)
    os.kill(follower, signal.SIGKILL)
    assert agent.wait(timeout=300) != 0
    status, error = q(db, "SELECT status, error FROM runs")[0]
    assert status == "interrupted", (status, error, log.read_text()[-3000:])
    assert q(db, "SELECT status FROM run_models ORDER BY position") == [("interrupted",), ("interrupted",)]
    r = subprocess.run([sys.executable, "-m", "wmg", "train", "--resume", "1", "--db", db, "--no-progress",
                        "--no-compare"], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"Resuming from .*: step [1-9]\d* of", r.stdout)
    assert q(db, "SELECT status, resumes FROM runs") == [("completed", 1)]


def test_a_bad_option_under_torchrun_is_one_line_and_no_rank_is_left_waiting(tmp_path):
    r = subprocess.run(torchrun(2, "train", "--tiny", "--data", tmp_path / "missing.jsonl", "--db", tmp_path / "r.db",
                                "--no-progress"), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "missing.jsonl" in r.stderr and "Traceback (most recent call last)" not in r.stderr.split("missing.jsonl")[0]
