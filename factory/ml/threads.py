"""How many CPU threads torch should use: the cores that are actually free now.

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
