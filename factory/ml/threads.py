"""CPU threads and training processes: the cores that are free now, and what the machine can hold.

`os.cpu_count()` counts cores other work is already using; oversubscribing
them is much slower than using fewer threads (measured: 2 threads with the
other core busy ran 6x slower than 1). We sample /proc/stat briefly and count
idle capacity among the cores this process may run on.
"""

from __future__ import annotations

import os
import time


def allowed_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
    except OSError:
        return None
    if not parts or parts[0] != "cpu":
        return None
    vals = [int(v) for v in parts[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return idle, sum(vals[:8])


def free_cores(sample_s: float = 0.2) -> int:
    """Cores idle over a short sample, at least 1 and at most the cores we may use.

    FACTORY_THREADS overrides the measurement.
    """
    env = os.environ.get("FACTORY_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    allowed = allowed_cores()
    a = _cpu_times()
    if a is None:
        return allowed
    time.sleep(sample_s)
    b = _cpu_times()
    if b is None or b[1] <= a[1]:
        return allowed
    idle_frac = (b[0] - a[0]) / (b[1] - a[1])
    total = os.cpu_count() or allowed
    # Round down: a core busy 40% of the time is not free for a thread that wants it all.
    idle = int(idle_frac * total + 0.25)
    return max(1, min(allowed, idle))


# --- bounds checked before anything starts ---------------------------------------------------

# What one training process needs at the least (an interpreter with torch and a small model
# loaded): a bound on how many the machine's memory can hold, not an estimate of a real run.
PROCESS_MIN_BYTES = 512 * 1024 * 1024


def available_memory() -> int | None:
    """Bytes of memory available to new processes now (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cuda_devices() -> int | None:
    """GPUs this process may use, from the driver's listing and CUDA_VISIBLE_DEVICES (no torch import)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus")) or None
    except OSError:
        return None


def max_processes(device: str) -> tuple[int, str]:
    """The most training processes this machine can run on `device`, and what bounds it."""
    cores = allowed_cores()
    limit, why = cores, f"{cores} CPU core{'s' if cores != 1 else ''}"
    mem = available_memory()
    if mem is not None and mem // PROCESS_MIN_BYTES < limit:
        limit = max(1, mem // PROCESS_MIN_BYTES)
        why = f"{mem / 2**30:.1f} GiB of available memory ({PROCESS_MIN_BYTES // 2**20} MiB each)"
    if str(device).startswith("cuda"):
        gpus = cuda_devices()
        if gpus and gpus < limit:
            limit, why = gpus, f"{gpus} GPU{'s' if gpus != 1 else ''}"
    return limit, why


def check_processes(processes: int, device: str) -> None:
    """Raise FactoryError naming train.processes when this machine cannot run that many processes."""
    from factory.errors import FactoryError

    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise FactoryError(f"train.processes: {processes!r} is not a positive whole number")
    if processes == 1:
        return
    limit, why = max_processes(device)
    if processes > limit:
        raise FactoryError(f"train.processes: {processes} processes on {device}, but this machine has {why}: "
                           f"at most {limit}")


def default_threads(device: str) -> int | None:
    """The thread count a family puts in the train key on CPU (None on GPU, where it does not change bytes)."""
    if str(device).startswith("cuda"):
        return None
    return max(1, min(2, allowed_cores()))


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Let glibc keep freed activation buffers in the heap for the next step; whether it applied.

    By default glibc serves every allocation above a threshold (128 KiB at first) with its own mmap
    and returns it on free, so a training step's activations and gradients come back as fresh pages
    every step: a LoRA stage of the flagship took 3.0-3.9 million page faults and 8-10 s of system
    time; with these thresholds 0.15 million and 1.2 s. The arithmetic and its bytes are unchanged;
    the process keeps up to its peak memory (measured peak RSS 1.7 GB). A no-op off glibc; setting
    the same thresholds again changes nothing, so every training path may call it.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError):
        return False
