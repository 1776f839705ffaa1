"""Per-step cost of the dpo-lora trainer against a bare peft + torch DPO loop on the same pairs.

    PYTHONPATH=. python bench/bench_dpo.py [--steps 60] [--short 20] [--repeats 3] [--pairs 256]

Both sides start from the same LoRA adapter on the same toy Llama (hidden 128, 2 layers), train on
the same preference pairs with the same batch, and compute reference log-probs once per pair before
the first step (the bare loop the simplest way: one no-grad pass over every pair). The trainer adds
its checkpoints, log lines, progress bar and bookkeeping.

Per-step cost is measured in process CPU time as the difference between a `--steps` run and a
`--short` run of the same side, so setup and the one-off reference pass cancel out; runs alternate and
medians are compared. Target: ratio <= 1.10. The one-off reference pass is timed too and printed
against the cost of one training step over all pairs (it is one forward per pair and side, no backward).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path


def make_pairs(n: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        w = "".join(rnd.choice("abcdefgh") for _ in range(rnd.randint(3, 12)))
        rows.append({"id": f"p{i}", "prompt": f"copy: {w}", "answer": w, "rejected": w[::-1] + "x"})
    return rows


def setup(tmp: Path, pairs: int):
    import torch

    from factory.ml.sft import train_sft_lora
    from factory.ml.toymodels import load_toy, save_toy_model
    from factory.stages import BuildContext

    torch.manual_seed(0)
    base = save_toy_model(tmp / "base", "llama", hidden=128, layers=2, init_std=0.02)
    rows = make_pairs(pairs, 1)
    train = tmp / "pairs.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp / "sft"
    out.mkdir()
    ctx = BuildContext(recipe=None, stage="sft", kind="train", key="sft",
                       config={"steps": 10, "lr": 5e-3, "batch_size": 8, "threads": 1},
                       inputs={"train": train}, out=out, root=tmp, registry=None, work=tmp / "sft-work",
                       log=lambda *_: None)
    train_sft_lora(ctx, load_toy(base))
    return base, train, out


def load(base: Path, init: Path):
    from peft import PeftModel

    from factory.ml.toymodels import load_toy

    lm = load_toy(base)
    lm.model = PeftModel.from_pretrained(lm.model, str(init / "adapter"), is_trainable=True)
    return lm


def run_trainer(base, train, init, steps, batch, tmp: Path) -> float:
    from factory.ml.dpo import train_dpo_lora
    from factory.stages import BuildContext

    d = Path(tempfile.mkdtemp(dir=tmp))
    (d / "out").mkdir()
    ctx = BuildContext(recipe=None, stage="dpo", kind="train", key="dpo",
                       config={"steps": steps, "lr": 5e-4, "batch_size": batch, "beta": 0.1, "threads": 1,
                               "checkpoint_every": 50},
                       inputs={"train": train, "init": init}, out=d / "out", root=tmp, registry=None,
                       work=d / "work", log=lambda *_: None)
    lm = load(base, init)
    t = time.process_time()
    train_dpo_lora(ctx, lm)
    return time.process_time() - t


def run_bare(base, train, init, steps, batch, seed=0) -> float:
    import torch

    from factory.ml.dpo import sequence_logps
    from factory.ml.sft import collate, lr_factor
    from factory.ml.text import encode_examples
    from factory.records import read_rows

    lm = load(base, init)
    model = lm.model
    rows = read_rows(train)
    t = time.process_time()
    ch = encode_examples(lm, rows, lm.max_length)
    rj = encode_examples(lm, [{"prompt": r["prompt"], "answer": r["rejected"]} for r in rows], lm.max_length)
    pad = int(lm.pad_token_id)
    with torch.no_grad():
        model.eval()
        rc = torch.cat([sequence_logps(model, *collate(ch[i:i + batch], pad, "cpu")) for i in range(0, len(ch), batch)])
        rr = torch.cat([sequence_logps(model, *collate(rj[i:i + batch], pad, "cpu")) for i in range(0, len(rj), batch)])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, 0, 0.1))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    for step in range(steps):
        idx = [order[(step * batch + j) % len(order)] for j in range(batch)]
        pc = sequence_logps(model, *collate([ch[i] for i in idx], pad, "cpu"))
        pr = sequence_logps(model, *collate([rj[i] for i in idx], pad, "cpu"))
        margin = (pc - rc[idx]) - (pr - rr[idx])
        loss = -torch.nn.functional.logsigmoid(0.1 * margin).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return time.process_time() - t


def run_trl(base, train, init, steps, batch, tmp: Path) -> float:
    """TRL's DPOTrainer on the same adapter and pairs (reference log-probs precomputed, as factory does)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from factory.records import read_rows

    lm = load(base, init)
    rows = [{"prompt": lm.format_prompt(r["prompt"]), "chosen": r["answer"], "rejected": r["rejected"]}
            for r in read_rows(train)]
    args = DPOConfig(output_dir=str(Path(tempfile.mkdtemp(dir=tmp))), per_device_train_batch_size=batch,
                     max_steps=steps, learning_rate=5e-4, beta=0.1, report_to=[], use_cpu=True, save_strategy="no",
                     logging_steps=10_000, precompute_ref_log_probs=True, max_length=None, disable_tqdm=True,
                     dataloader_num_workers=0)
    trainer = DPOTrainer(model=lm.model, ref_model=None, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=lm.tokenizer)
    t = time.process_time()
    trainer.train()
    return time.process_time() - t


def main() -> None:
    import os

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--short", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--no-trl", action="store_true", help="skip TRL's DPOTrainer")
    args = ap.parse_args()
    os.environ["FACTORY_PROGRESS"] = "0"
    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    base, train, init = setup(tmp, args.pairs)
    per: dict[str, list[float]] = {"factory": [], "bare": []}
    sides = [("factory", lambda s: run_trainer(base, train, init, s, args.batch, tmp)),
             ("bare", lambda s: run_bare(base, train, init, s, args.batch))]
    if not args.no_trl:
        per["trl"] = []
        sides.append(("trl", lambda s: run_trl(base, train, init, s, args.batch, tmp)))
    for _ in range(args.repeats):
        for name, fn in sides:
            long_, short = fn(args.steps), fn(args.short)
            per[name].append((long_ - short) / (args.steps - args.short))
    f, b = statistics.median(per["factory"]), statistics.median(per["bare"])
    print(f"CPU seconds per DPO step ({args.batch} pairs, median of {args.repeats}): "
          f"factory {f * 1000:.1f} ms, bare peft+torch {b * 1000:.1f} ms, ratio {f / b:.3f} (target <= 1.10)")
    if per.get("trl"):
        tr = statistics.median(per["trl"])
        print(f"TRL DPOTrainer {tr * 1000:.1f} ms per step: factory / TRL = {f / tr:.3f}")

    # the one-off reference pass: one no-grad forward per pair and side, against one training step over all pairs
    import math

    from factory.ml.dpo import sequence_logps
    from factory.ml.sft import collate
    from factory.ml.text import encode_examples
    from factory.records import read_rows

    lm = load(base, init)
    rows = read_rows(train)
    ch = encode_examples(lm, rows, lm.max_length)
    t = time.process_time()
    with torch.no_grad():
        for i in range(0, len(ch), args.batch):
            sequence_logps(lm.model, *collate(ch[i:i + args.batch], int(lm.pad_token_id), "cpu"))
            sequence_logps(lm.model, *collate(ch[i:i + args.batch], int(lm.pad_token_id), "cpu"))
    ref = time.process_time() - t
    full = f * math.ceil(len(rows) / args.batch)
    print(f"reference log-probs for {len(rows)} pairs, computed once: {ref:.2f} s CPU, "
          f"{ref / full:.2f}x one training epoch over the pairs ({full:.2f} s); a reference model run beside "
          "the policy would pay it again on every step")


if __name__ == "__main__":
    main()
