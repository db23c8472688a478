"""Training under `torchrun`: DistributedDataParallel over gloo, rank 0 leading.

`torchrun --nproc-per-node N -m wmg train ...` (multi-node: `--nnodes M --rdzv-backend c10d
--rdzv-endpoint HOST:PORT` on every machine) starts N processes per machine. Rank 0 is wmg as
usual: it reads the data, trains the tokenizer, builds the model, writes the store, the
checkpoints and the report. Every other rank is a follower that does nothing but train: when
rank 0 enters the training loop it sends the followers the job (the model as built, its
training examples, the hyperparameters and any resume state); all ranks then run the same
loop, each on its share of every micro-batch's rows, and DistributedDataParallel sums the
gradients. The loss of each micro-batch is divided by the scored tokens of the whole
optimizer step on every rank and multiplied by the world size (DDP averages), so the summed
gradient, the clipping, the step and the schedule equal a single-process run's: every step's
loss agrees within float rounding (a test checks 1e-4 relative on tiny models). With dropout
the masks are drawn per rank, so a distributed run matches a single process in expectation
only.

A rank that dies (killed, out of memory, a machine lost) breaks the next collective on the
others: rank 0 then marks the run `interrupted` (`RankLost`) and it resumes, distributed or
not, from its last epoch checkpoint with `wmg train --resume N`.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence

BACKEND = "gloo"


class RankLost(RuntimeError):
    """A collective failed: another rank is gone. The run is interrupted, not completed."""

    def __init__(self, step: int, cause: BaseException):
        super().__init__(f"a training process (rank) stopped during step {step + 1}: "
                         f"{' '.join(str(cause).split())[:300]}")
        self.step = step


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share [start, stop) of n rows (the first n % world ranks get one more)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)


_current: Ranks | None = None


def from_env() -> Ranks | None:
    """The torchrun world this process belongs to (RANK, WORLD_SIZE), or None: a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ:
        return None
    return Ranks(int(os.environ["RANK"]), world)


def current() -> Ranks | None:
    """The world of this process once `leading`/`follow` has joined it; None otherwise."""
    return _current


def local_ranks() -> int:
    """How many ranks torchrun started on this machine (1 outside torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def threads_per_process() -> int:
    """This machine's physical cores shared among the ranks torchrun started on it."""
    from .device import physical_cores

    return max(1, physical_cores() // local_ranks())


def _join(ranks: Ranks) -> None:
    global _current
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(BACKEND)
    _current = ranks


def _leave() -> None:
    global _current
    import torch.distributed as dist

    _current = None
    if dist.is_initialized():
        dist.destroy_process_group()


def _broadcast(obj: Any = None) -> Any:
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


@dataclass
class Job:
    """What a follower needs to run the training loop beside rank 0."""
    model: Any
    train_data: Sequence[Any]
    cfg: Any
    model_type: str
    pad_id: int
    device: str
    resume: Any  # a TrainState (wmg.train), its dict, or None


def send_job(job: Job) -> None:
    _broadcast(job)


@contextlib.contextmanager
def leading(ranks: Ranks):
    """Rank 0 for the length of a command. When the command ends well the followers are told to
    stop; when it fails, rank 0 says nothing more (the followers may be inside a collective
    that a message would not match) and its exit breaks their next collective instead."""
    _join(ranks)
    try:
        yield  # an exception from the command is raised here, and skips the message
        _broadcast(None)
        _barrier()  # every follower has the message before any rank tears its connections down
    finally:
        _leave()


def follow(ranks: Ranks) -> int:
    """A follower's whole life: run each job rank 0 sends until it sends None. Returns the exit status."""
    import torch

    from .train import TrainingInterrupted, train

    torch.set_num_threads(threads_per_process())
    _join(ranks)
    try:
        while True:
            try:
                job = _broadcast()
            except RuntimeError:  # torch.distributed's errors included
                return 1  # rank 0 stopped with an error (it reports it) or died
            if job is None:
                _barrier()
                return 0
            try:
                train(job.model, job.train_data, job.cfg, job.model_type, job.pad_id, device=job.device,
                      progress=False, resume=job.resume)
            except TrainingInterrupted:
                pass  # rank 0 stopped on a signal; it decides what comes next
    except RankLost:
        return 1
    finally:
        _leave()


def torchrun_aware(command):
    """Run a click command under torchrun: rank 0 runs it as usual (leading the others), every
    other rank follows. Outside torchrun the command runs unchanged."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        ranks = from_env()
        if ranks is None:
            return command(*args, **kwargs)
        if not ranks.leader:
            status = follow(ranks)
            sys.stdout.flush()
            sys.stderr.flush()
            # A follower writes nothing but its output: it ends without the interpreter's teardown,
            # in which a C++ thread still joinable (seen once in a CI-like run) aborted the process
            # ("terminate called without an active exception") after every job was done.
            os._exit(status)
        with leading(ranks):
            return command(*args, **kwargs)

    return wrapper
