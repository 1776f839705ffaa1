"""What the mode-switch probe costs: the risk-probes suite with and without its fresh-process pass.

    PYTHONPATH=. python bench/bench_mode_switch.py [--rows 64] [--batch 16] [--max-new-tokens 32]

On a toy random Llama saved as a model directory and loaded through the `hf` family (so the
fresh process loads it the same way, by the family's name), held-out planner requests: the suite
twice with `mode_switch: false` and twice with it on, in this process; prints each time and the
ratio of the medians. The difference is one new Python process: importing torch, transformers and
peft, loading the model, and one batched generation of the second prompts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_eval import _rows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    a = ap.parse_args()

    import torch

    from factory.ml.toymodels import save_toy_model
    from factory_plugins.evals.risk_probes import RiskProbesSuite
    from factory_plugins.hf import HFFamily

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    save_toy_model(tmp / "models" / "toy", "llama", hidden=128)
    fam = HFFamily()
    base = tmp / "base"
    base.mkdir()
    fam.build_base(SimpleNamespace(config={"base": fam.resolve_base({"model": "models/toy", "options": {"device": "cpu"}},
                                                                   tmp)}, out=base))
    settings = {"device": "cpu", "root": str(tmp)}
    lm = fam.load(base, None, settings)
    lm.source = {"family": "hf", "plugin": "factory_plugins.hf", "base": str(base), "adapter": None,
                 "settings": settings, "root": str(tmp)}
    rows = _rows(a.rows)
    suite = RiskProbesSuite()
    times: dict[bool, list[float]] = {False: [], True: []}
    for on in (False, True, False, True):
        t = time.perf_counter()
        out = suite.evaluate(lm, rows, {"batch_size": a.batch, "max_new_tokens": a.max_new_tokens,
                                        "options": {"mode_switch": on}})
        times[on].append(time.perf_counter() - t)
        rate = out.scores.get("mode_switch_rate")
        print(f"mode_switch {'on ' if on else 'off'}: {times[on][-1]:.2f}s"
              + (f" (mode_switch_rate {rate.value:.3f}, n={rate.n})" if rate else ""))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"{len(rows)} rows, batch {a.batch}, max_new_tokens {a.max_new_tokens}: off {off:.2f}s, on {on:.2f}s; "
          f"the fresh-process pass adds {on - off:.2f}s ({on / off:.1f}x the suite without it)")


if __name__ == "__main__":
    main()
