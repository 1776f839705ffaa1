"""Batched greedy generation and answer scoring for any LoadedModel.

`generate` decodes many prompts at once: prompts are sorted by length into
batches (less padding), left-padded, given an attention mask and position ids
that count only real tokens, and decoded with the KV cache; each row stops at
EOS or its length limit. Rows never see each other's padding, so the text
produced does not depend on the batch size.

`answer_logprobs` gives each row's mean answer-token loss (natural log), the
number the perplexity suite reports.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

from factory.ml.text import encode_example, encode_prompt, stop_ids


# Notes about generation (rows cut short by the model's context) for whoever is listening: the eval
# stage collects them per suite into its record, so a cut answer is reported, not silently scored.
_notes: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("generation_notes", default=None)


@contextlib.contextmanager
def collect_notes() -> Iterator[list[str]]:
    """Collect the notes generation makes inside the block (a list filled in place)."""
    notes: list[str] = []
    token = _notes.set(notes)
    try:
        yield notes
    finally:
        _notes.reset(token)


# What the progress bar calls the generation in flight (the eval stage sets the suite's name);
# unset, or FACTORY_PROGRESS=0, and no bar is drawn.
_label: contextvars.ContextVar[str | None] = contextvars.ContextVar("generation_label", default=None)


@contextlib.contextmanager
def progress_label(label: str) -> Iterator[None]:
    """Generation inside the block shows a progress bar with an ETA on stderr, named `label`."""
    token = _label.set(label)
    try:
        yield
    finally:
        _label.reset(token)


def _progress(total: int, done: int):
    import os

    label = _label.get()
    if label is None or os.environ.get("FACTORY_PROGRESS", "1") == "0":
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn(f"eval {label}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
        TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
    )
    progress.add_task(label, total=total, completed=done)
    progress.start()
    return progress


def _note(text: str) -> None:
    notes = _notes.get()
    if notes is not None and text not in notes:
        notes.append(text)


@contextlib.contextmanager
def _inference(model: Any) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the model's training flag is restored after."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _batches(order: list[int], size: int) -> list[list[int]]:
    size = max(1, int(size))
    return [order[i : i + size] for i in range(0, len(order), size)]


def _left_pad(seqs: list[list[int]], pad_id: int, device: Any):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def generate(lm: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy continuations of `prompts` (template applied), without the prompt and without EOS.

    Prompts longer than the model's context keep their last tokens. A row stops at
    EOS (or a family stop token), after `max_new_tokens`, or when the model's
    context (`lm.max_length`) is full.
    """
    ids = generate_ids(lm, prompts, max_new_tokens, batch_size)
    return [lm.tokenizer.decode(r, skip_special_tokens=True) for r in ids]


def generate_ids(lm: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[list[int]]:
    """The token ids `generate` decodes: per prompt, the new tokens before the stop token."""
    return generate_with_stops(lm, prompts, max_new_tokens, batch_size)[0]


STOP_REASONS = ("eos", "max_new_tokens", "context")


def generate_with_stops(
    lm: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 64
) -> tuple[list[list[int]], list[str]]:
    """(token ids, stop reasons): per prompt, the new tokens and why generation ended.

    A reason is `eos` (a stop token), `max_new_tokens` (the budget ran out) or
    `context` (the prompt and the answer filled the model's positions, `lm.max_length`).
    """
    if not prompts:
        return [], []
    encoded = [encode_prompt(lm, p) for p in prompts]
    ctx = int(lm.max_length)
    keep = max(1, ctx - 1)
    encoded = [e[-keep:] if len(e) > keep else e for e in encoded]
    stops = stop_ids(lm)
    results: list[list[int]] = [[] for _ in prompts]
    reasons: list[str] = ["eos"] * len(prompts)

    def reason(i: int, out: list[int]) -> str:
        room = ctx - len(encoded[i])
        if len(out) >= min(max_new_tokens, room):
            # The budget ran out before a stop token: the smaller of the two limits decided it.
            return "context" if room < max_new_tokens else "max_new_tokens"
        return "eos"

    from factory import samplecache

    cache = samplecache.current()
    keys: list[str] = []
    todo = list(range(len(prompts)))
    if cache is not None:
        gen = {"max_new_tokens": int(max_new_tokens), "context": ctx, "stops": sorted(stops),
               "pad": int(lm.pad_token_id)}
        keys = [cache.key(e, gen) for e in encoded]
        todo = []
        for i, k in enumerate(keys):
            hit = cache.get(k)
            if hit is None:
                todo.append(i)
            else:
                results[i], reasons[i] = hit
    order = sorted(todo, key=lambda i: (len(encoded[i]), i))
    model = lm.model
    if order:
        bar = _progress(len(prompts), len(prompts) - len(order))
        try:
            with _inference(model):
                for batch in _batches(order, batch_size):
                    seqs = [encoded[i] for i in batch]
                    for i, out in zip(batch, _generate_batch(model, seqs, lm, max_new_tokens, ctx, stops)):
                        results[i], reasons[i] = out, reason(i, out)
                        if cache is not None:  # each finished batch is kept: a killed eval resumes after it
                            cache.put(keys[i], out, reasons[i])
                    if bar is not None:
                        bar.advance(bar.task_ids[0], len(batch))
        finally:
            if bar is not None:
                bar.stop()
    cut = reasons.count("context")
    if cut:
        _note(f"{cut} of {len(prompts)} generations stopped at the model's context ({ctx} positions) "
              f"before max_new_tokens {max_new_tokens}")
    return results, reasons


def _generate_batch(model: Any, seqs: list[list[int]], lm: Any, max_new: int, ctx: int, stops: set[int]):
    import torch

    ids, mask = _left_pad(seqs, int(lm.pad_token_id), lm.device)
    n = len(seqs)
    lengths = torch.tensor([len(s) for s in seqs], device=ids.device)
    # Each row's own limit: its new-token budget or what is left of the context.
    limit = torch.clamp(torch.minimum(torch.full_like(lengths, max_new), ctx - lengths), min=0)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, logits_to_keep=1)
    past = out.past_key_values
    can_shrink = hasattr(past, "batch_select_indices")
    stop_t = torch.tensor(sorted(stops), device=ids.device)
    rows = torch.arange(n, device=ids.device)  # original row of each live batch entry
    produced: list[list[int]] = [[] for _ in range(n)]
    step = 0
    next_pos = lengths.clone()
    done = limit <= 0
    while True:
        nxt = out.logits[:, -1, :].argmax(-1)
        is_stop = torch.isin(nxt, stop_t)
        # One conversion to Python lists per step: indexing tensors element by element costs
        # microseconds each, which at 64 rows a step is a fifth of a tiny model's forward pass.
        for row, tok, live in zip(rows.tolist(), nxt.tolist(), (~done & ~is_stop).tolist()):
            if live:
                produced[row].append(tok)
        step += 1
        done = done | is_stop | (step >= limit)
        if bool(done.all()):
            break
        # Drop finished rows once a quarter of the batch is idle: a few long answers then no
        # longer drag the whole batch through every step.
        if can_shrink and int(done.sum()) * 4 >= len(rows):
            keep = torch.nonzero(~done).flatten()
            past.batch_select_indices(keep)
            rows, nxt, mask, next_pos, limit, done = (t[keep] for t in (rows, nxt, mask, next_pos, limit, done))
        nxt = torch.where(done, torch.full_like(nxt, int(lm.pad_token_id)), nxt)
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=mask.device)], dim=1)
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=next_pos[:, None],
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        # Finished rows stay put: their position is one they already had, so a row that filled
        # the context is never fed a position past the model's table (learned positions).
        next_pos = torch.where(done, next_pos, next_pos + 1)
    return produced


def answer_logprobs(lm: Any, rows: list[dict[str, Any]], batch_size: int = 64) -> list[float]:
    """Per row, the mean negative log-likelihood of its answer tokens and EOS (lower is better)."""
    import torch

    if not rows:
        return []
    ctx = int(lm.max_length)
    examples = [encode_example(lm, r["prompt"], r["answer"], ctx) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (len(examples[i].ids), i))
    losses: list[float] = [float("nan")] * len(rows)
    model = lm.model
    with _inference(model):
        for batch in _batches(order, batch_size):
            exs = [examples[i] for i in batch]
            ids, mask = _left_pad([e.ids for e in exs], int(lm.pad_token_id), lm.device)
            width = ids.shape[1]
            lossmask = torch.zeros_like(ids, dtype=torch.bool)
            for j, e in enumerate(exs):
                lossmask[j, width - len(e.ids) :] = torch.tensor(e.loss_mask, dtype=torch.bool)
            position = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tgt = ids[:, 1:]
            nll = -logp.gather(-1, tgt[..., None])[..., 0]
            m = lossmask[:, 1:].float()
            per_row = (nll * m).sum(-1) / m.sum(-1).clamp(min=1)
            for j, i in enumerate(batch):
                losses[i] = float(per_row[j]) if exs[j].n_loss else float("nan")
    return losses
