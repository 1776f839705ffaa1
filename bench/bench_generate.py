"""Batched greedy generation against one prompt at a time: speed ratio and identical outputs.

    PYTHONPATH=. python bench/bench_generate.py [--model DIR] [--prompts 128] [--batch 64]

Without --model it uses a toy random Llama (factory.ml.toymodels). --model may
be a built base directory (its base.json names the family that loads it, e.g.
the tiny family's base in cache/trees/) and --rows a JSON-lines file whose
prompts are used (a breadth held-out split, say) for real numbers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=Path, default=None, help="JSON-lines rows whose prompts to use")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.interfaces import LoadedModel
    from factory.ml.generate import generate
    from factory.ml.toymodels import save_toy_model

    torch.set_num_threads(args.threads)
    path = args.model or save_toy_model(Path(tempfile.mkdtemp()) / "toy", "llama", hidden=128)
    meta = Path(path) / "base.json"
    family = json.loads(meta.read_text()).get("family") if meta.exists() else None
    if family:
        from factory.plugins import registries

        lm = registries().families.get(family).load(Path(path), None, {"device": "cpu"})
    else:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        lm = LoadedModel(
            model=model, tokenizer=tok, format_prompt=lambda p: f"### Prompt:\n{p}\n### Answer:\n",
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
    if args.rows:
        lines = args.rows.read_text().splitlines()
        prompts = [json.loads(x)["prompt"] for x in lines[: args.prompts]]
    else:
        prompts = [f"reverse: {'abcdefghij'[: 1 + i % 10]} and add {i % 7} {i % 5}" for i in range(args.prompts)]
    generate(lm, prompts[:4], args.max_new_tokens, 4)  # warm-up

    t0 = time.perf_counter()
    batched = generate(lm, prompts, args.max_new_tokens, args.batch)
    t1 = time.perf_counter()
    single = generate(lm, prompts, args.max_new_tokens, 1)
    t2 = time.perf_counter()
    rate_b, rate_1 = len(prompts) / (t1 - t0), len(prompts) / (t2 - t1)
    print(f"batched (batch {args.batch}): {rate_b:.1f} prompts/s")
    print(f"one at a time:        {rate_1:.1f} prompts/s")
    print(f"ratio: {rate_b / rate_1:.1f}x")
    print(f"identical outputs: {batched == single} ({sum(a == b for a, b in zip(batched, single))}/{len(prompts)})")


if __name__ == "__main__":
    main()
