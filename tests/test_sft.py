"""The SFT-LoRA trainer: loss masks, the pre-check, replay, determinism, resume after kill -9, outputs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from factory.errors import FactoryError  # noqa: E402
from factory.interfaces import LoadedModel  # noqa: E402
from factory.ml.sft import Schedule, parse_params, train_sft_lora  # noqa: E402
from factory.ml.text import Example, encode_examples  # noqa: E402
from factory.ml.toymodels import load_toy, save_toy_model  # noqa: E402
from factory.records import TrainSummary, read_jsonl, read_record  # noqa: E402
from factory.stages import BuildContext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _rows(n: int, seed: int, kind: str = "copy") -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        w = "".join(rnd.choice("abcdefgh") for _ in range(rnd.randint(2, 6)))
        out.append({"id": f"{kind}-{seed}-{i}", "prompt": f"{kind}: {w}", "answer": w if kind == "copy" else w[::-1]})
    return out


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft")
    base = save_toy_model(d / "base", "llama", init_std=0.02)
    return {
        "base": base,
        "train": _write(d / "train.jsonl", _rows(120, 1)),
        "heldout": _write(d / "heldout.jsonl", _rows(20, 2)),
        "replay": _write(d / "replay.jsonl", _rows(60, 3, "reverse")),
    }


CFG = dict(steps=24, lr=5e-3, batch_size=8, replay=0.25, eval_every=8, checkpoint_every=6, threads=1)


def _ctx(data, tmp: Path, name: str, **cfg) -> BuildContext:
    out = tmp / name / "out"
    out.mkdir(parents=True)
    return BuildContext(
        recipe=None, stage="train", kind="train", key=name, config={**CFG, **cfg}, inputs=dict(data),
        out=out, root=tmp, registry=None, work=tmp / name / "work", log=lambda *_: None,
    )


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("FACTORY_PROGRESS", "0")
    torch.set_num_threads(1)


def test_loss_only_on_answer_and_eos(data):
    lm = load_toy(data["base"])
    (ex,) = encode_examples(lm, [{"prompt": "copy: abc", "answer": "abc"}], 64)
    trained = [t for t, m in zip(ex.ids, ex.loss_mask) if m]
    assert trained[-1] == lm.eos_token_id
    assert lm.tokenizer.decode(trained[:-1]) == "abc"
    assert not any(ex.loss_mask[: len(ex.ids) - len(trained)])


def _render_factory(lm, mode):
    plain = LoadedModel(**{**lm.__dict__, "info": {}})

    def render(prompt, answer, max_len):
        (ex,) = encode_examples(plain, [{"prompt": prompt, "answer": answer}], max_len)
        if mode == "mask-all":
            return Example(ids=ex.ids, loss_mask=[False] * len(ex.ids))
        return Example(ids=ex.ids[:-1], loss_mask=ex.loss_mask[:-1])  # drops EOS
    return render


@pytest.mark.parametrize("mode,message", [("mask-all", "no loss-carrying tokens"), ("drop-eos", "EOS")])
def test_precheck_catches_bad_templates(data, tmp_path, mode, message):
    lm = load_toy(data["base"])
    lm.info["render"] = _render_factory(lm, mode)
    ctx = _ctx(data, tmp_path, mode)
    with pytest.raises(FactoryError, match=message) as e:
        train_sft_lora(ctx, lm)
    assert "\n" not in str(e.value) and "pre-check failed" in str(e.value)
    assert not (ctx.out / "adapter").exists()


def test_precheck_catches_truncated_answers(data, tmp_path):
    with pytest.raises(FactoryError, match="cut at max_len 10"):
        train_sft_lora(_ctx(data, tmp_path, "cut", max_len=10), load_toy(data["base"]))


def test_unknown_option_names_the_field():
    with pytest.raises(FactoryError, match=r"train\.lora\.rank: unknown option"):
        parse_params({"lora": {"rank": 8}})
    with pytest.raises(FactoryError, match=r"train\.stepz: unknown option"):
        parse_params({"stepz": 8})
    assert parse_params({"lora": {"targets": ["q_proj"]}}).lora.target_modules == ["q_proj"]


def test_replay_fraction_is_mixed_into_every_batch():
    s = Schedule(n_train=100, n_replay=40, batch_size=16, replay=0.25, seed=0)
    batches = [s.batch(i) for i in range(50)]
    assert all(len(b) == 16 for b in batches)
    assert all(sum(src == "replay" for src, _ in b) == 4 for b in batches)
    # every training row is seen once per epoch before any is repeated
    seen = [i for b in batches for src, i in b if src == "train"][:100]
    assert sorted(seen) == list(range(100))
    odd = Schedule(n_train=100, n_replay=40, batch_size=10, replay=0.15, seed=0)
    assert sum(src == "replay" for st in range(100) for src, _ in odd.batch(st)) == 150
    assert Schedule(10, 5, 4, 0.5, 1).batch(7) == Schedule(10, 5, 4, 0.5, 1).batch(7)  # pure function of step


def test_replay_without_breadth_rows_fails(data, tmp_path):
    d = {**data, "replay": _write(tmp_path / "empty.jsonl", [])}
    with pytest.raises(FactoryError, match="replay"):
        train_sft_lora(_ctx(d, tmp_path, "norep"), load_toy(data["base"]))


def test_outputs_are_deterministic_and_loadable(data, tmp_path):
    from peft import PeftModel

    runs = []
    for name in ("a", "b"):
        ctx = _ctx(data, tmp_path, name)
        lm = load_toy(data["base"])
        train_sft_lora(ctx, lm)
        runs.append((ctx, lm))
    (a, lm_a), (b, _) = runs
    for f in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json"):
        assert (a.out / f).read_bytes() == (b.out / f).read_bytes()
    summary = read_record(a.out / "train.json", TrainSummary)
    assert summary.steps == 24 and summary.precheck["train"]["no_eos_rows"] == 0
    assert summary.precheck["replay"]["rows"] == 60 and summary.best_heldout_loss is not None
    lines = read_jsonl(a.out / "train.log")
    assert [ln.step for ln in lines] == list(range(25))
    assert lines[-1].loss < lines[1].loss, "training did not lower the loss"
    assert lines[8].heldout_loss is not None and lines[7].heldout_loss is None
    # the adapter reloads with plain peft and reproduces the trained model's logits exactly
    fresh = load_toy(data["base"])
    reloaded = PeftModel.from_pretrained(fresh.model, str(a.out / "adapter")).eval()
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    lm_a.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, lm_a.model(input_ids=ids).logits)


def test_packed_batches_give_the_padded_losses_and_train_deterministically(data, tmp_path):
    from factory.ml.sft import collate, packed_nll_sum, token_nll_sum

    lm = load_toy(data["base"])
    exs = encode_examples(lm, _rows(12, 4) + _rows(5, 5, "reverse"), 64)
    with torch.no_grad():
        padded = token_nll_sum(lm.model, *collate(exs, lm.pad_token_id, "cpu"))
        packed = packed_nll_sum(lm.model, exs, lm.pad_token_id, 32, "cpu")
    assert torch.allclose(packed, padded, rtol=1e-5)
    outs = []
    for name in ("p1", "p2"):
        ctx = _ctx(data, tmp_path, name, packing=True, pack_width=32, micro_batch_size=5)
        train_sft_lora(ctx, load_toy(data["base"]))
        outs.append(ctx.out)
    assert (outs[0] / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (outs[1] / "adapter" / "adapter_model.safetensors").read_bytes()
    lines = read_jsonl(outs[0] / "train.log")
    assert lines[-1].loss < lines[1].loss, "packed training did not lower the loss"


RUNNER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from factory.ml.sft import train_sft_lora
    from factory.ml.toymodels import load_toy
    from factory.stages import BuildContext
    spec = json.loads(Path(sys.argv[1]).read_text())
    ctx = BuildContext(recipe=None, stage="train", kind="train", key="k", config=spec["config"],
                       inputs={k: Path(v) for k, v in spec["inputs"].items()}, out=Path(spec["out"]),
                       root=Path(spec["out"]), registry=None, work=Path(spec["work"]), log=lambda *_: None)
    train_sft_lora(ctx, load_toy(ctx.inputs["base"]))
    Path(spec["work"]).with_name("facts.json").write_text(json.dumps(ctx.facts))
""")


def test_resume_after_kill_reaches_the_same_adapter(data, tmp_path):
    cfg = {**CFG, "steps": 60, "checkpoint_every": 5}
    ref = _ctx(data, tmp_path, "ref", **{k: v for k, v in cfg.items() if k not in CFG or CFG[k] != v})
    train_sft_lora(ref, load_toy(data["base"]))

    out, work = tmp_path / "killed" / "out", tmp_path / "killed" / "work"
    out.mkdir(parents=True)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"config": cfg, "inputs": {k: str(v) for k, v in data.items()},
                                "out": str(out), "work": str(work)}))
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FACTORY_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(spec)], env=env)
    last = work / "checkpoints" / "last.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if last.exists() and json.loads(last.read_text())["step"] >= 15:
            break
        assert proc.poll() is None, "runner ended before it could be killed"
        time.sleep(0.02)
    assert proc.poll() is None, "runner ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(last.read_text())["step"]
    assert killed_at < 60 and not (out / "train.json").exists()

    done = subprocess.run([sys.executable, str(script), str(spec)], env=env)
    assert done.returncode == 0
    facts = json.loads((work.with_name("facts.json")).read_text())  # a fact of this execution, not an output
    assert facts["resumed_from_step"] is not None and facts["resumed_from_step"] >= killed_at
    assert (out / "adapter/adapter_model.safetensors").read_bytes() == (
        ref.out / "adapter/adapter_model.safetensors").read_bytes()
    # the resumed run's outputs are byte-identical to the uninterrupted one's: content only
    assert (out / "train.json").read_bytes() == (ref.out / "train.json").read_bytes()
    assert (out / "train.log").read_bytes() == (ref.out / "train.log").read_bytes()
    steps = [ln.step for ln in read_jsonl(out / "train.log")]
    assert steps == list(range(61))  # no step lost or logged twice


def test_checkpoints_hold_no_pickle(data, tmp_path):
    ctx = _ctx(data, tmp_path, "ck")
    train_sft_lora(ctx, load_toy(data["base"]))
    files = [p for p in (ctx.work / "checkpoints").rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".safetensors", ".json") for p in files)
    assert (ctx.work / "checkpoints" / "best.json").exists() and (ctx.work / "checkpoints" / "last.json").exists()


def test_lora_targets_per_architecture(tmp_path):
    from factory.ml.lora import default_targets

    llama = load_toy(save_toy_model(tmp_path / "l", "llama")).model
    gpt2 = load_toy(save_toy_model(tmp_path / "g", "gpt2")).model
    assert default_targets(llama) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert default_targets(gpt2) == ["c_attn", "c_proj", "c_fc"]

    class Other(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4))
            self.head = torch.nn.Linear(4, 10)

        def get_output_embeddings(self):
            return self.head

    assert default_targets(Other()) == ["body.0", "body.2"]


def test_threads_follow_free_cores(monkeypatch):
    from factory.ml.threads import allowed_cores, free_cores

    assert 1 <= free_cores(0.05) <= allowed_cores()
    monkeypatch.setenv("FACTORY_THREADS", "3")
    assert free_cores() == 3


@pytest.mark.slow
def test_two_processes_under_torchrun(data, tmp_path):
    ctx = _ctx(data, tmp_path, "ddp", processes=2, steps=6, checkpoint_every=3)
    ctx.extra["loader"] = "factory.ml.toymodels:load_toy"
    train_sft_lora(ctx, None)
    summary = read_record(ctx.out / "train.json", TrainSummary)
    assert summary.processes == 2 and summary.steps == 6
    # Two processes split each batch and average the gradient over all tokens: the same
    # optimisation as one process, up to floating-point summation order.
    from safetensors.torch import load_file

    one = _ctx(data, tmp_path, "one", steps=6, checkpoint_every=3)
    train_sft_lora(one, load_toy(data["base"]))
    a = load_file(str(ctx.out / "adapter/adapter_model.safetensors"))
    b = load_file(str(one.out / "adapter/adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_the_loss_scores_only_labelled_positions_and_matches_the_full_cross_entropy(tmp_path):
    from factory.ml.sft import collate, token_nll_sum

    torch.set_num_threads(1)
    lm = load_toy(save_toy_model(tmp_path / "m", "llama", init_std=0.02))
    exs = encode_examples(lm, _rows(6, 0), lm.max_length) + [Example(ids=[1, 5, 6], loss_mask=[False] * 3)]
    ids, mask, labels = collate(exs, lm.pad_token_id, "cpu")

    def grads(loss):
        lm.model.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() for p in lm.model.parameters() if p.grad is not None]

    ours = token_nll_sum(lm.model, ids, mask, labels)
    g_ours = grads(ours)
    logits = lm.model(input_ids=ids, attention_mask=mask).logits
    full = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                             ignore_index=-100, reduction="sum")
    g_full = grads(full)
    assert sum(e.n_loss for e in exs) > 0 and abs(float(ours) - float(full)) <= 1e-4 * abs(float(full))
    assert len(g_ours) == len(g_full) and all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g_ours, g_full))
    # a batch with no loss-carrying token sums to zero, as before
    none = labels.clone().fill_(-100)
    assert float(token_nll_sum(lm.model, ids, mask, none)) == 0.0
