"""The shared store, printed as ratios against baselines measured in the same run.

    python bench/bench_store.py [--flagship]

1. Pull vs build: a second clone of a project whose stages another clone already pushed to a
   remote (a local directory) builds nothing and downloads everything; its `doit recipe:<name>`
   is timed against the first clone's full build. Default: the cheap `tiny-smoke`-sized recipe
   below (a tiny base of 80 steps, 20 LoRA steps, 16 eval rows) so the bench runs in minutes on 2 cores;
   --flagship times recipes/pace-planner.yaml instead (five minutes or more to build).
2. No-op with a remote configured vs bare doit of as many file tasks (target <= 1.5x): the no-op
   path never reads the remote setting's URL, let alone the network.
3. Run directory as copies vs hardlinks: materializing a built run's files both ways.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

CHEAP = """# Build: doit recipe:cheap
goal: "bench: a cheap recipe for pull vs build"
base: {family: tiny, model: tiny-llama, options: {steps: 80, eval_rows: 8}}
data:
  sources: [{kind: jsonl, path: pace-planner/traces.jsonl, options: {}}]
  contract: json-action
  heldout_fraction: 0.2
  options:
    max_chars: 256
    actions: {create: [item, day, time], reschedule: [item, day, "time?"], cancel: [item, day], list: [day],
              remind: [item, minutes_before], plan_week: [goal, sessions], log: [item, distance_km]}
train: {method: sft-lora, replay: 0.35, steps: 20}
evals: {primary: json-action, regression: [breadth], limit: 16}
criteria: {primary_min: 0.0}
package: false
"""


def make_clone(dest: Path, recipe_text: str | None, remote: Path) -> None:
    dest.mkdir(parents=True)
    shutil.copytree(REPO / "recipes", dest / "recipes")
    if recipe_text is not None:
        (dest / "recipes" / "cheap.yaml").write_text(recipe_text)
    shutil.copy(REPO / "dodo.py", dest / "dodo.py")
    (dest / "factory.toml").write_text(f'remote = "file://{remote}"\n')


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t


def pull_vs_build(tmp: Path, flagship: bool) -> None:
    recipe = "pace-planner" if flagship else "cheap"
    remote = tmp / "remote"
    env = dict(os.environ, FACTORY_PROGRESS="0")
    env.pop("FACTORY_REMOTE", None)
    make_clone(tmp / "a", None if flagship else CHEAP, remote)
    make_clone(tmp / "b", None if flagship else CHEAP, remote)
    build = timed([sys.executable, "-m", "doit", f"recipe:{recipe}"], tmp / "a", env)
    pull = timed([sys.executable, "-m", "doit", f"recipe:{recipe}"], tmp / "b", env)
    import json

    def decision(root: Path) -> str:
        run = next(p for p in (root / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))
        return json.loads((run / "decision.json").read_text())["decision"]

    ev = [json.loads(line) for p in (tmp / "b" / "cache" / "events").glob("*.jsonl")
          for line in p.read_text().splitlines()]
    built = [e["stage"] for e in ev if e["status"] == "built"]
    print(f"build ({recipe}, first clone): {build:.1f} s   pull (second clone): {pull:.1f} s   "
          f"ratio {build / pull:.1f}x (target >= 10x)")
    print(f"second clone built {built or 'nothing'}; decisions {decision(tmp / 'a')} / {decision(tmp / 'b')}")
    return tmp / "a"


def noop_with_remote(tmp: Path) -> None:
    from bench_core import bare_doit
    from conftest import RECIPE

    proj = tmp / "noop"
    (proj / "recipes" / "demo").mkdir(parents=True)
    (proj / "recipes" / "demo.yaml").write_text(RECIPE)
    (proj / "recipes" / "demo" / "lines.txt").write_text("".join(f"line {i}\n" for i in range(50)))
    shutil.copy(REPO / "dodo.py", proj / "dodo.py")
    (proj / "factory.toml").write_text(f'remote = "file://{tmp / "noop-remote"}"\n')
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'tests'}:{REPO}", FACTORY_LOAD_PLUGINS="enginekit")
    cmd = [sys.executable, "-m", "doit", "recipe:demo"]
    timed(cmd, proj, env)
    times = sorted(timed(cmd, proj, env) for _ in range(7))
    noop = times[3]
    bare = bare_doit(tmp, 9)
    print(f"no-op with a remote configured: {noop * 1000:.0f} ms   bare doit, 9 file tasks: {bare * 1000:.0f} ms   "
          f"ratio {noop / bare:.2f}x (target <= 1.5x)")


def copies_vs_links(project: Path) -> None:
    sys.path.insert(0, str(REPO))
    from factory.store import Store, link_outputs

    store = Store(project / "cache")
    mans = [store.manifest(m.stem) for m in store.stages.glob("*.json")]
    mans = [m for m in mans if m and m.get("stage") in ("dataset", "train", "eval-baseline", "eval-candidate",
                                                            "decide", "report", "package")]
    size = sum(e["size"] for m in mans for e in m["outputs"].values())
    res = {}
    for mode in (False, True):
        best = 1e9
        for i in range(5):
            dest = Path(tempfile.mkdtemp(dir=project))
            t = time.perf_counter()
            for m in mans:
                link_outputs(store, m, dest, copy=mode)
            best = min(best, time.perf_counter() - t)
            shutil.rmtree(dest)
        res[mode] = best
    print(f"run directory files ({size / 1e6:.1f} MB): copies {res[True] * 1000:.1f} ms   "
          f"hardlinks {res[False] * 1000:.1f} ms   ratio {res[True] / res[False]:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flagship", action="store_true", help="time recipes/pace-planner.yaml (slow)")
    ap.add_argument("--noop-only", action="store_true", help="only the no-op with a remote configured")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.noop_only:
            noop_with_remote(tmp)
            return
        print("== pull vs build ==")
        built = pull_vs_build(tmp, args.flagship)
        print("== copies vs hardlinks ==")
        copies_vs_links(built)
        print("== no-op with a remote ==")
        noop_with_remote(tmp)


if __name__ == "__main__":
    main()
