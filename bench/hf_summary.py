"""Markdown tables from the JSON files bench/gpu.sh leaves in its output directory.

    python bench/hf_summary.py OUT > OUT/summary.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1])
    lines = ["# hf path: measured", ""]
    env = out / "env.txt"
    if env.exists():
        lines += ["```", env.read_text().strip(), "```", ""]
    for f in sorted(out.glob("train-*.json")):
        r = json.loads(f.read_text())
        lines += [f"## SFT-LoRA training, {r['shape']}, {r['precision']} on {r['device_name']}", "",
                  f"{r['steps']} steps of {r['batch']} rows up to {r['seq_len']} tokens ({r['tokens']} real tokens, "
                  f"{r['padded_tokens']} padded), LoRA r{r['lora']['r']}/alpha {r['lora']['alpha']:g}; memory: {r['memory']}.",
                  "", "| side | loop s | tokens/s | vs TRL | CPU ms/step | tokens per CPU-s | vs TRL | peak MB | vs TRL "
                  "| loss after the last step |", "|---|---|---|---|---|---|---|---|---|---|"]
        ref = r["sides"].get("trl")
        for name, s in r["sides"].items():
            tr = f"{s['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "-"
            mr = f"{s['peak_mb'] / ref['peak_mb']:.2f}x" if ref else "-"
            cpu = (f"{s['cpu_ms_per_step']:.1f} | {s['tokens_per_cpu_s']:,.0f} | "
                   + (f"{s['tokens_per_cpu_s'] / ref['tokens_per_cpu_s']:.2f}x" if ref else "-")
                   if "tokens_per_cpu_s" in s and (not ref or "tokens_per_cpu_s" in ref) else "- | - | -")
            lines.append(f"| {name} | {s['loop_s']:.2f} | {s['tokens_per_s']:,.0f} | {tr} | {cpu} | {s['peak_mb']:,.0f} | "
                         f"{mr} | {s['final_loss']:.4f} |")
        lines.append("")
    for f in sorted(out.glob("eval-*.json")):
        r = json.loads(f.read_text())
        lines += [f"## Greedy generation, {r['shape']}, {r['dtype']} on {r['device_name']}", "",
                  f"{r['prompts']} prompts up to {r['prompt_len']} tokens, {r['max_new_tokens']} new tokens, batch {r['batch']}.",
                  "", "| side | prompts | seconds | tokens/s |", "|---|---|---|---|"]
        for name, s in r["sides"].items():
            lines.append(f"| {name} | {s['prompts']} | {s['seconds']:.2f} | {s['tokens_per_s']:,.0f} |")
        same = r["identical"]
        lines += ["", f"Batched vs transformers `generate`: {r['batched_vs_transformers_tokens_per_s']:.2f}x tokens/s; "
                  f"vs one at a time: {r['batched_vs_single_tokens_per_s']:.2f}x. Identical outputs: batched vs one at "
                  f"a time {same['batched_vs_single'][0]}/{same['batched_vs_single'][1]}, batched vs `generate` "
                  f"{same['batched_vs_transformers'][0]}/{same['batched_vs_transformers'][1]}.", ""]
    e2e = out / "hf-e2e.json"
    if e2e.exists():
        r = json.loads(e2e.read_text())
        crit = r.get("max_vram_gb_criterion") or {}
        lines += [f"## The hf recipe end to end, {r['shape']} on {r['device']}", "",
                  f"Exit {r['exit']}, {r['build_wall_s']} s wall (model built in {r['model_build_s']} s before), "
                  f"decision `{r.get('decision')}` (random weights). Train peak GPU memory {r.get('peak_vram_gb')} GB "
                  f"against `criteria.max_vram_gb` {r['settings']['max_vram_gb']}: "
                  f"{'passed' if crit.get('passed') else 'failed'} ({crit.get('reason')}).", "",
                  "| stage | status | seconds |", "|---|---|---|"]
        for name, s in r.get("stages", {}).items():
            lines.append(f"| {name} | {s['status']} | {s['seconds']} |")
        lines.append("")
    steps = out / "steps.txt"
    if steps.exists():
        lines += ["Steps:", "", "```", steps.read_text().strip(), "```", ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
