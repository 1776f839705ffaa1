"""The dpo-lora trainer: its loss equals TRL's DPOTrainer on the same model and batch, it trains on top of
an earlier step's adapter, computes reference log-probs once per row, and is deterministic."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from factory.ml import dpo  # noqa: E402
from factory.ml.sft import train_sft_lora  # noqa: E402
from factory.ml.toymodels import load_toy, save_toy_model  # noqa: E402
from factory.stages import BuildContext  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("FACTORY_PROGRESS", "0")
    torch.set_num_threads(1)


def _rows(n, seed):
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        w = "".join(rnd.choice("abcdefgh") for _ in range(rnd.randint(3, 6)))
        out.append({"id": f"r{i}", "prompt": f"copy: {w}", "answer": w, "rejected": w[::-1] + "x"})
    return out


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo")
    torch.set_num_threads(1)
    base = save_toy_model(d / "base", "llama", init_std=0.02)
    rows = _rows(48, 1)
    files = {"base": base, "train": _write(d / "train.jsonl", rows), "heldout": _write(d / "heldout.jsonl", _rows(8, 2))}
    # the step DPO starts from: a short SFT run on the chosen answers
    out = d / "sft" / "out"
    out.mkdir(parents=True)
    ctx = BuildContext(recipe=None, stage="train-sft", kind="train", key="sft",
                       config=dict(steps=20, lr=5e-3, batch_size=8, threads=1, checkpoint_every=10),
                       inputs={"train": files["train"], "heldout": files["heldout"]}, out=out, root=d,
                       registry=None, work=d / "sft" / "work", log=lambda *_: None)
    train_sft_lora(ctx, load_toy(base))
    files["init"] = out
    return files


def _load(data, trainable=True):
    from peft import PeftModel

    lm = load_toy(data["base"])
    lm.model = PeftModel.from_pretrained(lm.model, str(data["init"] / "adapter"), is_trainable=trainable)
    return lm


def _dpo(data, tmp: Path, name: str, **cfg):
    out = tmp / name / "out"
    out.mkdir(parents=True)
    ctx = BuildContext(recipe=None, stage="train-dpo", kind="train", key=name,
                       config={"steps": 12, "lr": 5e-3, "batch_size": 8, "beta": 0.5, "threads": 1,
                               "checkpoint_every": 6, **cfg},
                       inputs={"train": data["train"], "init": data["init"], "base": data["base"]}, out=out,
                       root=tmp, registry=None, work=tmp / name / "work", log=lambda *_: None)
    dpo.train_dpo_lora(ctx, _load(data))
    return out, tmp / name / "work"


def test_loss_equals_trls_dpo_trainer_on_the_same_model_and_batch(data, tmp_path):
    """Tolerance: 1e-5 absolute on the mean sigmoid loss (both sum answer-token log-probs in fp32)."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    lm = load_toy(data["base"])
    policy = lm.model
    ref = copy.deepcopy(policy).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from its reference, so the loss is not log 2
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    rows = [{"prompt": lm.format_prompt(r["prompt"]), "chosen": r["answer"], "rejected": r["rejected"]}
            for r in _rows(6, 3)]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=6, beta=0.1, report_to=[],
                     use_cpu=True, precompute_ref_log_probs=False, max_length=None)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=lm.tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    policy.eval()
    trl_loss = float(trainer.compute_loss(trainer.model, batch))

    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = ids.masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        pc, pr = dpo.sequence_logps(policy, ids, mask, labels).chunk(2)
        rc, rr = dpo.sequence_logps(ref, ids, mask, labels).chunk(2)
    ours = float(dpo.dpo_loss(pc, pr, rc, rr, 0.1)[0].mean())
    assert abs(ours - trl_loss) < 1e-5, (ours, trl_loss)
    assert abs(ours - 0.6931) > 1e-3, "the policy must differ from its reference for the check to mean anything"


def test_dpo_on_top_of_a_step_prefers_chosen_answers_and_is_deterministic(data, tmp_path, monkeypatch):
    calls = {"ref": 0}
    real = dpo.sequence_logps

    def counting(model, *a):
        if not torch.is_grad_enabled():
            calls["ref"] += 1
        return real(model, *a)

    monkeypatch.setattr(dpo, "sequence_logps", counting)
    out1, work1 = _dpo(data, tmp_path, "a")
    # reference log-probs: one no-grad pass per side per micro-batch of the 48 rows, never again
    assert calls["ref"] == 2 * 6
    from safetensors.torch import load_file

    ref = load_file(str(work1 / "reference_logps.safetensors"))
    assert ref["chosen"].shape == (48,) and ref["rejected"].shape == (48,)
    log = [json.loads(x) for x in (out1 / "train.log").read_text().splitlines()]
    assert log[-1]["reward_accuracy"] > log[0]["reward_accuracy"] or log[-1]["reward_accuracy"] == 1.0
    assert log[-1]["loss"] < log[0]["loss"]
    out2, _ = _dpo(data, tmp_path, "b")
    a = (out1 / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == (out2 / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a != (data["init"] / "adapter" / "adapter_model.safetensors").read_bytes()
    summary = json.loads((out1 / "train.json").read_text())
    assert summary["method"] == "dpo-lora" and summary["precheck"]["pairs"] == 48


def test_dpo_needs_pairs(data, tmp_path):
    from factory.errors import FactoryError

    same = _write(tmp_path / "same.jsonl", [{"id": "a", "prompt": "p", "answer": "x", "rejected": "x"}])
    with pytest.raises(FactoryError, match="no preference pairs"):
        dpo.preference_rows(same)
    with pytest.raises(FactoryError, match="train.betta: unknown option"):
        dpo.parse_params({"betta": 1})
