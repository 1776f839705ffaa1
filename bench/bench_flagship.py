"""The flagship from a clean store, today's schedule against the classic one, in one run.

    python bench/bench_flagship.py [--together] [--keep]

Builds `doit recipe:pace-planner` twice, each in its own scratch project (a copy of recipes/ and
dodo.py, an empty store): once as the recipe stands, once with the schedules it had before the
fast defaults (`base.options.profile: classic` and the train settings below, written into that
project's copy of the recipe). Prints each build's wall time, its stages' seconds (from
events.jsonl), the ratio, and each decision with the planner score and breadth's delta and paired
interval. `--only fast` builds one of them; `--threads N` sets the thread count of both (the
default is the family's). By default the builds run one after the other (the classic one first); `--together`
starts both at once, so that load from other work on the machine falls on both alike (the faster
build then finishes first and the slower one has the machine to itself for its last minutes,
which favours the classic build).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = "pace-planner"
# The tiny family's LoRA defaults before packing and the shorter schedule, spelled out in the recipe.
CLASSIC_TRAIN = {"steps": 1000, "batch_size": 32, "lr": 5e-3, "warmup_steps": 30, "packing": False}


def project(where: Path, name: str, classic: bool, threads: int | None) -> Path:
    root = where / name
    shutil.copytree(REPO / "recipes", root / "recipes")
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    base_opts = {"profile": "classic"} if classic else {}
    train_opts = dict(CLASSIC_TRAIN) if classic else {}
    if threads is not None:
        base_opts["threads"] = train_opts["threads"] = threads
    if base_opts or train_opts:
        path = root / "recipes" / f"{RECIPE}.yaml"
        text = path.read_text()
        base = "base: {family: tiny, model: tiny-llama, options: {}}"
        train = "train: {method: sft-lora, replay: 0.35}"
        if base not in text or train not in text:
            raise SystemExit(f"{path}: expected the lines {base!r} and {train!r} to rewrite")
        flow = lambda d: "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in d.items()) + "}"
        text = text.replace(base, f"base: {{family: tiny, model: tiny-llama, options: {flow(base_opts)}}}")
        text = text.replace(train, f"train: {{method: sft-lora, replay: 0.35, options: {flow(train_opts)}}}")
        path.write_text(text)
    return root


def start(root: Path) -> tuple[subprocess.Popen, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("FACTORY_LOAD_PLUGINS", "FACTORY_ROOT", "FACTORY_INVOCATION")}
    env["FACTORY_PROGRESS"] = "0"
    log = open(root / "build.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "doit", f"recipe:{RECIPE}"], cwd=root, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, time.perf_counter()


def finish(proc: subprocess.Popen, t0: float, root: Path) -> float:
    rc = proc.wait()
    secs = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"build in {root} failed (exit {rc}):\n{(root / 'build.log').read_text()[-3000:]}")
    return secs


def base_record(root: Path) -> dict:
    """base.json of the project's built base, read through its stage manifest."""
    for man in (root / "cache" / "stages").glob("*.json"):
        m = json.loads(man.read_text())
        if m.get("stage") == "base" and "base.json" in m.get("outputs", {}):
            digest = m["outputs"]["base.json"]["digest"]
            return json.loads((root / "cache" / "objects" / digest[:2] / digest).read_text())
    return {}


def result(root: Path) -> dict:
    (run,) = [p for p in (root / "runs").iterdir() if re.fullmatch(rf"\d{{4}}-\d\d-\d\d-{RECIPE}-[0-9a-f]+", p.name)]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    decision = json.loads((run / "decision.json").read_text())
    base = base_record(root)
    crit = {c["name"]: c for c in decision["criteria"]}
    breadth = next(c for n, c in crit.items() if n.startswith("breadth_drop_max_pp"))
    return {
        "run": str(run),
        "stages": {e["stage"]: e["seconds"] for e in events},
        "decision": decision["decision"],
        "planner": crit["primary_min"]["candidate"],
        "breadth": (breadth["baseline"], breadth["candidate"], breadth["delta"], breadth.get("interval")),
        "base_breadth": (base.get("heldout_breadth") or {}).get("exact_match"),
        "pretrain_steps": (base.get("pretrain") or {}).get("steps"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--together", action="store_true", help="run both builds at the same time")
    ap.add_argument("--keep", action="store_true", help="keep the scratch projects")
    ap.add_argument("--only", choices=["classic", "fast"], help="build one of the two (no ratio)")
    ap.add_argument("--threads", type=int, help="CPU threads of pretraining and LoRA in both builds (default: "
                    "the family's, 2 on two cores); on a machine whose cores other work keeps busy, 2 threads "
                    "wait on each other and 1 is several times faster")
    args = ap.parse_args()
    where = Path(tempfile.mkdtemp(prefix="bench-flagship-"))
    names = [args.only] if args.only else ["classic", "fast"]
    roots = {name: project(where, name, name == "classic", args.threads) for name in names}
    load0 = os.getloadavg()[0]
    wall: dict[str, float] = {}
    if args.together:
        procs = {name: start(root) for name, root in roots.items()}
        for name, (proc, t0) in procs.items():
            wall[name] = finish(proc, t0, roots[name])
    else:
        for name, root in roots.items():
            wall[name] = finish(*start(root), root)
    res = {name: result(root) for name, root in roots.items()}
    print(f"load average at the start {load0:.1f}, at the end {os.getloadavg()[0]:.1f}; "
          f"builds {'together' if args.together else 'one after the other'}; {os.cpu_count()} CPUs")
    stages = ["base", "train", "eval-baseline", "eval-candidate"]
    print(f"{'':10}{'wall s':>9}" + "".join(f"{s:>16}" for s in stages) + f"{'other':>9}")
    for name, r in res.items():
        other = sum(v for k, v in r["stages"].items() if k not in stages)
        print(f"{name:10}{wall[name]:>9.1f}" + "".join(f"{r['stages'].get(s, 0):>16.1f}" for s in stages) + f"{other:>9.1f}")
    if len(res) == 2:
        print(f"ratio fast / classic: {wall['fast'] / wall['classic']:.3f} (wall); "
              f"base {res['fast']['stages']['base'] / res['classic']['stages']['base']:.3f}, "
              f"train {res['fast']['stages']['train'] / res['classic']['stages']['train']:.3f}")
    for name, r in res.items():
        b0, b1, d, iv = r["breadth"]
        ivs = f"[{iv[0] * 100:+.2f}, {iv[1] * 100:+.2f}]" if iv else "-"
        print(f"{name}: {r['decision']}; planner exact match {r['planner']:.3f}; breadth {b0:.3f} -> {b1:.3f} "
              f"({d * 100:+.2f} points, interval {ivs}, limit -3); base's own held-out check "
              f"{r['base_breadth']} after {r['pretrain_steps']} pretraining steps")
    if args.keep:
        print(f"projects kept in {where}")
    else:
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
