"""The `hf` family on tiny random Llama and GPT-2 checkpoints saved by the test: resolve, build, train, load, evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from factory.errors import FactoryError  # noqa: E402
from factory.interfaces import TrainDefaultsContext  # noqa: E402
from factory.ml.generate import answer_logprobs, generate  # noqa: E402
from factory.ml.toymodels import save_toy_model  # noqa: E402
from factory.records import TrainSummary, read_record  # noqa: E402
from factory.stages import BuildContext  # noqa: E402
from factory_plugins.hf import HFFamily  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"id": f"r{i}", "prompt": f"copy: {w}", "answer": w}
        for i, w in enumerate(["ab", "cde", "fgh", "abc", "hg", "bad", "face", "dab", "cafe", "bead"] * 3)]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("FACTORY_PROGRESS", "0")
    torch.set_num_threads(1)


def _ctx(tmp: Path, stage: str, config: dict, inputs: dict | None = None) -> BuildContext:
    out = tmp / stage
    out.mkdir(parents=True)
    return BuildContext(recipe=None, stage=stage, kind=stage, key=stage, config=config, inputs=inputs or {},
                        out=out, root=tmp, registry=None, work=tmp / f"{stage}-work", log=lambda *_: None)


def _build_base(fam: HFFamily, tmp: Path, model: str, options: dict | None = None) -> Path:
    cfg = {"base": fam.resolve_base({"model": model, "options": options or {}}, tmp)}
    ctx = _ctx(tmp, "base", cfg)
    fam.build_base(ctx)
    return ctx.out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_train_and_evaluate_a_local_model(tmp_path, arch):
    save_toy_model(tmp_path / "models" / arch, arch, init_std=0.02)
    fam = HFFamily()
    base = _build_base(fam, tmp_path, f"models/{arch}")
    meta = json.loads((base / "base.json").read_text())
    assert meta["digest"] and meta["dtype"] == "float32" and "path" not in meta  # relative model: no absolute path
    assert list(base.iterdir()) == [base / "base.json"]  # no copy of the weights

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    params = fam.default_train_params(TrainDefaultsContext("sft-lora", len(ROWS), 5, "cpu", 1, {}))
    params.update(steps=8, eval_every=4, lr=5e-3, threads=1)
    ctx = _ctx(tmp_path, "train", params, {"base": base, "train": data, "heldout": data})
    fam.trainer("sft-lora")(ctx)
    summary = read_record(ctx.out / "train.json", TrainSummary)
    expected = {"llama": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
                "gpt2": ["c_attn", "c_fc", "c_proj"]}[arch]
    assert summary.lora_targets == expected

    lm = fam.load(base, ctx.out / "adapter", {"device": "cpu"})
    assert lm.info["chat_template"] is False and lm.format_prompt("x").endswith("### Response:\n")
    prompts = [r["prompt"] for r in ROWS[:10]]
    outs = generate(lm, prompts, max_new_tokens=8, batch_size=4)
    assert outs == generate(lm, prompts, max_new_tokens=8, batch_size=1)
    losses = answer_logprobs(lm, ROWS[:10], batch_size=4)
    base_lm = fam.load(base, None, {"device": "cpu"})
    base_losses = answer_logprobs(base_lm, ROWS[:10], batch_size=4)
    assert sum(losses) < sum(base_losses), "the adapter did not lower the answer loss"


def test_chat_template_is_used_when_present(tmp_path):
    template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    save_toy_model(tmp_path / "m", "llama", chat_template=template)
    fam = HFFamily()
    base = _build_base(fam, tmp_path, str(tmp_path / "m"), {"system_prompt": "be brief"})
    lm = fam.load(base, None, {"device": "cpu"})
    assert lm.format_prompt("hi") == "<|system|>be brief\n<|user|>hi\n<|assistant|>"
    assert lm.info["add_bos"] is False
    plain = fam.load(_build_base(HFFamily(), tmp_path / "p", str(tmp_path / "m"), {"chat_template": False}),
                     None, {"device": "cpu"})
    assert plain.format_prompt("hi") == "### Instruction:\nhi\n\n### Response:\n"


def test_changed_weights_are_refused(tmp_path):
    save_toy_model(tmp_path / "m", "gpt2")
    fam = HFFamily()
    base = _build_base(fam, tmp_path, "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["n_layer"] = 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FactoryError, match="changed since the base was built"):
        fam.load(base, None, {"device": "cpu"})


def test_options_and_paths_are_checked(tmp_path):
    fam = HFFamily()
    with pytest.raises(FactoryError, match="not a transformers model directory"):
        fam.resolve_base({"model": "nowhere"}, tmp_path)
    save_toy_model(tmp_path / "m", "gpt2")
    with pytest.raises(FactoryError, match=r"base\.options\.dtyp: unknown option"):
        fam.resolve_base({"model": "m", "options": {"dtyp": "float32"}}, tmp_path)
    with pytest.raises(FactoryError, match="train.method"):
        fam.trainer("dpo")
    spec = fam.resolve_base({"model": "m", "options": {}}, tmp_path)
    assert spec["trust_remote_code"] is False
    assert spec["device"] in ("cpu", "cuda") and spec["dtype"] in ("float32", "bfloat16")
    moved = fam.resolve_base({"model": "m", "options": {"trust_remote_code": True}}, tmp_path)
    assert moved["digest"] == spec["digest"] and moved["trust_remote_code"] is True


def test_import_and_resolve_do_not_import_torch(tmp_path):
    save_toy_model(tmp_path / "m", "gpt2")
    code = (
        "import sys; from pathlib import Path; from factory_plugins.hf import HFFamily; "
        f"HFFamily().resolve_base({{'model': 'm'}}, Path({str(tmp_path)!r})); "
        "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_registered_through_the_hook():
    from factory import plugins

    regs = plugins.load(only=["factory_plugins.hf"])
    assert isinstance(regs.families.get("hf"), HFFamily)


def test_training_lengths_come_from_the_models_positions(tmp_path):
    # A 1024-token default on a 64-position GPT-2 fed positions past its table when a held-out
    # row was longer than the model's context (IndexError in the first evaluation).
    save_toy_model(tmp_path / "models" / "g", "gpt2", positions=64, init_std=0.02)
    fam = HFFamily()
    base = _build_base(fam, tmp_path, "models/g")
    params = fam.default_train_params(TrainDefaultsContext("sft-lora", len(ROWS), 5, "cpu", 1, {}))
    assert "max_len" not in params
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    held = tmp_path / "heldout.jsonl"
    held.write_text("".join(json.dumps({**r, "prompt": r["prompt"] + " x" * 40}) + "\n" for r in ROWS[:4]))
    for max_len in (None, 1024):  # the family's default, and an explicit length past the positions
        params.update(steps=2, eval_every=1, threads=1, max_len=max_len)
        ctx = _ctx(tmp_path / str(max_len), "train", params, {"base": base, "train": data, "heldout": held})
        fam.trainer("sft-lora")(ctx)
        summary = read_record(ctx.out / "train.json", TrainSummary)
        assert summary.steps == 2 and summary.precheck["max_len"] == 64
    # A preference step on top, asked for more tokens than the model has positions: cut to them.
    dpo = fam.default_train_params(TrainDefaultsContext("dpo-lora", len(ROWS), 5, "cpu", 1, {}))
    assert "max_len" not in dpo
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({**r, "prompt": r["prompt"] + " x" * (40 if i % 2 else 0),
                                         "rejected": r["answer"] + "x"}) + "\n" for i, r in enumerate(ROWS)))
    dpo.update(steps=2, threads=1, batch_size=4, max_len=1024)
    logs: list[str] = []
    dctx = _ctx(tmp_path / "dpo", "train-dpo", dpo, {"base": base, "train": pairs, "init": ctx.out})
    dctx.log = logs.append
    fam.trainer("dpo-lora")(dctx)
    assert any("cut at 64 tokens" in m for m in logs), logs


def test_dpo_lora_on_top_of_an_sft_step_with_the_hf_family(tmp_path):
    """dpo-lora through the hf family: continues the SFT step's adapter and prefers chosen over rejected."""
    save_toy_model(tmp_path / "models" / "gpt2", "gpt2", init_std=0.02)
    fam = HFFamily()
    base = _build_base(fam, tmp_path, "models/gpt2")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    sft = fam.default_train_params(TrainDefaultsContext("sft-lora", len(ROWS), 5, "cpu", 1, {}))
    sft.update(steps=8, lr=5e-3, threads=1)
    sctx = _ctx(tmp_path, "train-sft", sft, {"base": base, "train": data, "heldout": data})
    fam.trainer("sft-lora")(sctx)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({**r, "rejected": r["answer"][::-1] + "x"}) + "\n" for r in ROWS))
    dpo = fam.default_train_params(TrainDefaultsContext("dpo-lora", len(ROWS), 5, "cpu", 1, {}))
    assert dpo["beta"] > 0 and "lora" not in dpo  # the adapter's shape is the first step's
    assert "max_len" not in dpo  # lengths come from the model's positions
    dpo.update(steps=10, lr=5e-3, threads=1, batch_size=8)
    dctx = _ctx(tmp_path, "train-dpo", dpo, {"base": base, "train": pairs, "init": sctx.out})
    fam.trainer("dpo-lora")(dctx)
    log = [json.loads(x) for x in (dctx.out / "train.log").read_text().splitlines()]
    assert len(log) == 10 and log[-1]["reward_margin"] > 0
    summary = read_record(dctx.out / "train.json", TrainSummary)
    assert summary.method == "dpo-lora"
    assert (dctx.out / "adapter" / "adapter_model.safetensors").read_bytes() != \
        (sctx.out / "adapter" / "adapter_model.safetensors").read_bytes()
    lm = fam.load(base, dctx.out / "adapter", {"device": "cpu"})
    assert generate(lm, [r["prompt"] for r in ROWS[:4]], max_new_tokens=4, batch_size=2)


def test_every_suite_runs_on_a_model_with_few_positions_and_says_where_it_stopped(tmp_path, monkeypatch):
    # The defect as a user met it: a GPT-2 with few learned positions and max_new_tokens past them made
    # three of the four suites fail (IndexError) at batch sizes above one. Now every suite runs, the
    # samples are the same at every batch size, and the record says which generations the context cut.
    from types import SimpleNamespace

    from factory.evaluate import build_eval
    from factory.plugins import Registry
    from factory.records import EvalRecord
    from factory_plugins import evals

    monkeypatch.setenv("FACTORY_SAMPLE_CACHE", "0")  # each batch size generates for itself
    save_toy_model(tmp_path / "models" / "g", "gpt2", positions=32, init_std=0.3)
    fam = HFFamily()
    base = _build_base(fam, tmp_path, "models/g")
    reg = SimpleNamespace(families=Registry("family"), suites=Registry("suite"))
    reg.families.register(fam)
    evals.register_eval_suites(reg.suites.register)
    rows = tmp_path / "heldout.jsonl"
    rows.write_text("".join(json.dumps({**r, "prompt": r["prompt"] + " x" * (i % 12)}) + "\n"
                            for i, r in enumerate(ROWS[:8])))
    samples = {}
    for bs in (1, 8):
        out = tmp_path / f"out{bs}"
        out.mkdir()
        ctx = SimpleNamespace(
            stage="eval-baseline", out=out, root=tmp_path, log=lambda m: None, registry=reg,
            config={"role": "baseline", "family": "hf", "suites": ["json-action", "breadth", "perplexity", "risk-probes"],
                    "settings": {"batch_size": bs, "max_new_tokens": 300}, "load": {"device": "cpu"}},
            inputs={"base": base, "heldout": rows, "breadth": rows}, input_digests={"base": "B" * 32},
        )
        build_eval(ctx)
        rec = read_record(out / "eval-baseline.json", EvalRecord)
        assert all(s.status == "ok" for s in rec.suites), [(s.suite, s.error) for s in rec.suites]
        gen = {s.suite: s for s in rec.suites}
        for name in ("json-action", "breadth", "risk-probes"):
            assert any("stopped at the model's context (32 positions) before max_new_tokens 300" in n
                       for n in gen[name].notes or []), (name, gen[name].notes)
        samples[bs] = {s.suite: (out / s.samples.path).read_text() for s in rec.suites}
    assert samples[1] == samples[8]
