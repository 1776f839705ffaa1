"""Batched evaluation against one prompt at a time: the json-action suite end to end, speed ratio, identical samples.

    PYTHONPATH=. python bench/bench_eval.py [--base DIR] [--rows 128] [--batch 64] [--max-new-tokens 48]

Scores held-out planner requests (recipes/pace-planner/traces.jsonl) with the
`json-action` suite twice, at `--batch` and at batch 1, and checks that every
sample (output, correctness, fields) and every score is identical. Without
--base it uses a toy random Llama (factory.ml.toymodels; it rarely stops early,
so every row runs to the token limit); pass a built `tiny` base directory
(cache/objects/.../ of a base stage) to load it through the tiny family.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rows(n: int) -> list[dict]:
    rows = []
    with open(ROOT / "recipes" / "pace-planner" / "traces.jsonl") as f:
        for line in f:
            raw = json.loads(line)
            try:
                action = json.loads(raw["action"])
            except (ValueError, TypeError):
                continue
            if not raw["request"].strip():
                continue
            rows.append({"id": raw["id"], "prompt": raw["request"],
                         "answer": json.dumps(action, sort_keys=True, separators=(",", ":"))})
            if len(rows) == n:
                break
    return rows


def _load(base: Path | None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.interfaces import LoadedModel
    from factory.ml.toymodels import save_toy_model

    torch.set_num_threads(1)
    if base is not None:
        from factory_plugins.tiny.family import TinyFamily

        return TinyFamily().load(base, None, {"device": "cpu"}), "tiny base " + str(base)
    path = save_toy_model(Path(tempfile.mkdtemp()) / "toy", "llama", hidden=128)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    lm = LoadedModel(model=model, tokenizer=tok, format_prompt=lambda p: f"{p}\n=> ",
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return lm, "toy random Llama (hidden 128, 2 layers)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=None, help="a built tiny base directory")
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()

    from factory_plugins.evals.json_action import JsonActionSuite

    lm, what = _load(args.base)
    rows = _rows(args.rows)
    suite = JsonActionSuite()
    suite.evaluate(lm, rows[:4], {"batch_size": 4, "max_new_tokens": 8})  # warm-up

    t0 = time.perf_counter()
    batched = suite.evaluate(lm, rows, {"batch_size": args.batch, "max_new_tokens": args.max_new_tokens})
    t1 = time.perf_counter()
    single = suite.evaluate(lm, rows, {"batch_size": 1, "max_new_tokens": args.max_new_tokens})
    t2 = time.perf_counter()

    same_samples = batched.samples == single.samples
    same_scores = {k: v.model_dump() for k, v in batched.scores.items()} == {k: v.model_dump() for k, v in single.scores.items()}
    rate_b, rate_1 = len(rows) / (t1 - t0), len(rows) / (t2 - t1)
    print(f"model: {what}; {len(rows)} rows; max_new_tokens {args.max_new_tokens}")
    print(f"json-action eval, batch {args.batch}: {t1 - t0:.2f} s ({rate_b:.1f} rows/s)")
    print(f"json-action eval, batch 1:  {t2 - t1:.2f} s ({rate_1:.1f} rows/s)")
    print(f"ratio: {rate_b / rate_1:.1f}x (target >= 10x)")
    print(f"identical samples: {same_samples}; identical scores: {same_scores}")
    print(f"exact_match {batched.scores['exact_match'].value:.3f}, valid_json {batched.scores['valid_json'].value:.3f}")


if __name__ == "__main__":
    main()
