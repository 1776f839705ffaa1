"""Batched greedy generation (factory.ml.generate) against one prompt at a time and transformers' `generate`.

    PYTHONPATH=. python bench/bench_hf_eval.py                       # CPU, a tiny local Qwen2-shaped model
    PYTHONPATH=. python bench/bench_hf_eval.py --device cuda --shape qwen2.5-0.5b   # bf16 on a GPU

One model, loaded once by the `hf` family (bench/hf_models.py builds it locally from a real
checkpoint's config numbers), and one list of prompts encoded with factory's shared encoding.
Three ways to decode them greedily to `--max-new-tokens`:

- factory batched: `factory.ml.generate.generate_ids` with `--batch` (length-sorted batches,
  left padding, KV cache, finished rows dropped from the batch);
- factory one at a time: the same function with batch 1;
- transformers: `model.generate(do_sample=False)` on the same length-sorted batches of the same
  ids, left-padded, with the same stop tokens; its output is cut at the first stop token.

Tokens/s counts the new tokens kept (before the stop token). Outputs are compared token for
token against factory's one-at-a-time output and the counts of identical rows are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def hf_generate(lm, encoded: list[list[int]], batch: int, max_new: int, stops: set[int]) -> list[list[int]]:
    import torch

    model, pad = lm.model, int(lm.pad_token_id)
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    out: list[list[int]] = [[] for _ in encoded]
    with torch.inference_mode():
        for k in range(0, len(order), batch):
            rows = order[k : k + batch]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in rows], device=lm.device)
            mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in rows],
                                device=lm.device)
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 eos_token_id=sorted(stops), pad_token_id=pad, temperature=None, top_p=None,
                                 top_k=None)
            for i, seq in zip(rows, gen[:, width:].tolist()):
                cut = next((j for j, t in enumerate(seq) if t in stops), len(seq))
                out[i] = seq[:cut]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--shape", default="tiny", help="tiny, qwen2.5-0.5b or qwen2.5-1.5b (bench/hf_models.py)")
    ap.add_argument("--model", type=Path, default=None, help="a local model directory instead of a built shape")
    ap.add_argument("--prompts", type=int, default=None, help="default 96 on CPU, 256 on CUDA")
    ap.add_argument("--single", type=int, default=None,
                    help="prompts decoded one at a time (a prefix of the list; default: all on CPU, 32 on CUDA)")
    ap.add_argument("--batch", type=int, default=None, help="default 32 on CPU, 64 on CUDA")
    ap.add_argument("--prompt-len", type=int, default=None, help="longest prompt in tokens (default 64 on CPU, 256 on CUDA)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of the batched sides; medians are compared")
    ap.add_argument("--repeats-single", action="store_true", help="repeat the one-at-a-time side too")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()

    os.environ.setdefault("FACTORY_PROGRESS", "0")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    from factory.ml.generate import generate_ids
    from factory.ml.text import encode_prompt, stop_ids
    from factory.stages import BuildContext
    from factory_plugins.hf import HFFamily
    from hf_models import build_model, device_name, make_rows, peak_memory_mb, tokenizer_lm

    warnings.filterwarnings("ignore")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    n = args.prompts or (256 if cuda else 96)
    n_single = min(n, args.single or (32 if cuda else n))
    batch = args.batch or (64 if cuda else 32)
    plen = args.prompt_len or (256 if cuda else 64)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-hf-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = args.model or build_model(work / f"model-{args.shape}", args.shape, args.device)

    fam = HFFamily()
    base = Path(tempfile.mkdtemp(prefix="base-", dir=work))
    cfg = {"base": fam.resolve_base({"model": str(model_dir), "options": {"device": args.device}}, work)}
    fam.build_base(BuildContext(recipe=None, stage="base", kind="base", key="bench", config=cfg, inputs={},
                                out=base, root=work, registry=None, work=None, log=lambda *_: None))
    lm = fam.load(base, None, {"device": args.device})
    prompts = [r["prompt"] for r in make_rows(tokenizer_lm(model_dir), n, plen, 3, "p")]
    encoded = [encode_prompt(lm, p) for p in prompts]
    stops = stop_ids(lm)

    def timed(fn):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - t

    generate_ids(lm, prompts[:4], 4, 4)  # warm-up (kernels, allocator) for every side
    hf_generate(lm, encoded[:4], 4, 4, stops)
    runs: dict[str, list[float]] = {"b": [], "h": [], "1": []}
    for rep in range(args.repeats):  # alternating, so a busy spell on a shared machine hits every side
        batched, t = timed(lambda: generate_ids(lm, prompts, args.max_new_tokens, batch))
        runs["b"].append(t)
        hf, t = timed(lambda: hf_generate(lm, encoded, batch, args.max_new_tokens, stops))
        runs["h"].append(t)
        if rep == 0 or args.repeats_single:
            single, t = timed(lambda: generate_ids(lm, prompts[:n_single], args.max_new_tokens, 1))
            runs["1"].append(t)
    t_b, t_h, t_1 = (statistics.median(runs[k]) for k in ("b", "h", "1"))

    def tokens(outs):
        return sum(len(o) for o in outs)

    sides = {
        "factory batched": {"prompts": n, "seconds": t_b, "tokens": tokens(batched)},
        "factory one at a time": {"prompts": n_single, "seconds": t_1, "tokens": tokens(single)},
        "transformers generate": {"prompts": n, "seconds": t_h, "tokens": tokens(hf)},
    }
    for s in sides.values():
        s["tokens_per_s"] = round(s["tokens"] / s["seconds"], 1)
        s["prompts_per_s"] = round(s["prompts"] / s["seconds"], 2)
        s["seconds"] = round(s["seconds"], 3)
    same_single = sum(a == b for a, b in zip(batched[:n_single], single))
    same_hf = sum(a == b for a, b in zip(batched, hf))
    print(f"greedy generation, {args.shape if not args.model else args.model} on {device_name(args.device)}, "
          f"{lm.info.get('dtype')}: {n} prompts up to {plen} tokens, {args.max_new_tokens} new tokens, batch {batch}, "
          f"{args.threads} CPU thread(s)")
    ref = sides["transformers generate"]["tokens_per_s"]
    one = sides["factory one at a time"]["tokens_per_s"]
    print(f"{'side':<24} {'prompts':>8} {'seconds':>9} {'tokens/s':>10} {'vs generate':>12} {'vs one':>8}")
    for name, s in sides.items():
        print(f"{name:<24} {s['prompts']:>8} {s['seconds']:>9.2f} {s['tokens_per_s']:>10.0f} "
              f"{s['tokens_per_s'] / ref:>11.2f}x {s['tokens_per_s'] / one:>7.2f}x")
    print(f"identical outputs: batched vs one at a time {same_single}/{n_single}; "
          f"batched vs transformers generate {same_hf}/{n}")
    peak = peak_memory_mb(args.device)
    print(f"peak {'CUDA memory allocated' if cuda else 'RSS'} of the process: {peak:.0f} MB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"bench": "hf-eval", "shape": args.shape, "device": args.device,
                  "device_name": device_name(args.device), "dtype": lm.info.get("dtype"), "prompts": n,
                  "prompt_len": plen, "max_new_tokens": args.max_new_tokens, "batch": batch, "threads": args.threads,
                  "repeats": args.repeats, "runs_s": {k: [round(x, 3) for x in v] for k, v in runs.items()},
                  "sides": sides, "identical": {"batched_vs_single": [same_single, n_single],
                                                "batched_vs_transformers": [same_hf, n]},
                  "batched_vs_transformers_tokens_per_s": round(sides["factory batched"]["tokens_per_s"] / ref, 3),
                  "batched_vs_single_tokens_per_s": round(sides["factory batched"]["tokens_per_s"] / one, 3),
                  "peak_mb": round(peak, 1)}
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
