"""The hf family's SFT-LoRA trainer against TRL's SFTTrainer and a bare peft + torch loop: tokens/s, peak memory, loss.

    PYTHONPATH=. python bench/bench_hf_train.py                       # CPU, a tiny local Qwen2-shaped model
    PYTHONPATH=. python bench/bench_hf_train.py --device cuda --shape qwen2.5-0.5b   # bf16 on a GPU

All three train the same randomly initialised local model (bench/hf_models.py builds it
from a real checkpoint's config numbers; no hub) on the same token ids in the same batches:
the rows are encoded once with factory's shared encoding (template, BOS, answer and EOS;
loss on the answer and EOS), and the batch order is the trainer's own seeded schedule,
which TRL gets as a pre-tokenized dataset with `completion_mask` and a sequential sampler.
Same LoRA (rank, alpha, dropout, the architecture's target modules), sequence length, batch
size, AdamW, warm-up and cosine schedule, gradient clipping, and precision (bf16 autocast
over bf16 weights on CUDA, fp32 on CPU). TRL's gradient checkpointing (on by default in its
SFTConfig) is turned off, as neither of the others uses it.

- factory: the `hf` family's base stage and its `sft-lora` train-stage function, exactly as a
  recipe runs it (checkpoints every 50 steps and at the end, train.log, the held-out loss at
  the end on 8 rows, the adapter written out).
- trl: `trl.SFTTrainer` with `peft_config`, no saving, no reporting, no progress bar.
- bare: get_peft_model, collate, forward, answer-token cross-entropy, backward, clip, step.

Each side runs in its own process (so peak memory is its own: `torch.cuda.max_memory_allocated`
on a GPU, peak RSS on CPU, model weights included) and times its training loop from the first
step to the last (model load and setup excluded). Tokens/s counts the real (unpadded) tokens of
the batches, the same for all three. On CPU each process also trains 2 steps (warm-up) and a quarter
of the steps first, and the CPU time the full run spends beyond that short one gives CPU time per step and
tokens per CPU-second: on shared cores wall-clock time moves with other work, CPU time much less.
Ratios are against TRL measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ARMS = ("factory", "trl", "bare")


# --- one side, in its own process ---------------------------------------------------------------


def batches(spec: dict) -> list[list[int]]:
    from factory.ml.sft import Schedule

    sched = Schedule(spec["n_train"], 0, spec["batch"], 0.0, spec["seed"])
    return [[i for _, i in sched.batch(s)] for s in range(spec["steps"])]


def encoded(spec: dict) -> list:
    from factory.records import read_rows
    from factory.ml.text import encode_examples
    from hf_models import tokenizer_lm

    return encode_examples(tokenizer_lm(Path(spec["model"])), read_rows(Path(spec["train"])), spec["seq_len"])


def load_model(spec: dict):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if spec["device"].startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(spec["model"], local_files_only=True, dtype=dtype)
    return model.to(spec["device"])


def lora_config(spec: dict, model):
    from peft import LoraConfig

    from factory.ml.lora import default_targets

    return LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"],
                      target_modules=default_targets(model), task_type="CAUSAL_LM")


def run_factory(spec: dict) -> dict:
    from factory.stages import BuildContext
    from factory_plugins.hf import HFFamily

    work = Path(spec["work"]) / "factory"
    base = work / "base"
    base.mkdir(parents=True, exist_ok=True)
    fam = HFFamily()
    cfg = {"base": fam.resolve_base({"model": spec["model"], "options": {"device": spec["device"]}}, work)}
    fam.build_base(BuildContext(recipe=None, stage="base", kind="base", key="bench", config=cfg, inputs={},
                                out=base, root=work, registry=None, work=None, log=lambda *_: None))
    params = {"steps": spec["steps"], "lr": spec["lr"], "batch_size": spec["batch"],
              "micro_batch_size": spec["batch"], "max_len": spec["seq_len"], "seed": spec["seed"],
              "warmup_steps": spec["warmup"], "min_lr_ratio": 0.1, "grad_clip": 1.0, "eval_every": 0,
              "eval_rows": 8, "threads": spec["threads"], "device": spec["device"], "precision": "auto",
              "lora": {"r": spec["r"], "alpha": spec["alpha"], "dropout": spec["dropout"], "target_modules": "auto"}}
    out = work / "out"
    out.mkdir()
    ctx = BuildContext(recipe=None, stage="train", kind="train", key="bench", config=params,
                       inputs={"base": base, "train": Path(spec["train"]), "heldout": Path(spec["heldout"])},
                       out=out, root=work, registry=None, work=work / "work", log=lambda *_: None)
    fam.trainer("sft-lora")(ctx)
    summary = json.loads((out / "train.json").read_text())
    return {"loop_s": ctx.facts["loop_seconds"], "final_loss": summary["final_loss"],
            "trainable": summary["trainable_params"]}


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from hf_models import tokenizer_lm

    exs, order = encoded(spec), batches(spec)
    rows = [{"input_ids": exs[i].ids, "completion_mask": [int(m) for m in exs[i].loss_mask]}
            for b in order for i in b]
    model = load_model(spec)
    cuda = spec["device"].startswith("cuda")
    times: dict[str, float] = {}
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if "start" not in times:
                times["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            times["end"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    args = SFTConfig(
        output_dir=str(Path(spec["work"]) / "trl"), max_steps=spec["steps"], per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=1, learning_rate=spec["lr"], lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=spec["warmup"], weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        bf16=cuda, fp16=False, use_cpu=not cuda, dataloader_num_workers=0, gradient_checkpointing=False,
        max_length=spec["seq_len"], packing=False, completion_only_loss=True, train_sampling_strategy="sequential",
        seed=spec["seed"], data_seed=spec["seed"], dataset_num_proc=None,
    )
    torch.manual_seed(spec["seed"])
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer_lm(Path(spec["model"])).tokenizer,
                         peft_config=lora_config(spec, model), callbacks=[Clock()])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every log line; the others print nothing per step
    trainer.train()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"loop_s": times["end"] - times["start"], "final_loss": losses[-1], "trainable": trainable}


def run_bare(spec: dict) -> dict:
    import torch
    from peft import get_peft_model

    from factory.ml.sft import collate, lr_factor

    exs, order = encoded(spec), batches(spec)
    model = load_model(spec)
    torch.manual_seed(spec["seed"])
    model = get_peft_model(model, lora_config(spec, model))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, spec["steps"], spec["warmup"], 0.1))
    cuda = spec["device"].startswith("cuda")
    dev = torch.device(spec["device"])
    t0 = time.perf_counter()
    loss_value = float("nan")
    for b in order:
        ids, mask, labels = collate([exs[i] for i in b], spec["pad_id"], dev)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                     ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()
    if cuda:
        torch.cuda.synchronize()
    return {"loop_s": time.perf_counter() - t0, "final_loss": loss_value,
            "trainable": sum(p.numel() for p in params)}


def run_arm(arm: str, spec_path: Path, out_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    os.environ["FACTORY_PROGRESS"] = "0"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(spec["threads"])
    if spec["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    fn = {"factory": run_factory, "trl": run_trl, "bare": run_bare}[arm]
    cpu: dict[str, float] = {}
    # On CPU a short run first: the CPU time the long run spends beyond it is per-step work alone
    # (setup, loading and imports cancel), and other processes on the cores do not inflate it as
    # they inflate wall-clock time.
    # A 2-step run before them pays for the first-call costs (imports, allocator) that neither should carry.
    for label, n in (("warm-up", 2 if spec["short"] else 0), ("short", spec["short"]), ("long", spec["steps"])):
        if n <= 0:
            continue
        c0 = time.process_time()
        result = fn({**spec, "steps": n, "work": tempfile.mkdtemp(prefix=f"{arm}-{label}-", dir=spec["work"])})
        cpu[label] = time.process_time() - c0
    if "short" in cpu:
        result["cpu_per_step_s"] = (cpu["long"] - cpu["short"]) / (spec["steps"] - spec["short"])
    from hf_models import peak_memory_mb

    result["peak_mb"] = round(peak_memory_mb(spec["device"]), 1)
    out_path.write_text(json.dumps(result))


# --- the comparison -------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--shape", default="tiny", help="tiny, qwen2.5-0.5b or qwen2.5-1.5b (bench/hf_models.py)")
    ap.add_argument("--model", type=Path, default=None, help="a local model directory instead of a built shape")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default 60 on CPU, 40 on CUDA)")
    ap.add_argument("--batch", type=int, default=None, help="rows per step (default 8 on CPU, 16 on CUDA)")
    ap.add_argument("--seq-len", type=int, default=None, help="longest row in tokens (default 128 on CPU, 512 on CUDA)")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each side")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each side, alternating; medians are compared")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--work", type=Path, default=None, help="where the model and data go (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--arm", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        run_arm(args.arm, args.spec, args.out)
        return

    from hf_models import build_model, device_name, make_rows, tokenizer_lm, write_jsonl

    cuda = args.device.startswith("cuda")
    steps = args.steps or (40 if cuda else 60)
    batch = args.batch or (16 if cuda else 8)
    seq_len = args.seq_len or (512 if cuda else 128)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-hf-train-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_dir = args.model or build_model(work / f"model-{args.shape}", args.shape, args.device)
    built_s = time.perf_counter() - t0
    lm = tokenizer_lm(model_dir)
    train = write_jsonl(work / "train.jsonl", make_rows(lm, args.rows, seq_len, 1))
    heldout = write_jsonl(work / "heldout.jsonl", make_rows(lm, 8, seq_len, 2, "h"))
    spec = {"model": str(model_dir), "train": str(train), "heldout": str(heldout), "n_train": args.rows,
            "steps": steps, "batch": batch, "seq_len": seq_len, "lr": args.lr, "r": args.r, "alpha": args.alpha,
            "dropout": args.dropout, "seed": 0, "warmup": max(1, steps // 20), "threads": args.threads,
            "device": args.device, "work": str(work), "pad_id": int(lm.pad_token_id),
            "short": 0 if cuda else max(1, steps // 4)}
    from factory.records import read_rows

    spec["n_train"] = len(read_rows(train))
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    exs = encoded(spec)
    tokens = sum(len(exs[i].ids) for b in batches(spec) for i in b)
    extra_tokens = sum(len(exs[i].ids) for b in batches(spec)[spec["short"]:] for i in b)
    padded = sum(len(b) * max(len(exs[i].ids) for i in b) for b in batches(spec))

    arms = [a for a in args.arms.split(",") if a]
    results: dict[str, list[dict]] = {a: [] for a in arms}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    for rep in range(args.repeats):
        for arm in (arms if rep % 2 == 0 else arms[::-1]):
            out = work / f"result-{arm}-{rep}.json"
            cmd = [sys.executable, __file__, "--arm", arm, "--spec", str(spec_path), "--out", str(out)]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, env=env)
            r = json.loads(out.read_text())
            r["process_s"] = round(time.perf_counter() - t, 1)
            results[arm].append(r)
            cpu = f", CPU {r['cpu_per_step_s'] * 1000:.1f} ms/step" if "cpu_per_step_s" in r else ""
            print(f"  {arm} run {rep + 1}: {r['loop_s']:.2f} s{cpu}, loss {r['final_loss']:.4f}, "
                  f"peak {r['peak_mb']:.0f} MB", flush=True)

    rows = {}
    for arm, rs in results.items():
        loop = statistics.median(r["loop_s"] for r in rs)
        rows[arm] = {"loop_s": round(loop, 3), "tokens_per_s": round(tokens / loop, 1),
                     "peak_mb": round(statistics.median(r["peak_mb"] for r in rs), 1),
                     "final_loss": round(statistics.median(r["final_loss"] for r in rs), 4),
                     "trainable_params": rs[0]["trainable"], "process_s": rs[0]["process_s"],
                     "runs_loop_s": [round(r["loop_s"], 3) for r in rs]}
        if all("cpu_per_step_s" in r for r in rs):
            per_step = statistics.median(r["cpu_per_step_s"] for r in rs)
            rows[arm]["cpu_ms_per_step"] = round(per_step * 1000, 2)
            rows[arm]["tokens_per_cpu_s"] = round(extra_tokens / (per_step * (steps - spec["short"])), 1)
    mem = "peak CUDA memory allocated" if cuda else "peak RSS"
    print(f"\nhf SFT-LoRA, {args.shape if not args.model else args.model} on {device_name(args.device)}, "
          f"{'bf16' if cuda else 'fp32'}: {steps} steps of {batch} rows, rows up to {seq_len} tokens "
          f"({tokens} real tokens, {padded} with padding), LoRA r{args.r}/alpha {args.alpha:g}, "
          f"{args.threads} CPU thread(s); model built in {built_s:.1f} s")
    print(f"{'side':<8} {'loop s':>8} {'tokens/s':>10} {'vs TRL':>7} {mem + ' MB':>30} {'vs TRL':>7} {'loss':>8}")
    ref = rows.get("trl")
    for arm, r in rows.items():
        tr = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "-"
        mr = f"{r['peak_mb'] / ref['peak_mb']:.2f}x" if ref else "-"
        print(f"{arm:<8} {r['loop_s']:>8.2f} {r['tokens_per_s']:>10.0f} {tr:>7} {r['peak_mb']:>30.0f} {mr:>7} "
              f"{r['final_loss']:>8.4f}")
    if all("tokens_per_cpu_s" in r for r in rows.values()):
        print(f"CPU time per step beyond the first {spec['short']} (not inflated by other work on the cores): " + ", ".join(
            f"{a} {r['cpu_ms_per_step']:.1f} ms = {r['tokens_per_cpu_s']:.0f} tokens per CPU-second"
            + (f" ({r['tokens_per_cpu_s'] / ref['tokens_per_cpu_s']:.2f}x TRL)" if ref else "") for a, r in rows.items()))
    if ref and "factory" in rows:
        f = rows["factory"]
        cpu = (f", tokens per CPU-second {f['tokens_per_cpu_s'] / ref['tokens_per_cpu_s']:.2f}x"
               if "tokens_per_cpu_s" in f and "tokens_per_cpu_s" in ref else "")
        print(f"factory vs TRL: tokens/s {f['tokens_per_s'] / ref['tokens_per_s']:.2f}x{cpu} (target >= 1.0), "
              f"memory {f['peak_mb'] / ref['peak_mb']:.2f}x (target <= 1.0)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"bench": "hf-train", "shape": args.shape, "device": args.device,
                  "device_name": device_name(args.device), "precision": "bf16" if cuda else "fp32",
                  "steps": steps, "batch": batch, "seq_len": seq_len, "tokens": tokens, "padded_tokens": padded,
                  "lora": {"r": args.r, "alpha": args.alpha, "dropout": args.dropout}, "threads": args.threads,
                  "memory": mem, "repeats": args.repeats, "sides": rows}
        if ref and "factory" in rows:
            report["factory_vs_trl"] = {"tokens_per_s": round(rows["factory"]["tokens_per_s"] / ref["tokens_per_s"], 3),
                                        "peak_mb": round(rows["factory"]["peak_mb"] / ref["peak_mb"], 3)}
            if "tokens_per_cpu_s" in rows["factory"] and "tokens_per_cpu_s" in ref:
                report["factory_vs_trl"]["tokens_per_cpu_s"] = round(
                    rows["factory"]["tokens_per_cpu_s"] / ref["tokens_per_cpu_s"], 3)
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
