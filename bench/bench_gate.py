"""The gate's closed-form paired interval against the 2,000-resample paired bootstrap it replaced.

    python bench/bench_gate.py [--pairs 1052]

Prints milliseconds per interval for both and their ratio, measured in the same run.
"""

import argparse
import random
import time

from factory import stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1052)
    args = ap.parse_args()
    rng = random.Random(0)
    base = [float(rng.random() < 0.81) for _ in range(args.pairs)]
    cand = [x if rng.random() < 0.92 else 1.0 - x for x in base]
    reps = 200
    t = time.perf_counter()
    for _ in range(reps):
        stats.paired_difference(base, cand)
    closed = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    stats.paired_bootstrap(base, cand)
    boot = time.perf_counter() - t
    print(f"{args.pairs} pairs: closed form {closed * 1000:.2f} ms, bootstrap {boot * 1000:.0f} ms, "
          f"{boot / closed:.0f}x")


if __name__ == "__main__":
    main()
