"""Batched greedy generation: same text whatever the batch size, stops at EOS, scores answers."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from factory.interfaces import LoadedModel  # noqa: E402
from factory.ml.generate import answer_logprobs, generate, generate_ids  # noqa: E402
from factory.ml.text import encode_prompt  # noqa: E402
from factory.ml.toymodels import save_toy_model  # noqa: E402


def _load(path, max_length=256):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    return LoadedModel(
        model=model, tokenizer=tok, format_prompt=lambda p: f"### Prompt:\n{p}\n### Answer:\n",
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_length=max_length,
    )


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request, tmp_path_factory):
    return _load(save_toy_model(tmp_path_factory.mktemp(request.param), request.param))


PROMPTS = [f"add {i} {i * 7 % 13} then copy " + "xyz"[i % 3] * (i % 23) for i in range(70)]


def test_outputs_do_not_depend_on_batch_size(lm):
    one = generate(lm, PROMPTS, max_new_tokens=20, batch_size=1)
    assert len(set(one)) > 10, "toy model too degenerate to test anything"
    for bs in (64, 7):
        assert generate(lm, PROMPTS, max_new_tokens=20, batch_size=bs) == one


def test_generation_stops_at_eos_and_excludes_it(lm):
    # Force EOS as the only possible token: every row must come back empty.
    head = lm.model.get_output_embeddings()
    with torch.no_grad():
        saved = lm.model.lm_head.weight.clone() if hasattr(lm.model, "lm_head") else None
        bias = torch.full((head.weight.shape[0],), -1e4)
        bias[lm.eos_token_id] = 1e4
        hook = head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        assert generate(lm, PROMPTS[:5], max_new_tokens=10, batch_size=4) == [""] * 5
    finally:
        hook.remove()
    if saved is not None:
        assert torch.equal(saved, lm.model.lm_head.weight)


def test_length_limit_and_context_limit(lm):
    short = generate_ids(lm, PROMPTS[:8], max_new_tokens=3, batch_size=8)
    full = generate_ids(lm, PROMPTS[:8], max_new_tokens=12, batch_size=3)
    for s, f in zip(short, full):
        assert len(s) <= 3 and s == f[: len(s)]
    # A prompt longer than the context keeps its tail and still generates within the window.
    small = LoadedModel(**{**lm.__dict__, "max_length": 40})
    long_prompt = "copy " + "abc " * 60
    assert len(encode_prompt(small, long_prompt)) > 40
    out = generate_ids(small, [long_prompt, "add 1 2"], max_new_tokens=50, batch_size=2)
    assert len(out[0]) <= 1  # the kept tail fills 39 of 40 positions


def test_answer_logprobs_batch_invariant_and_sensible(lm):
    rows = [{"prompt": p, "answer": "copy " + p[:5]} for p in PROMPTS[:12]]
    a = answer_logprobs(lm, rows, batch_size=1)
    b = answer_logprobs(lm, rows, batch_size=5)
    assert all(math.isfinite(x) and x > 0 for x in a)
    assert a == pytest.approx(b, rel=1e-5, abs=1e-5)
    assert generate(lm, [], 5) == [] and answer_logprobs(lm, []) == []


def test_a_model_with_few_positions_stops_at_its_context_at_every_batch_size(tmp_path):
    # GPT-2 has learned positions: a row that had filled the context while others were still
    # generating was fed position 32 of a 32-position table (IndexError). EOS is ruled out here
    # so every row runs into the context, the longest prompts first.
    from factory.ml.generate import collect_notes, generate_with_stops

    small = _load(save_toy_model(tmp_path / "g", "gpt2", positions=32), max_length=32)
    head = small.model.get_output_embeddings()
    bias = torch.zeros(head.weight.shape[0])
    bias[small.eos_token_id] = -1e4
    hook = head.register_forward_hook(lambda m, i, o: o + bias)
    # One long prompt among short ones: it fills the context while the others still run.
    prompts = [f"p{i}" for i in range(7)] + ["p7 " + "ab" * 8]
    try:
        with collect_notes() as notes:
            one, why = generate_with_stops(small, prompts, max_new_tokens=300, batch_size=1)
        for bs in (3, 8, 64):
            assert generate_with_stops(small, prompts, max_new_tokens=300, batch_size=bs) == (one, why)
    finally:
        hook.remove()
    for p, ids in zip(prompts, one):
        assert len(encode_prompt(small, p)) + len(ids) == 32
    assert why == ["context"] * 8
    assert notes == ["8 of 8 generations stopped at the model's context (32 positions) before max_new_tokens 300"]
    # Within the budget a row reports the budget, and the tokens are the same as without a limit.
    short, why = generate_with_stops(small, prompts[:2], max_new_tokens=2, batch_size=2)
    assert why[0] in ("eos", "max_new_tokens") and all(len(s) <= 2 for s in short)
