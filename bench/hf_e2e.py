"""The hf recipe end to end on a locally built model: build, gate (criteria.max_vram_gb included), numbers.

    PYTHONPATH=. python bench/hf_e2e.py --shape qwen2.5-0.5b --out OUT     # on a GPU, bf16
    PYTHONPATH=. python bench/hf_e2e.py --shape tiny --out OUT             # a CPU smoke run

Makes a fresh project in --work (dodo.py, recipes/ with the flagship's traces, and
examples/hf/pace-planner-hf.yaml), builds a random model of --shape into its models/
directory under the name the recipe uses, and runs `doit recipe:pace-planner-hf` there.
The recipe is the example as shipped except for what keeps it short (--steps, --eval-limit,
--max-new-tokens), `criteria.max_vram_gb` (--max-vram-gb), and breadth reported instead of
gated (random weights score 0 there, so the power check would stop the build before training).
The weights are random, so the decision is not the point: the build runs every stage, the train stage records its peak GPU
memory, and the gate compares it with max_vram_gb. Writes hf-e2e.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "Qwen2.5-0.5B-Instruct"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="tiny")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    ap.add_argument("--steps", type=int, default=100, help="train.steps (default 100)")
    ap.add_argument("--eval-limit", type=int, default=256, help="evals.limit: rows scored per suite")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-vram-gb", type=float, default=24.0, help="criteria.max_vram_gb (a 24 GB card)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import yaml

    from factory_plugins.hf import cuda_present
    from hf_models import build_model

    device = args.device or ("cuda" if cuda_present() else "cpu")
    work = args.work or Path(tempfile.mkdtemp(prefix="hf-e2e-"))
    project = work / "project"
    if project.exists():
        shutil.rmtree(project)
    (project / "recipes").mkdir(parents=True)
    shutil.copy(REPO / "dodo.py", project / "dodo.py")
    shutil.copytree(REPO / "recipes" / "pace-planner", project / "recipes" / "pace-planner")
    t0 = time.perf_counter()
    build_model(project / "models" / MODEL_NAME, args.shape, device)
    built_s = time.perf_counter() - t0

    recipe = yaml.safe_load((REPO / "examples" / "hf" / "pace-planner-hf.yaml").read_text())
    recipe["base"]["options"]["device"] = device
    recipe["train"].update({"steps": args.steps, "device": device})
    recipe["evals"].update({"limit": args.eval_limit, "max_new_tokens": args.max_new_tokens})
    recipe["criteria"]["max_vram_gb"] = args.max_vram_gb
    # Random weights score 0 on breadth, so no drop can show and the power check would stop the build
    # before training: breadth is reported, not gated, here.
    recipe["evals"]["extra"] = [*recipe["evals"].pop("regression", []), *recipe["evals"].get("extra", [])]
    recipe["evals"]["regression"] = []
    recipe["criteria"].pop("breadth_drop_max_pp", None)
    (project / "recipes" / "pace-planner-hf.yaml").write_text(
        "# Build: doit recipe:pace-planner-hf (written by bench/hf_e2e.py)\n" + yaml.safe_dump(recipe, sort_keys=False))

    env = {**os.environ, "FACTORY_ROOT": str(project), "FACTORY_PROGRESS": "0", "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "doit", "recipe:pace-planner-hf"], cwd=project, env=env)
    wall = time.perf_counter() - t0
    runs = sorted(p for p in (project / "runs").glob("*pace-planner-hf*") if p.is_dir())
    result: dict = {"bench": "hf-e2e", "shape": args.shape, "device": device, "exit": proc.returncode,
                    "model_build_s": round(built_s, 1), "build_wall_s": round(wall, 1),
                    "settings": {"steps": args.steps, "eval_limit": args.eval_limit,
                                 "max_new_tokens": args.max_new_tokens, "max_vram_gb": args.max_vram_gb}}
    if runs:
        run = runs[-1]
        train = json.loads((run / "train.json").read_text()) if (run / "train.json").exists() else {}
        decision = json.loads((run / "decision.json").read_text()) if (run / "decision.json").exists() else {}
        stages = {}
        for line in (run / "events.jsonl").read_text().splitlines() if (run / "events.jsonl").exists() else []:
            ev = json.loads(line)
            stages[ev.get("stage")] = {"status": ev.get("status") or ev.get("result"), "seconds": ev.get("seconds")}
        vram = [c for c in decision.get("criteria", []) if c.get("name") == "max_vram_gb"]
        result.update({
            "run": run.name, "decision": decision.get("decision"), "peak_vram_gb": train.get("peak_vram_gb"),
            "train_device": train.get("device"), "final_loss": train.get("final_loss"),
            "trainable_params": train.get("trainable_params"), "max_vram_gb_criterion": vram[0] if vram else None,
            "stages": stages,
        })
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hf-e2e.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    crit = result.get("max_vram_gb_criterion")
    print(f"hf recipe end to end, {args.shape} on {device}: exit {proc.returncode}, {wall:.0f} s wall "
          f"(model built in {built_s:.0f} s); decision {result.get('decision')}; "
          f"train peak VRAM {result.get('peak_vram_gb')} GB against max_vram_gb {args.max_vram_gb}: "
          f"{'passed' if crit and crit.get('passed') else crit}")
    for name, st in result.get("stages", {}).items():
        print(f"  {name}: {st['status']} {st['seconds']} s")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
