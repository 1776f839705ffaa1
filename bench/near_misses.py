"""What one run's candidate gets wrong against another's, by kind of near miss, with paired intervals.

    PYTHONPATH=. python bench/near_misses.py <run A> <run B> [--suite json-action]

Both runs' candidates answered the same held-out requests (the samples files are paired by id). Each
wrong answer is classified by the fields it got wrong: `action` (the wrong action), `day`, `time`,
`number` (minutes, sessions, distances), `other` (the item, the goal, an extra argument), and
`invalid` (no JSON action at all); an answer can be wrong in several ways. For each kind the rate in
A and B and the paired difference B − A with a 95% bootstrap interval are printed, then the suites'
headline scores (breadth, risk probes) from each run's eval record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from factory.stats import paired_bootstrap

NUMBERS = {"minutes_before", "sessions", "distance_km"}
KINDS = ("invalid", "action", "day", "time", "number", "other")


def kinds_of(sample: dict) -> set[str]:
    if sample.get("correct"):
        return set()
    if not sample.get("values", {}).get("valid_json"):
        return {"invalid"}
    out = set()
    for field, ok in (sample.get("fields") or {}).items():
        if ok:
            continue
        name = field.split(".", 1)[-1]
        out.add("action" if field == "action" else "day" if name == "day" else "time" if name == "time"
                else "number" if name in NUMBERS else "other")
    return out or {"other"}


def evidence(run: Path) -> Path:
    """Where the candidate's evaluation is: the run, or (a stopped chain) its last checked step."""
    if (run / "eval-candidate.json").is_file():
        return run
    steps = json.loads((run / "training_plan.json").read_text())["steps"]
    for st in reversed(steps):
        if (run / "steps" / st["name"] / "eval-candidate.json").is_file():
            return run / "steps" / st["name"]
    raise SystemExit(f"{run}: no evaluation of a candidate")


def samples(run: Path, suite: str) -> dict[str, dict]:
    path = evidence(run) / "samples" / "candidate" / f"{suite}.jsonl"
    return {s["id"]: s for s in map(json.loads, path.read_text().splitlines())}


def scores(run: Path) -> dict[str, dict[str, float]]:
    rec = json.loads((evidence(run) / "eval-candidate.json").read_text())
    return {s["suite"]: {k: v["value"] for k, v in s.get("scores", {}).items()} for s in rec["suites"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--suite", default="json-action")
    args = ap.parse_args()
    sa, sb = samples(args.a, args.suite), samples(args.b, args.suite)
    ids = sorted(set(sa) & set(sb))
    print(f"{len(ids)} paired held-out requests; A = {args.a.name}, B = {args.b.name}")
    print(f"{'kind':<10} {'A':>7} {'B':>7} {'B - A':>8}  95% interval")
    for kind in ("wrong", *KINDS):
        if kind == "wrong":
            xa = [0.0 if sa[i].get("correct") else 1.0 for i in ids]
            xb = [0.0 if sb[i].get("correct") else 1.0 for i in ids]
        else:
            xa = [1.0 if kind in kinds_of(sa[i]) else 0.0 for i in ids]
            xb = [1.0 if kind in kinds_of(sb[i]) else 0.0 for i in ids]
        d, lo, hi = paired_bootstrap(xa, xb)
        print(f"{kind:<10} {sum(xa) / len(ids):>7.3%} {sum(xb) / len(ids):>7.3%} {d * 100:>+7.2f}pp  "
              f"[{lo * 100:+.2f}, {hi * 100:+.2f}]")
    ca, cb = scores(args.a), scores(args.b)
    for suite in sorted(set(ca) & set(cb)):
        for metric in sorted(set(ca[suite]) & set(cb[suite])):
            if metric.startswith("field."):
                continue
            print(f"{suite}.{metric}: A {ca[suite][metric]:.4f}  B {cb[suite][metric]:.4f}")


if __name__ == "__main__":
    main()
