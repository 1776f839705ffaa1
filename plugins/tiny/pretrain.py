"""Building a tiny base: tokenizer, model, pretraining on the breadth corpus, and a held-out check.

`build_base(ctx)` is the build function of the `base` stage for the tiny
family. It reads the breadth corpus split (`ctx.inputs["breadth"]`, a directory
with train.jsonl and heldout.jsonl) and writes into `ctx.out` a checkpoint that
transformers loads as it is: model.safetensors, config.json, tokenizer files,
plus base.json (what was built, how long it took, how well it does) and
pretrain.log (JSON lines).

The same inputs and options give a byte-identical model.safetensors: every
random choice is seeded and the thread count, which changes the order of
floating-point sums, is an option (so part of the stage key), not a guess
from the machine's load.
"""

from __future__ import annotations

import json
import random
import resource
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import xxhash

from factory.errors import FactoryError
from factory.ml.packing import collate_packed
from factory.records import read_rows
from factory_plugins.tiny.base import (
    ATTENTION,
    TEMPLATE,
    TinyBaseOptions,
    format_prompt,
    parse_base_options,
)

EOS = "<eos>"
PAD = "<pad>"
LOG_EVERY = 50


def train_tokenizer(rows: Iterable[dict[str, Any]], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (digits kept single) trained on the rendered rows."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # A leading space on every text: the prompt and the answer are tokenized apart (factory.ml.text),
    # and "cat" at the start of an answer then gets the same tokens as " cat" inside the prompt, so
    # copying a word is copying its tokens. Decoded answers start with that space; evals strip it.
    tok.normalizer = normalizers.Prepend(" ")
    # Single digits: numbers then read the same way in every context, which arithmetic and sorting need.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )

    def texts() -> Iterable[str]:
        for r in rows:
            yield format_prompt(r["prompt"])
            yield r["answer"]

    tok.train_from_iterator(texts(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


def model_config(opts: TinyBaseOptions, tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=opts.hidden_size,
        intermediate_size=opts.intermediate_size,
        num_hidden_layers=opts.layers,
        num_attention_heads=opts.heads,
        num_key_value_heads=opts.heads,
        max_position_embeddings=opts.max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def lr_at(step: int, opts: TinyBaseOptions) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio of the peak."""
    import math

    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    span = max(1, opts.steps - opts.warmup_steps)
    progress = min(1.0, (step - opts.warmup_steps) / span)
    return opts.lr * (opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _batch_order(examples: list[Any], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless random batches of example indices, reshuffled every epoch."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order.extend(fresh)
        yield order[:batch_size]
        del order[:batch_size]


def make_optimizer(model: Any, opts: TinyBaseOptions) -> Any:
    """AdamW over every trainable weight, with weight decay on matrices only."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": opts.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=opts.lr,
        betas=(0.9, 0.95),
    )


def train_step(model: Any, optim: Any, batch: dict[str, Any], bf16: bool) -> float:
    """One optimizer step on a packed batch (answer-only loss, gradients clipped at 1); returns the loss.

    bf16 autocast keeps fp32 weights and optimizer state; only the matrix products run in bf16.
    The output layer runs on the positions that predict an answer token only: the loss reads no
    other logits (the full-width projection and log-softmax were about 8% of a step's operator time).
    """
    import torch
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).last_hidden_state
        answer = labels != -100
        logits = model.lm_head(hidden[:, :-1][answer])
    loss = F.cross_entropy(logits.float(), labels[answer])
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optim.step()
    optim.zero_grad(set_to_none=True)
    return float(loss.detach())


def pretrain(
    model: Any,
    examples: list[Any],
    opts: TinyBaseOptions,
    pad_id: int,
    log: Callable[[dict[str, Any]], None],
    progress: Callable[[int, float], None] = lambda step, loss: None,
) -> dict[str, Any]:
    """Train all weights with answer-only loss; returns steps, final loss, tokens and (apart) seconds.

    The log lines hold content only (step, loss, lr): timings differ on every execution and would
    change the base's output digest.
    """
    batches = _batch_order(examples, opts.batch_size, opts.seed)
    optim = make_optimizer(model, opts)
    model.train()
    start = time.perf_counter()
    window_loss, window_n, window_tokens, tokens = 0.0, 0, 0, 0
    last_log = start
    final_loss = float("nan")
    for step in range(opts.steps):
        batch = collate_packed([examples[i] for i in next(batches)], pad_id)
        lr = lr_at(step, opts)
        for group in optim.param_groups:
            group["lr"] = lr
        value = train_step(model, optim, batch, opts.precision == "bf16")
        n_tokens = batch["tokens"]
        window_loss += value
        window_n += 1
        window_tokens += n_tokens
        tokens += n_tokens
        progress(step + 1, value)
        if (step + 1) % LOG_EVERY == 0 or step + 1 == opts.steps:
            now = time.perf_counter()
            final_loss = window_loss / window_n
            log(
                {
                    "step": step + 1,
                    "loss": round(final_loss, 6),
                    "lr": lr,
                }
            )
            window_loss, window_n, window_tokens, last_log = 0.0, 0, 0, now
    model.eval()
    seconds = time.perf_counter() - start
    return {
        "steps": opts.steps,
        "final_loss": round(final_loss, 6),
        "tokens": tokens,
        "facts": {"seconds": round(seconds, 3), "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)},
    }


def heldout_check(lm: Any, rows: list[dict[str, Any]], n: int, seed: int = 0) -> dict[str, Any]:
    """Exact match of greedy answers on `n` held-out rows, overall and per skill."""
    if n <= 0 or not rows:
        return {"exact_match": None, "n": 0, "per_skill": {}}
    # A sample spread over every skill, independent of the file's order.
    picked = sorted(rows, key=lambda r: xxhash.xxh3_64_intdigest(f"{seed}:{r['id']}".encode()))[:n]
    from factory.ml.generate import generate

    answers = generate(lm, [r["prompt"] for r in picked], max_new_tokens=48)
    per: dict[str, list[int]] = {}
    hits = 0
    for r, out in zip(picked, answers):
        ok = int(out.strip() == r["answer"].strip())
        hits += ok
        s = per.setdefault(r.get("skill") or "-", [0, 0])
        s[0] += ok
        s[1] += 1
    return {
        "exact_match": round(hits / len(picked), 4),
        "n": len(picked),
        "per_skill": {k: round(v[0] / v[1], 4) for k, v in sorted(per.items())},
    }


def _progress_bar() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("pretraining tiny base"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
        transient=False,
    )


def build(breadth_dir: Path, out: Path, options: dict[str, Any], model_id: str = "tiny-llama",
          log: Callable[[str], None] = print, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build a tiny base from a breadth corpus split into `out`; returns what base.json records."""
    import torch

    from factory.interfaces import LoadedModel
    from factory.ml.text import encode_examples
    from factory.ml.threads import keep_freed_memory

    opts = parse_base_options(options)
    breadth_dir, out = Path(breadth_dir), Path(out)
    train_rows = read_rows(breadth_dir / "train.jsonl")
    heldout_rows = read_rows(breadth_dir / "heldout.jsonl")
    if not train_rows:
        raise FactoryError(f"{breadth_dir / 'train.jsonl'}: no rows to pretrain the tiny base on")

    # Pretraining threads are an option, not the machine's free cores: another count splits the
    # sums of a matrix product differently and the weights come out bitwise different.
    threads = opts.threads
    torch.set_num_threads(threads)
    keep_freed_memory()  # activations reuse the heap instead of fresh pages every step (same bytes)
    torch.manual_seed(opts.seed)
    random.seed(opts.seed)
    wall = time.perf_counter()

    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one progress bar, ours
    tokenizer = train_tokenizer(train_rows, opts.vocab_size)
    tokenizer.model_max_length = opts.max_positions

    model = LlamaForCausalLM._from_config(model_config(opts, tokenizer), attn_implementation=ATTENTION)
    lm = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        format_prompt=format_prompt,
        eos_token_id=int(tokenizer.eos_token_id),
        pad_token_id=int(tokenizer.pad_token_id),
        max_length=opts.max_positions,
        info={"family": "tiny", "template": TEMPLATE, "add_bos": False},
    )
    examples = encode_examples(lm, train_rows, opts.max_positions)  # one tokenizer call per side
    cut = sum(e.truncated for e in examples)
    if cut:
        log(f"tiny base: {cut} breadth rows longer than {opts.max_positions} tokens were cut")

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pretrain.log", "w") as logf, _progress_bar() as bar:
        task = bar.add_task("pretrain", total=opts.steps, loss=float("nan"))

        def write_line(line: dict[str, Any]) -> None:
            logf.write(json.dumps(line, sort_keys=True) + "\n")
            logf.flush()

        stats = pretrain(
            model, examples, opts, lm.pad_token_id, write_line,
            progress=lambda step, loss: bar.update(task, completed=step, loss=loss),
        )

    # The held-out check's answers go into base.json, and greedy decoding on another thread count can
    # break a near tie the other way: it runs on the same `threads` as pretraining, not the free cores.
    t_check = time.perf_counter()
    check = heldout_check(lm, heldout_rows, opts.eval_rows, opts.seed)
    check_s = time.perf_counter() - t_check
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "family": "tiny",
        "model": model_id,
        "template": TEMPLATE,
        "options": opts.model_dump(),
        "parameters": n_params,
        "tokenizer": {"kind": "byte-level BPE", "vocab_size": len(tokenizer), "eos": EOS, "pad": PAD},
        "corpus": {"train_rows": len(train_rows), "heldout_rows": len(heldout_rows), "cut_rows": cut},
        "pretrain": {**{k: v for k, v in stats.items() if k != "facts"}, "threads": threads,
                     "torch": torch.__version__},
        "heldout_breadth": check,
    }
    (out / "base.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    if facts is not None:  # measurements of this execution: the stage manifest and events keep them
        facts.update({
            "seconds": round(time.perf_counter() - wall, 3),
            "pretrain_seconds": stats["facts"]["seconds"],
            "tokens_per_s": stats["facts"]["tokens_per_s"],
            "heldout_check_seconds": round(check_s, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        })
    em = check["exact_match"]
    log(
        f"tiny base: {opts.steps} steps in {stats['facts']['seconds']:.0f} s, final loss {stats['final_loss']:.3f}, "
        f"held-out breadth exact match {em if em is None else f'{em:.1%}'} on {check['n']} rows"
    )
    return info


def build_base(ctx: Any) -> None:
    """Build function of the tiny family's base stage."""
    cfg = ctx.config
    opts = cfg.get("options", cfg)
    build(Path(ctx.inputs["breadth"]), Path(ctx.out), opts, model_id=cfg.get("model", "tiny-llama"), log=ctx.log,
          facts=getattr(ctx, "facts", None))
