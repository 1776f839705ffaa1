"""Where a pretraining step and a LoRA step of the flagship spend their time.

    python bench/profile_tiny.py [--steps 60] [--profile-steps 20] [--threads 2]

Builds the flagship's breadth and dataset stages in a scratch project (seconds), trains the tiny
family's tokenizer, and then, on a freshly initialised tiny Llama (throughput does not depend on
the weights), times `--steps` steps of each loop split into collation and the step itself, counts
how many of the positions a batch computes are real tokens, and prints torch.profiler's operator
table for `--profile-steps` more. Pretraining: packed batches of 64 rows, bf16 autocast where the
CPU has native bf16. LoRA: the family's defaults (32 rows, 35% replay), padded and packed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stage_rows(root: Path, stage: str) -> tuple[list[dict], list[dict]]:
    from factory.records import read_rows

    for man in (root / "cache" / "stages").glob("*.json"):
        m = json.loads(man.read_text())
        if m.get("stage") == stage:
            obj = lambda name: root / "cache" / "objects" / m["outputs"][name]["digest"][:2] / m["outputs"][name]["digest"]
            return read_rows(obj("train.jsonl")), read_rows(obj("heldout.jsonl"))
    raise SystemExit(f"no {stage} stage in {root}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--profile-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the family's default on two cores: 2)")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="profile-tiny-"))
    shutil.copytree(REPO / "recipes", root / "recipes")
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    subprocess.run([sys.executable, "-m", "doit", "stage:pace-planner.breadth", "stage:pace-planner.dataset"],
                   cwd=root, check=True, capture_output=True)
    breadth, _ = stage_rows(root, "breadth")
    task, _ = stage_rows(root, "dataset")
    shutil.rmtree(root, ignore_errors=True)

    import torch
    from peft import LoraConfig, get_peft_model
    from torch.profiler import ProfilerActivity, profile
    from transformers import LlamaForCausalLM

    from factory.interfaces import LoadedModel
    from factory.ml import sft as S
    from factory.ml.packing import collate_packed
    from factory.ml.text import encode_examples
    from factory_plugins.tiny import pretrain as P
    from factory_plugins.tiny.base import ATTENTION, format_prompt, native_bf16, parse_base_options
    from factory_plugins.tiny.family import LORA_TARGETS

    torch.set_num_threads(args.threads)
    bf16 = native_bf16()
    opts = parse_base_options({})
    t = time.perf_counter()
    tok = P.train_tokenizer(breadth, opts.vocab_size)
    print(f"tokenizer: {time.perf_counter() - t:.2f} s; bf16 products: {bf16}")
    lm = LoadedModel(model=None, tokenizer=tok, format_prompt=format_prompt, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, max_length=opts.max_positions, info={"add_bos": False})
    bex = encode_examples(lm, breadth, opts.max_positions)
    tex = encode_examples(lm, task, 160)
    mean = lambda exs: sum(len(e.ids) for e in exs) / len(exs)
    print(f"tokens per row: breadth {mean(bex):.1f} (max {max(len(e.ids) for e in bex)}), "
          f"planner {mean(tex):.1f} (max {max(len(e.ids) for e in tex)})")

    def report(name: str, collate_s: float, step_s: float, real: int, slots: int, n: int) -> None:
        print(f"{name}: collate {collate_s / n * 1000:.1f} ms/step, step {step_s / n * 1000:.1f} ms/step, "
              f"real tokens {real / slots:.1%} of the positions computed")

    # -- pretraining
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(P.model_config(opts, tok), attn_implementation=ATTENTION)
    optim = P.make_optimizer(model, opts)
    model.train()
    order = P._batch_order(bex, opts.batch_size, 0)

    def pre_step() -> tuple[float, float, int, int]:
        a = time.perf_counter()
        b = collate_packed([bex[j] for j in next(order)], tok.pad_token_id)
        m = time.perf_counter()
        P.train_step(model, optim, b, bf16)
        return m - a, time.perf_counter() - m, b["tokens"], b["input_ids"].numel()

    def timed(step, name: str) -> None:
        for _ in range(5):
            step()
        tot = [0.0, 0.0, 0, 0]
        for _ in range(args.steps):
            tot = [x + y for x, y in zip(tot, step())]
        report(name, *tot, args.steps)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.profile_steps):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    timed(pre_step, f"pretraining, {opts.batch_size} rows packed")

    # -- LoRA
    for packing in (False, True):
        torch.manual_seed(0)
        base = LlamaForCausalLM._from_config(P.model_config(opts, tok), attn_implementation=ATTENTION)
        pm = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=list(LORA_TARGETS),
                                             task_type="CAUSAL_LM"))
        pm.train()
        trainable = [p for p in pm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=5e-3)
        sched = S.Schedule(len(tex), len(bex), 32, 0.35, 0)
        pools = {"train": tex, "replay": bex}
        counter = iter(range(10**9))

        def lora_step(packing=packing, pm=pm, opt=opt, trainable=trainable, sched=sched) -> tuple[float, float, int, int]:
            batch = [pools[s][i] for s, i in sched.batch(next(counter))]
            n = sum(e.n_loss for e in batch)
            a = time.perf_counter()
            if packing:
                b = collate_packed(batch, tok.pad_token_id, 128)
                slots = b["input_ids"].numel()
            else:
                ids, mask, labels = S.collate(batch, tok.pad_token_id, "cpu")
                slots = ids.numel()
            m = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if packing:  # packed_nll_sum's body, on the batch collated above
                    logits = pm(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                position_ids=b["position_ids"]).logits
                    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                            b["labels"][:, 1:].flatten(), reduction="sum")
                else:
                    nll = S.token_nll_sum(pm, ids, mask, labels)
                (nll / n).backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return m - a, time.perf_counter() - m, sum(len(e.ids) for e in batch), slots

        timed(lora_step, f"LoRA, 32 rows {'packed into rows of 128' if packing else 'padded'}")


if __name__ == "__main__":
    main()
