"""Device and platform set-up, and the banner that says what was chosen and why.

`setup()` must run before any model is built: on the CPU (the default) it hides CUDA
devices and makes PyTorch report MPS as unavailable, so nothing lands on an accelerator
by accident. A user opts in with `--device cuda|mps`.
"""
from __future__ import annotations

import os
import platform as _platform
from dataclasses import dataclass

from .config import env_number
from .console import RULE



def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_support() -> tuple[bool, str]:
    """Whether the CPU has native bf16 matmuls (AMX or AVX512-BF16), and the banner's reason."""
    flags = _cpu_flags()
    if "amx_bf16" in flags:
        return True, "this CPU has AMX-BF16"
    if "avx512_bf16" in flags:
        return True, "this CPU has AVX512-BF16, no AMX"
    if not flags:
        return False, "the CPU's features are unknown here (no /proc/cpuinfo), so no bf16 matmul support is assumed"
    return False, "this CPU has no bf16 matmul support (no AMX-BF16, no AVX512-BF16)"


def autocast(precision: str, device: str):
    """The context a forward pass runs in at `precision`: bf16 autocast, or nothing for fp32
    (one definition for training, generation and the benchmarks)."""
    import contextlib

    import torch

    if precision == "bf16":
        return torch.autocast(device_type="cuda" if device == "cuda" else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: str) -> str:
    return choose_precision(precision, device)[0]


def choose_precision(precision: str, device: str) -> tuple[str, str]:
    """The precision to use and why, for the banner."""
    if precision != "auto":
        return precision, "asked for with --precision"
    if device == "cpu":
        native, why = bf16_support()
        return ("bf16" if native else "fp32"), why
    return ("bf16", "CUDA device") if device == "cuda" else ("fp32", f"{device} device")


class PeakMemory:
    """The peak resident memory of this process from now on, in MB: Linux restarts the kernel's
    high-water mark (VmHWM) when "5" is written to /proc/self/clear_refs, so each model's training
    and each comparison gets its own peak. Where that is not possible, `mb()` is None (not
    measured), never the whole process's peak under another name. Data-loading worker processes
    are not counted."""

    def __init__(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.started = True
        except OSError:
            self.started = False

    def mb(self) -> float | None:
        if not self.started:
            return None
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return round(int(line.split()[1]) / 1024, 1)
        except (OSError, ValueError, IndexError):
            pass
        return None


def usable_cpus() -> int:
    """Logical CPUs this process may run on: its affinity (`taskset`, a batch scheduler's cpuset)
    where the system has one, else every CPU of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def loader_processes(platform: str) -> int:
    """DataLoader processes for this process: two on unix, one where it may run on one CPU only (a
    process pinned to one core gets one loader process, not two on that core), none on windows
    (avoids spawn issues). A property of the machine, not of the experiment: a run or study
    continued elsewhere takes the count of the process that continues it."""
    return min(2, usable_cpus()) if platform == "unix" else 0


def physical_cores() -> int:
    """Physical cores available to this process (hyperthreads share a core's matmul units)."""
    avail = usable_cpus()
    pairs = set()
    try:
        for cpu in os.sched_getaffinity(0):
            path = f"/sys/devices/system/cpu/cpu{cpu}/topology/core_id"
            pkg = f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id"
            with open(path) as a, open(pkg) as b:
                pairs.add((a.read().strip(), b.read().strip()))
    except (OSError, AttributeError):
        return avail
    return max(1, min(avail, len(pairs) or avail))


def glibc():
    """The C library for malloc tuning on Linux, or None where it is not glibc."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def limit_heap_growth() -> bool:
    """Serve large allocations with mmap so freed tensors go back to the system.

    glibc raises its mmap threshold after each large free, so later tensors of new
    shapes come from the heap and fragment it; a CPU training run with dynamic
    padding then keeps gigabytes it no longer uses. A fixed threshold
    (WMG_MMAP_THRESHOLD bytes, default 4 MiB; 0 leaves glibc alone) stops that.
    """
    threshold = env_number("WMG_MMAP_THRESHOLD")
    libc = glibc()
    if not threshold or libc is None:
        return False
    return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD


def heap_trimmer(every: int | None = None):
    """A callable for the training loop, `trim(step)` after each optimizer step, that hands the
    heap's free pages back to the system (glibc's `malloc_trim`) when `step` is a multiple of
    `every` (default: WMG_TRIM_STEPS, else 1; 0 = never), and at once when called without a step
    (an epoch's end); None where that is off or the C library is not glibc.

    Tensors under the mmap threshold come from the heap; batches of many shapes leave it full of
    free pieces that stay resident, so the resident set drifts up over an epoch and a training's
    peak with it. Trimming changes no number the training computes, only which freed pages the
    process keeps: `benchmarks/trim_memory.py` (scratch distilgpt2, 60 steps of many shapes, Zen 4)
    measured the peak 0.93x and the time 0.99x with a trim after every step, the same final weights."""
    if every is None:
        every = env_number("WMG_TRIM_STEPS")
    libc = glibc() if every > 0 else None
    if libc is None:
        return None

    def trim(step: int | None = None) -> None:
        if step is None or step % every == 0:
            libc.malloc_trim(0)

    return trim


def hide_accelerators() -> None:
    """Make PyTorch see no CUDA or MPS device, so nothing is placed on one by accident."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    torch.cuda.is_available = lambda: False  # type: ignore[assignment]
    try:
        torch.backends.mps.is_available = lambda: False  # type: ignore[assignment]
    except AttributeError:
        pass


@dataclass(frozen=True)
class PlatformInfo:
    platform: str
    cores: int
    workers: int
    torch_version: str
    device: str
    threads: int
    precision: str = "fp32"


def setup(device: str = "cpu", platform: str = "auto", echo=print, precision: str = "auto",
          workers: bool = True) -> PlatformInfo:
    """Hide accelerators unless asked for, set threads, pick loader workers and precision;
    print what was chosen and why."""
    limit_heap_growth()
    heap_trimmer()  # WMG_TRIM_STEPS checked before anything is stored
    if device == "cpu":
        hide_accelerators()
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        from .config import ConfigError

        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    if device == "mps" and not torch.backends.mps.is_available():
        from .config import ConfigError

        raise ConfigError("--device mps was asked for but MPS is not available")
    if platform == "auto":
        platform = "windows" if _platform.system() == "Windows" else "unix"
    cores = usable_cpus()
    n_workers = loader_processes(platform)
    from .distributed import local_ranks, threads_per_process

    threads = threads_per_process()  # the physical cores, shared among the ranks torchrun started here
    if device == "cpu":
        torch.set_num_threads(threads)
    prec, why = choose_precision(precision, device)
    echo(RULE)
    echo("DEVICE SETUP")
    echo(RULE)
    if device == "cpu":
        echo("✓ Device: CPU (CUDA and MPS hidden from PyTorch; opt in with --device cuda|mps)")
        ranks = local_ranks()
        echo(f"✓ Compute threads: {threads} (physical cores of {cores} logical CPUs"
             + (f", shared by {ranks} torchrun processes)" if ranks > 1 else ")"))
    else:
        echo(f"✓ Device: {device.upper()} (asked for with --device)")
    if workers:
        echo(f"✓ Data loading processes: {n_workers} ({'unix' if platform == 'unix' else 'windows: none, avoids spawn issues'})")
    echo(f"✓ Precision: {prec} ({why})")
    echo(f"✓ PyTorch {torch.__version__}")
    return PlatformInfo(platform, cores, n_workers, torch.__version__, device, threads, prec)
