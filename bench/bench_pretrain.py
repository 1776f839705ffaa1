"""Pretraining throughput of the tiny base: threads, batch size and bf16 products, against 1 thread fp32.

    python bench/bench_pretrain.py [--steps 40] [--no-compile]

Times the pretraining step itself (`train_step` on packed batches, the tiny Llama, AdamW) on
the default breadth corpus, for each setting in turn in this one process, and prints rows per second
and the ratio to the first setting (1 thread, fp32, 32 rows a step: the tiny base's old default).
bf16 rows need a CPU with native bf16 (AVX512-BF16 or AMX); elsewhere they are skipped.

A second table puts the default (2 threads, 64 rows, bf16 where native) against what else could
make a step cheaper: SDPA attention instead of eager, fused AdamW, and `torch.compile`
(dynamic shapes: packed batches change shape every step), whose compile time is reported apart
with the number of pretraining steps it would take to pay it back.
"""

from __future__ import annotations

import argparse
import statistics
import time

SETTINGS = [  # (threads, rows per step, precision)
    (1, 32, "fp32"),
    (2, 32, "fp32"),
    (2, 64, "fp32"),
    (2, 32, "bf16"),
    (2, 64, "bf16"),
]


def timed(model, optim, examples, batch, pad_id, bf16, steps, warm=5):
    """(median seconds a step after `warm` steps, seconds of the `warm` steps): collation included.

    The first steps warm allocators and kernels up (and, under torch.compile, compile)."""
    from factory_plugins.tiny import pretrain as P

    order = P._batch_order(examples, batch, 0)
    times = []
    for _ in range(steps + warm):
        start = time.perf_counter()
        P.train_step(model, optim, P.collate_packed([examples[i] for i in next(order)], pad_id), bf16)
        times.append(time.perf_counter() - start)
    return statistics.median(times[warm:]), sum(times[:warm])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out (a minute of compiling)")
    args = ap.parse_args()

    import torch
    from transformers import LlamaForCausalLM

    from factory.interfaces import LoadedModel
    from factory.ml.text import encode_examples
    from factory_plugins.breadth import generate
    from factory_plugins.tiny import pretrain as P
    from factory_plugins.tiny.base import ATTENTION, format_prompt, native_bf16, parse_base_options

    rows = list(generate(20000, 0))
    tok = P.train_tokenizer(rows, 512)
    opts = parse_base_options({})
    lm = LoadedModel(model=None, tokenizer=tok, format_prompt=format_prompt, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, max_length=opts.max_positions, info={"add_bos": False})
    examples = encode_examples(lm, rows, opts.max_positions)
    base_rate = None
    print(f"{'threads':>7} {'rows':>5} {'precision':>9} {'ms/step':>8} {'rows/s':>7} {'ratio':>6}")
    for threads, batch, precision in SETTINGS:
        if precision == "bf16" and not native_bf16():
            print(f"{threads:>7} {batch:>5} {precision:>9}  skipped: no native bf16 on this CPU")
            continue
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = LlamaForCausalLM._from_config(P.model_config(opts, tok), attn_implementation=ATTENTION)
        optim = P.make_optimizer(model, opts)
        model.train()
        step, _ = timed(model, optim, examples, batch, tok.pad_token_id, precision == "bf16", args.steps)
        rate = batch / step
        base_rate = base_rate or rate
        print(f"{threads:>7} {batch:>5} {precision:>9} {step * 1000:>8.1f} {rate:>7.0f} {rate / base_rate:>5.2f}x")

    bf16 = native_bf16()
    torch.set_num_threads(2)
    steps = opts.steps  # the fast profile's pretraining length, for the pay-back column
    print(f"\nagainst the default (2 threads, 64 rows, {'bf16' if bf16 else 'fp32'}); a build pretrains {steps} steps")
    print(f"{'setting':>22} {'ms/step':>8} {'ratio':>6}  notes")
    default_step = None
    for name in ("default", "sdpa attention", "fused AdamW", "128 rows", "256 rows", "torch.compile"):
        if name == "torch.compile" and args.no_compile:
            continue
        torch.manual_seed(0)
        attn = "sdpa" if name == "sdpa attention" else ATTENTION
        model = LlamaForCausalLM._from_config(P.model_config(opts, tok), attn_implementation=attn)
        optim = P.make_optimizer(model, opts)
        if name == "fused AdamW":
            groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in optim.param_groups]
            optim = torch.optim.AdamW(groups, lr=opts.lr, betas=(0.9, 0.95), fused=True)
        model.train()
        batch = {"128 rows": 128, "256 rows": 256}.get(name, 64)
        note = ""
        if name == "torch.compile":
            model.model = torch.compile(model.model, dynamic=True)
            step, warm = timed(model, optim, examples, batch, tok.pad_token_id, bf16, args.steps)
            saved = default_step - step
            payback = f"pays back after {warm / saved:,.0f} steps" if saved > 0 else "never pays back"
            note = f"first 5 steps {warm:.1f} s (compiling); {payback}"
        else:
            step, _ = timed(model, optim, examples, batch, tok.pad_token_id, bf16, args.steps)
        per64 = step * 64 / batch  # the same rows' cost, for the batch rows
        default_step = default_step or step
        if batch != 64:
            note = f"{step * 1000:.1f} ms for {batch} rows; per 64 rows shown"
        print(f"{name:>22} {per64 * 1000:>8.1f} {default_step / per64:>5.2f}x  {note}")


if __name__ == "__main__":
    main()
