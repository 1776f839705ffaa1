"""The per-sample generation cache: hits only for the same model and inputs, resume after a kill, re-scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from factory import samplecache  # noqa: E402
from factory.interfaces import LoadedModel  # noqa: E402
from factory.ml import generate as gen  # noqa: E402
from factory.ml.toymodels import save_toy_model  # noqa: E402

PROMPTS = [f"add {i} {i * 7 % 13} then copy " + "xyz"[i % 3] * (i % 5) for i in range(8)]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    path = save_toy_model(tmp_path_factory.mktemp("toy"), "llama")
    tok = AutoTokenizer.from_pretrained(path)
    return LoadedModel(model=AutoModelForCausalLM.from_pretrained(path), tokenizer=tok,
                       format_prompt=lambda p: f"### Prompt:\n{p}\n### Answer:\n",
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


@pytest.fixture
def counted(monkeypatch):
    """Rows that reach the model, per call of the batch generator."""
    calls: list[int] = []
    real = gen._generate_batch

    def counting(model, seqs, *a, **k):
        calls.append(len(seqs))
        return real(model, seqs, *a, **k)

    monkeypatch.setattr(gen, "_generate_batch", counting)
    return calls


def _cache(tmp_path: Path, lm, adapter: str | None = None) -> samplecache.SampleCache:
    return samplecache.for_model(tmp_path, "B" * 32, adapter, "toy", lm)


def test_a_second_pass_generates_nothing_and_returns_the_same_tokens(tmp_path, lm, counted):
    plain = gen.generate_with_stops(lm, PROMPTS, 12, batch_size=3)
    counted.clear()
    with samplecache.using(_cache(tmp_path, lm)) as cache:
        assert gen.generate_with_stops(lm, PROMPTS, 12, batch_size=3) == plain
    assert sum(counted) == 8 and cache.misses == 8
    counted.clear()
    with samplecache.using(_cache(tmp_path, lm)) as cache:
        assert gen.generate_with_stops(lm, PROMPTS, 12, batch_size=5) == plain  # batch size is not in the key
    assert counted == [] and cache.hits == 8
    entries = list((tmp_path / "cache" / "samples").rglob("*.json"))
    assert len(entries) == 8 and not list((tmp_path / "cache" / "samples").rglob(".tmp-*"))


def test_anything_that_changes_an_output_is_a_different_key(tmp_path, lm, counted):
    with samplecache.using(_cache(tmp_path, lm)):
        gen.generate_with_stops(lm, PROMPTS, 12, batch_size=8)
    counted.clear()
    # A different adapter never gets the base's answers.
    with samplecache.using(_cache(tmp_path, lm, adapter="A" * 32)) as cache:
        gen.generate_with_stops(lm, PROMPTS, 12, batch_size=8)
    assert cache.hits == 0 and sum(counted) == 8
    # Nor does another budget, another template, or another context limit.
    for changed, max_new in ((lm, 13), (LoadedModel(**{**lm.__dict__, "format_prompt": lambda p: f"Q: {p}\nA: "}), 12),
                             (LoadedModel(**{**lm.__dict__, "max_length": 30}), 12)):
        with samplecache.using(_cache(tmp_path, changed)) as cache:
            gen.generate_with_stops(changed, PROMPTS, max_new, batch_size=8)
        assert cache.hits == 0, (changed.max_length, max_new)
    # A torn or foreign entry is a miss that is generated again, not an error.
    with samplecache.using(_cache(tmp_path, lm)) as cache:
        victim = cache._path(cache.key(gen.encode_prompt(lm, PROMPTS[0]), {
            "max_new_tokens": 12, "context": 256, "stops": sorted(gen.stop_ids(lm)), "pad": lm.pad_token_id}))
        assert victim.exists()
        victim.write_text("{")
        gen.generate_with_stops(lm, PROMPTS, 12, batch_size=8)
    assert cache.hits == 7 and cache.misses == 1 and json.loads(victim.read_text())["stop"]


def test_a_killed_generation_resumes_after_its_last_finished_batch(tmp_path, lm, monkeypatch):
    full = gen.generate_with_stops(lm, PROMPTS, 12, batch_size=2)
    real = gen._generate_batch
    calls: list[int] = []

    def dies_in_the_third_batch(model, seqs, *a, **k):
        calls.append(len(seqs))
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill would, mid-batch
        return real(model, seqs, *a, **k)

    monkeypatch.setattr(gen, "_generate_batch", dies_in_the_third_batch)
    with pytest.raises(KeyboardInterrupt), samplecache.using(_cache(tmp_path, lm)):
        gen.generate_with_stops(lm, PROMPTS, 12, batch_size=2)
    calls.clear()
    monkeypatch.setattr(gen, "_generate_batch", lambda model, seqs, *a, **k: (calls.append(len(seqs)), real(model, seqs, *a, **k))[1])
    with samplecache.using(_cache(tmp_path, lm)) as cache:
        assert gen.generate_with_stops(lm, PROMPTS, 12, batch_size=2) == full
    assert cache.hits == 4 and sum(calls) == 4  # the unfinished batch and the one never started


def test_the_cache_can_be_turned_off(tmp_path, lm, monkeypatch, counted):
    monkeypatch.setenv("FACTORY_SAMPLE_CACHE", "0")
    with samplecache.using(_cache(tmp_path, lm)):
        assert samplecache.current() is None
        gen.generate_with_stops(lm, PROMPTS[:2], 4)
    assert not (tmp_path / "cache" / "samples").exists()


def test_generation_under_a_label_draws_a_progress_bar(tmp_path, lm, monkeypatch, capsys):
    monkeypatch.setenv("FACTORY_PROGRESS", "1")
    with gen.progress_label("support-bench"):
        gen.generate_with_stops(lm, PROMPTS, 4, batch_size=3)
    err = capsys.readouterr().err
    assert "eval support-bench" in err and "8/8" in err and "ETA" in err
    monkeypatch.setenv("FACTORY_PROGRESS", "0")
    with gen.progress_label("support-bench"):
        gen.generate_with_stops(lm, PROMPTS, 4, batch_size=3)
    assert capsys.readouterr().err == ""
