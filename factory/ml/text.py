"""How a row becomes token ids: one encoding shared by training, generation and scoring.

The prompt is rendered with the family's template (`LoadedModel.format_prompt`)
and tokenized on its own; the answer is tokenized on its own and followed by EOS.
Training, greedy decoding and answer scoring all see exactly these ids, so a
model is never trained on a token boundary it will not meet at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _add_bos(lm: Any) -> int | None:
    """The BOS id to put in front of a prompt, or None.

    A family may decide with `lm.info["add_bos"]`; by default a tokenizer's BOS is
    used when it is distinct from EOS (GPT-2 style tokenizers reuse EOS as BOS and
    were not trained with it in front).
    """
    tok = lm.tokenizer
    bos = getattr(tok, "bos_token_id", None)
    choice = lm.info.get("add_bos") if isinstance(lm.info, dict) else None
    if choice is False or bos is None:
        return None
    if choice is None and bos == lm.eos_token_id:
        return None
    return bos


def encode_prompt(lm: Any, prompt: str) -> list[int]:
    """Token ids of the rendered prompt (template applied, BOS where the tokenizer wants one)."""
    text = lm.format_prompt(prompt)
    ids = list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = _add_bos(lm)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def encode_answer(lm: Any, answer: str) -> list[int]:
    """Token ids of the answer followed by EOS (the EOS is trained like any answer token)."""
    return list(lm.tokenizer(answer, add_special_tokens=False)["input_ids"]) + [int(lm.eos_token_id)]


@dataclass
class Example:
    """One encoded example: token ids, which of them carry loss, and whether the row was cut."""

    ids: list[int]
    loss_mask: list[bool]
    truncated: bool = False

    @property
    def n_loss(self) -> int:
        return sum(self.loss_mask)

    def ends_with(self, token_ids: set[int]) -> bool:
        """Whether the last loss-carrying token is one of `token_ids` (EOS is trained)."""
        for tok, m in zip(reversed(self.ids), reversed(self.loss_mask)):
            if m:
                return tok in token_ids
        return False


def encode_example(lm: Any, prompt: str, answer: str, max_len: int) -> Example:
    """Encode a row for training or scoring, cut at `max_len` tokens (the cut is recorded, not hidden).

    A family may replace this rendering with `lm.info["render"](prompt, answer, max_len) -> Example`
    (a chat template that renders the assistant turn itself, say); the trainer's pre-check then
    verifies whatever that rendering produced.
    """
    render = lm.info.get("render") if isinstance(lm.info, dict) else None
    if render is not None:
        return render(prompt, answer, max_len)
    p = encode_prompt(lm, prompt)
    a = encode_answer(lm, answer)
    ids = (p + a)[:max_len]
    n_prompt = min(len(p), len(ids))
    mask = [False] * n_prompt + [True] * (len(ids) - n_prompt)
    return Example(ids=ids, loss_mask=mask, truncated=len(p) + len(a) > max_len)


def stop_ids(lm: Any) -> set[int]:
    """Token ids that end a generation: EOS plus any the family lists in `info["stop_token_ids"]`."""
    extra = lm.info.get("stop_token_ids", ()) if isinstance(lm.info, dict) else ()
    return {int(lm.eos_token_id), *(int(t) for t in extra)}


def encode_examples(lm: Any, rows: list[dict[str, Any]], max_len: int) -> list[Example]:
    """`encode_example` for many rows; one tokenizer call per side when the default rendering is used."""
    if not rows:
        return []
    if isinstance(lm.info, dict) and lm.info.get("render") is not None:
        return [encode_example(lm, r["prompt"], r["answer"], max_len) for r in rows]
    tok = lm.tokenizer
    prompts = tok([lm.format_prompt(r["prompt"]) for r in rows], add_special_tokens=False)["input_ids"]
    answers = tok([r["answer"] for r in rows], add_special_tokens=False)["input_ids"]
    bos, eos = _add_bos(lm), int(lm.eos_token_id)
    out = []
    for p, a in zip(prompts, answers):
        p = list(p)
        if bos is not None and (not p or p[0] != bos):
            p = [bos] + p
        a = list(a) + [eos]
        ids = (p + a)[:max_len]
        n_prompt = min(len(p), len(ids))
        out.append(Example(ids=ids, loss_mask=[False] * n_prompt + [True] * (len(ids) - n_prompt),
                           truncated=len(p) + len(a) > max_len))
    return out
