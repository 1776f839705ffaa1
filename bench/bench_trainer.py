"""Per-step cost of the SFT-LoRA trainer against a bare peft + torch loop on the same steps and data.

    PYTHONPATH=. python bench/bench_trainer.py [--model DIR] [--steps 200] [--repeats 3]

The bare loop does only what any LoRA fine-tune must: collate the batch, forward,
answer-token loss, backward, clip, AdamW and scheduler step. The trainer adds
its logging, progress bar, checkpoints and bookkeeping.

Two measures. Wall clock: steps timed from the first to the last (setup, the
pre-check and the final held-out evaluation excluded, checkpoints included).
CPU time: each side runs twice, with `--steps` and with `--short` steps, and the
process CPU time per extra step is compared; setup cancels out, and unlike wall
clock it is not inflated by other processes sharing the cores. Runs alternate;
medians are compared. Target: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path


def make_rows(n: int, seed: int, kind: str) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        w = "".join(rnd.choice("abcdefgh") for _ in range(rnd.randint(3, 12)))
        rows.append({"id": f"{kind}{i}", "prompt": f"{kind}: {w}", "answer": w if kind == "copy" else w[::-1]})
    return rows


def run_trainer(model_dir: Path, files: dict[str, Path], cfg: dict, tmp: Path) -> float:
    from factory.ml.sft import train_sft_lora
    from factory.ml.toymodels import load_toy
    from factory.stages import BuildContext

    out = Path(tempfile.mkdtemp(dir=tmp))
    ctx = BuildContext(recipe=None, stage="train", kind="train", key="bench", config=cfg,
                       inputs={"base": model_dir, **files}, out=out, root=tmp, registry=None,
                       work=out.with_suffix(".work"), log=lambda *_: None)
    train_sft_lora(ctx, load_toy(model_dir))
    return ctx.facts["loop_seconds"] / ctx.facts["loop_steps"]  # timings are facts, not output bytes


def run_bare(model_dir: Path, files: dict[str, Path], cfg: dict) -> float:
    import torch
    from peft import LoraConfig, get_peft_model

    from factory.ml.lora import default_targets
    from factory.ml.sft import Schedule, collate, lr_factor
    from factory.records import read_rows
    from factory.ml.text import encode_examples
    from factory.ml.toymodels import load_toy

    lm = load_toy(model_dir)
    train = encode_examples(lm, read_rows(files["train"]), lm.max_length)
    replay = encode_examples(lm, read_rows(files["replay"]), lm.max_length)
    torch.manual_seed(cfg["seed"])
    model = get_peft_model(lm.model, LoraConfig(r=cfg["lora"]["r"], lora_alpha=cfg["lora"]["alpha"],
                                                target_modules=default_targets(lm.model), task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg["steps"], cfg["warmup_steps"], 0.1))
    schedule = Schedule(len(train), len(replay), cfg["batch_size"], cfg["replay"], cfg["seed"])
    pools = {"train": train, "replay": replay}
    times = []
    for step in range(cfg["steps"]):
        batch = [pools[s][i] for s, i in schedule.batch(step)]
        ids, mask, labels = collate(batch, lm.pad_token_id, "cpu")
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                                 ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter())
    return (times[-1] - times[0]) / (len(times) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="a local model directory (default: a toy Llama, hidden 128)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--short", type=int, default=20, help="steps of the short runs (CPU-time measure)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import os

    import torch

    from factory.ml.toymodels import save_toy_model

    os.environ.setdefault("FACTORY_PROGRESS", "0")  # FACTORY_PROGRESS=1 to include the progress bar
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    model_dir = args.model or save_toy_model(tmp / "model", "llama", hidden=128, init_std=0.02)
    files = {}
    for name, rows in (("train", make_rows(1000, 1, "copy")), ("heldout", make_rows(64, 2, "copy")),
                       ("replay", make_rows(1000, 3, "reverse"))):
        files[name] = tmp / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"steps": args.steps, "lr": 5e-3, "batch_size": 32, "replay": 0.25, "seed": 0, "warmup_steps": 10,
           "checkpoint_every": 50, "eval_every": 0, "threads": args.threads,
           "lora": {"r": 16, "alpha": 32}}
    short = {**cfg, "steps": args.short}
    trainer, bare, cpu_t, cpu_b = [], [], [], []
    for _ in range(args.repeats):
        c0 = time.process_time()
        run_bare(model_dir, files, short)
        c1 = time.process_time()
        bare.append(run_bare(model_dir, files, cfg))
        c2 = time.process_time()
        run_trainer(model_dir, files, short, tmp)
        c3 = time.process_time()
        trainer.append(run_trainer(model_dir, files, cfg, tmp))
        c4 = time.process_time()
        extra = args.steps - args.short
        cpu_b.append(((c2 - c1) - (c1 - c0)) / extra)
        cpu_t.append(((c4 - c3) - (c3 - c2)) / extra)
    ct, cb = statistics.median(cpu_t), statistics.median(cpu_b)
    print(f"CPU time per step: bare {cb * 1000:.2f} ms, trainer {ct * 1000:.2f} ms; "
          f"ratio trainer/bare: {ct / cb:.3f}  (target <= 1.05)")
    t, b = statistics.median(trainer), statistics.median(bare)
    print(f"bare peft+torch loop: {b * 1000:.2f} ms/step  (runs: {', '.join(f'{x * 1000:.2f}' for x in bare)})")
    print(f"factory trainer:      {t * 1000:.2f} ms/step  (runs: {', '.join(f'{x * 1000:.2f}' for x in trainer)})")
    print(f"wall-clock ratio trainer/bare: median {t / b:.3f}, best-of {min(trainer) / min(bare):.3f}")


if __name__ == "__main__":
    main()
