"""The flagship pipeline from a clean store: seconds and peak RSS per stage, then the no-op.

    python bench/bench_pipeline.py [recipe] [--keep]

Builds every stage of the recipe as its own `doit stage:<recipe>.<stage>` process (so each stage's
peak RSS is its own), then `doit recipe:<recipe>` for the run directory, then times a second
`doit recipe:<recipe>` (the no-op). Works in a scratch copy of recipes/ unless --here is given, so
the project's own cache/ and runs/ are untouched.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MEASURE = (
    "import resource, subprocess, sys, time; t = time.perf_counter();"
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
    "print(r.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);"
    "sys.stderr.write(r.stdout[-2000:] + r.stderr[-2000:] if r.returncode else '')"
)


def measured(cmd: list[str], cwd: Path) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], cwd=cwd, capture_output=True, text=True)
    rc, secs, rss = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return float(secs), int(rss) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", nargs="?", default="pace-planner")
    ap.add_argument("--here", action="store_true", help="build in the project itself (its cache must be empty)")
    ap.add_argument("--recipes", type=Path, default=REPO / "recipes", help="recipes directory to copy")
    args = ap.parse_args()
    if args.here:
        root = REPO
    else:
        root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
        shutil.copytree(args.recipes, root / "recipes")
        shutil.copy(REPO / "dodo.py", root / "dodo.py")
    sys.path.insert(0, str(REPO))
    from factory.engine import Session

    stages = Session(root).plan(args.recipe).order()
    doit = [sys.executable, "-m", "doit"]
    total, peak = 0.0, 0.0
    print(f"{'stage':<16}{'seconds':>9}{'peak RSS MB':>13}")
    for stage in stages:
        secs, rss = measured(doit + [f"stage:{args.recipe}.{stage}"], root)
        total += secs
        peak = max(peak, rss)
        print(f"{stage:<16}{secs:>9.1f}{rss:>13.0f}")
    secs, rss = measured(doit + [f"recipe:{args.recipe}"], root)
    total += secs
    print(f"{'run directory':<16}{secs:>9.1f}{rss:>13.0f}")
    print(f"{'total':<16}{total:>9.1f}{max(peak, rss):>13.0f}")
    t = time.perf_counter()
    r = subprocess.run(doit + [f"recipe:{args.recipe}"], cwd=root, capture_output=True, text=True)
    print(f"no-op rebuild: {time.perf_counter() - t:.2f} s ({'nothing rebuilt' if '.  ' not in r.stdout else 'REBUILT'})")
    run = max((root / "runs").glob(f"*-{args.recipe}-*/decision.json"), key=lambda p: p.stat().st_mtime)
    d = json.loads(run.read_text())
    print(f"decision: {d['decision']} ({d['reason']})")
    for c in d["criteria"]:
        if c.get("candidate") is not None:
            print(f"  {c['name']}: baseline {c['baseline']:.3f} candidate {c['candidate']:.3f} passed {c['passed']}")
    print(f"run directory: {run.parent}")


if __name__ == "__main__":
    main()
