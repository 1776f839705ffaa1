"""The per-sample generation cache: re-scoring against generating, and resuming after a kill.

    PYTHONPATH=. python bench/bench_sample_cache.py [--rows 128] [--batch 16] [--max-new-tokens 48]

On a toy random Llama (factory.ml.toymodels) and held-out planner requests:

1. Generate and score the json-action suite with an empty cache (the baseline), then
   score it again with a different scorer (the json-schema suite over the same
   prompts) from the cache: the ratio of the two times, and that the outputs agree.
2. Kill the generation in the middle of a batch (an exception from the batch
   generator, as SIGKILL would stop it), run it again, and count the rows the
   second run generates: at most the unfinished batch and those never started.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_eval import _load, _rows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    a = ap.parse_args()

    import jsonschema  # noqa: F401 - imported once per process; not part of either timing

    from factory import samplecache
    from factory.ml import generate as gen
    from factory_plugins.evals import json_action, json_schema

    lm, what = _load(None)
    rows = _rows(a.rows)
    prompts = [r["prompt"] for r in rows]
    settings = {"batch_size": a.batch, "max_new_tokens": a.max_new_tokens}
    schema = {"type": "object", "required": ["action", "args"]}
    tmp = Path(tempfile.mkdtemp())
    print(f"model: {what}; {len(rows)} rows, batch {a.batch}, max_new_tokens {a.max_new_tokens}")

    with samplecache.using(samplecache.for_model(tmp, "B" * 32, None, "toy", lm)):
        t = time.perf_counter()
        cold = json_action.JsonActionSuite().evaluate(lm, rows, settings)
        generate_s = time.perf_counter() - t
    with samplecache.using(samplecache.for_model(tmp, "B" * 32, None, "toy", lm)) as cache:
        t = time.perf_counter()
        warm = json_schema.JsonSchemaSuite().evaluate(lm, rows, {**settings, "options": {"schema": schema}})
        rescore_s = time.perf_counter() - t
    same = [s["output"] for s in cold.samples] == [s["output"] for s in warm.samples]
    print(f"generate and score: {generate_s:.2f}s; re-score with another scorer from the cache: {rescore_s:.3f}s "
          f"({cache.hits} hits, {cache.misses} misses); ratio {generate_s / rescore_s:.0f}x; outputs identical: {same}")

    # Resume: die in the middle of batch k+1, then run again.
    tmp2 = Path(tempfile.mkdtemp())
    real = gen._generate_batch
    k = max(1, (len(prompts) // a.batch) // 2)
    calls: list[int] = []

    def dying(model, seqs, *args, **kw):
        calls.append(len(seqs))
        if len(calls) == k + 1:
            raise KeyboardInterrupt
        return real(model, seqs, *args, **kw)

    gen._generate_batch = dying
    try:
        with samplecache.using(samplecache.for_model(tmp2, "B" * 32, None, "toy", lm)):
            gen.generate_with_stops(lm, prompts, a.max_new_tokens, a.batch)
    except KeyboardInterrupt:
        pass
    finished = sum(calls[:k])
    calls.clear()
    gen._generate_batch = lambda model, seqs, *args, **kw: (calls.append(len(seqs)), real(model, seqs, *args, **kw))[1]
    t = time.perf_counter()
    with samplecache.using(samplecache.for_model(tmp2, "B" * 32, None, "toy", lm)) as cache:
        gen.generate_with_stops(lm, prompts, a.max_new_tokens, a.batch)
    resume_s = time.perf_counter() - t
    gen._generate_batch = real
    print(f"resume after a kill in batch {k + 1}: {finished} rows were finished before it; the second run took "
          f"{cache.hits} from the cache and generated {sum(calls)} of {len(prompts)} "
          f"(unfinished batch + never started = {len(prompts) - finished}) in {resume_s:.2f}s")


if __name__ == "__main__":
    main()
