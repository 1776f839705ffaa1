"""The tiny model family: a base built from the breadth corpus, loadable and trainable like any checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import xxhash

from factory.errors import FactoryError
from factory.interfaces import TrainDefaultsContext
from factory_plugins.breadth import generate
from factory_plugins.tiny.family import LORA_TARGETS, TEMPLATE, TinyFamily, format_prompt

REPO = Path(__file__).resolve().parent.parent
SMALL = {"steps": 20, "batch_size": 8, "eval_rows": 8, "hidden_size": 64, "intermediate_size": 128}


def heldout(row, one_in: int = 10) -> bool:
    """A split by content, as the dataset stage makes it (a split by position would follow the skill cycle)."""
    return xxhash.xxh3_64_intdigest(row["id"].encode()) % one_in == 0


def write_corpus(d: Path, rows: int = 600) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    all_rows = list(generate(rows, seed=0))
    with open(d / "train.jsonl", "w") as tr, open(d / "heldout.jsonl", "w") as ho:
        for r in all_rows:
            (ho if heldout(r) else tr).write(json.dumps(r) + "\n")
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("breadth"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus):
    """The same small base built twice from the same corpus and options."""
    from factory_plugins.tiny.pretrain import build

    outs = []
    for name in ("a", "b"):
        out = tmp_path_factory.mktemp(name)
        build(corpus, out, SMALL, log=lambda s: None)
        outs.append(out)
    return outs


def test_importing_the_plugin_does_not_import_torch():
    code = (
        "import sys, factory_plugins.tiny, factory_plugins.breadth\n"
        "from factory_plugins.tiny import TinyFamily\n"
        "TinyFamily().resolve_base({'model': 'tiny-llama', 'options': {}}, None)\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'tokenizers') if m in sys.modules]\n"
        "print(heavy); sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_resolve_base_fills_defaults_and_keys_on_options():
    fam = TinyFamily()
    cfg = fam.resolve_base({"model": "tiny-llama", "options": {}}, REPO)
    assert cfg["options"]["hidden_size"] == 128 and cfg["options"]["layers"] == 2 and cfg["options"]["heads"] == 8
    assert cfg["options"]["max_positions"] == 256 and cfg["options"]["vocab_size"] == 512
    assert cfg["template"] == TEMPLATE
    other = fam.resolve_base({"model": "tiny-llama", "options": {"steps": 10}}, REPO)
    assert other != cfg and other["options"]["steps"] == 10


def test_profile_fills_the_unset_schedule_into_the_base_key():
    from factory_plugins.tiny.base import PROFILES

    fam = TinyFamily()
    fast = fam.resolve_base({"model": "tiny-llama", "options": {}}, REPO)["options"]
    classic = fam.resolve_base({"model": "tiny-llama", "options": {"profile": "classic"}}, REPO)["options"]
    assert fast["profile"] == "fast" and {k: fast[k] for k in PROFILES["fast"]} == PROFILES["fast"]
    assert classic["steps"] == 2600 and classic["lr"] == 3e-3 and classic["batch_size"] == 64
    assert fast["heads"] == 8 and classic["heads"] == 4  # the heads each schedule was measured with
    mixed = fam.resolve_base({"model": "tiny-llama", "options": {"profile": "classic", "steps": 99}}, REPO)["options"]
    assert mixed["steps"] == 99 and mixed["lr"] == 3e-3  # an explicit value wins over the profile's
    with pytest.raises(FactoryError, match="base.options.profile"):
        fam.resolve_base({"model": "tiny-llama", "options": {"profile": "turbo"}}, REPO)
    # The width must split into the profile's heads too, not only into heads a recipe names.
    with pytest.raises(FactoryError, match="hidden_size 36 is not divisible by heads 8"):
        fam.resolve_base({"model": "tiny-llama", "options": {"hidden_size": 36}}, REPO)
    assert fam.resolve_base({"model": "tiny-llama", "options": {"hidden_size": 36, "profile": "classic"}},
                            REPO)["options"]["heads"] == 4


def test_precision_is_resolved_into_the_base_key(monkeypatch):
    import factory_plugins.tiny.base as base

    fam = TinyFamily()
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(base, "native_bf16", lambda native=native: native)
        cfg = fam.resolve_base({"model": "tiny-llama", "options": {}}, REPO)
        assert cfg["options"]["precision"] == expected  # never "auto": the key names the arithmetic
    explicit = fam.resolve_base({"model": "tiny-llama", "options": {"precision": "bf16"}}, REPO)
    assert explicit["options"]["precision"] == "bf16" and explicit != cfg
    with pytest.raises(FactoryError, match="base.options.precision"):
        fam.resolve_base({"model": "tiny-llama", "options": {"precision": "fp8"}}, REPO)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ({"model": "tiny-llama", "options": {"stepz": 10}}, "base.options.stepz: unknown option"),
        ({"model": "tiny-llama", "options": {"lr": -1}}, "base.options.lr:"),
        ({"model": "tiny-llama", "options": {"hidden_size": 130}}, "base.options:"),
        ({"model": "huge-llama", "options": {}}, "base.model:"),
    ],
)
def test_bad_base_spec_is_a_one_line_error_naming_the_field(spec, needle):
    with pytest.raises(FactoryError) as e:
        TinyFamily().resolve_base(spec, REPO)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_training_method_lists_the_methods():
    with pytest.raises(FactoryError, match="sft-lora"):
        TinyFamily().trainer("dpo")


def test_default_train_params_are_accepted_by_the_trainer():
    from factory.ml.sft import parse_params

    ctx = TrainDefaultsContext(method="sft-lora", train_rows=1858, heldout_rows=502, device="cpu", processes=1, intent={})
    params = TinyFamily().default_train_params(ctx)
    # 7.3 passes over the task rows, half of each 32-row batch being replay: 7.3 * 1858 / 16 = 848
    assert params["steps"] == 850 and params["lr"] == 5e-3 and params["replay"] == 0.5
    assert params["packing"] is True and params["pack_width"] == 128
    assert params["precision"] in ("bf16", "fp32")
    parsed = parse_params(params)
    assert parsed.lora.r == 16 and parsed.lora.alpha == 32 and set(parsed.lora.target_modules) == set(LORA_TARGETS)
    # the recipe's replay share sets how many steps make the same passes: 7.3 * 1858 / (32 * 0.65) = 652
    flagship = TinyFamily().default_train_params(
        TrainDefaultsContext(method="sft-lora", train_rows=1858, heldout_rows=502, device="cpu", processes=1,
                             intent={"replay": 0.35})
    )
    assert flagship["steps"] == 650 and flagship["replay"] == 0.35
    big = TinyFamily().default_train_params(
        TrainDefaultsContext(method="sft-lora", train_rows=8000, heldout_rows=0, device="cpu", processes=1, intent={})
    )
    assert params["steps"] < big["steps"] <= 2000


def test_tokenizer_round_trips_rows_and_has_distinct_special_tokens(corpus):
    from factory.records import read_rows
    from factory_plugins.tiny.pretrain import train_tokenizer

    rows = read_rows(corpus / "train.jsonl")
    tok = train_tokenizer(rows, 512)
    assert len(tok) <= 512
    assert tok.eos_token_id != tok.pad_token_id
    texts = [format_prompt(r["prompt"]) + r["answer"] for r in read_rows(corpus / "heldout.jsonl")]
    texts += ['{"age":42,"city":"oslo"} 0123456789', "Unseen words: zebra, quartz!"]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == " " + text  # every text is read with a leading space
    # an answer tokenized on its own gets the same tokens as the same words inside a prompt
    prompt = tok(format_prompt("copy: ribek stretching"), add_special_tokens=False)["input_ids"]
    answer = tok("ribek stretching", add_special_tokens=False)["input_ids"]
    assert prompt[2 : 2 + len(answer)] == answer
    digits = tok("sort: 31 7", add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in digits][-4:] == ["3", "1", " ", "7"]  # digits stay single


def test_packed_batches_compute_the_same_loss_as_one_row_per_example(built):
    import torch
    import torch.nn.functional as F

    from factory.ml.text import encode_example
    from factory.ml.packing import collate_packed

    lm = TinyFamily().load(built[0], None, {})
    rows = list(generate(24, seed=5))
    examples = [encode_example(lm, r["prompt"], r["answer"], 256) for r in rows]
    batch = collate_packed(examples, lm.pad_token_id, width=64)
    assert batch["input_ids"].shape[0] < len(examples)  # several examples share a row
    with torch.no_grad():
        logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          position_ids=batch["position_ids"]).logits
        packed = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), reduction="sum")
        single = 0.0
        for e in examples:
            ids = torch.tensor([e.ids])
            labels = torch.where(torch.tensor(e.loss_mask), ids[0], -100)
            single += F.cross_entropy(lm.model(input_ids=ids).logits[0, :-1], labels[1:], reduction="sum")
    assert torch.allclose(packed, single, rtol=1e-5)


def test_build_is_deterministic(built):
    a, b = built
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_fp32_build_is_deterministic_and_recorded(tmp_path, corpus):
    from factory_plugins.tiny.pretrain import build

    infos = [build(corpus, tmp_path / name, {**SMALL, "precision": "fp32"}, log=lambda s: None) for name in "ab"]
    assert infos[0]["options"]["precision"] == "fp32"
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_build_writes_a_loadable_checkpoint_and_its_record(built):
    from factory.ml.generate import generate as greedy
    from factory.records import TrainLogLine

    out = built[0]
    info = json.loads((out / "base.json").read_text())
    assert info["family"] == "tiny" and info["model"] == "tiny-llama" and info["template"] == TEMPLATE
    assert info["pretrain"]["steps"] == 20 and "seconds" not in info and "seconds" not in info["pretrain"]
    assert info["heldout_breadth"]["n"] == 8 and 0 <= info["heldout_breadth"]["exact_match"] <= 1
    lines = [TrainLogLine.model_validate_json(l) for l in (out / "pretrain.log").read_text().splitlines()]
    assert lines[-1].step == 20
    lm = TinyFamily().load(out, None, {"device": "cpu"})
    assert not lm.model.training and lm.format_prompt("x") == format_prompt("x")
    assert lm.eos_token_id == lm.tokenizer.eos_token_id and lm.model.config.tie_word_embeddings
    (text,) = greedy(lm, ["copy: cat dog"], max_new_tokens=8)
    assert isinstance(text, str)


def test_missing_breadth_split_is_a_factory_error(tmp_path):
    from factory_plugins.tiny.pretrain import build

    with pytest.raises(FactoryError, match="train.jsonl"):
        build(tmp_path, tmp_path / "out", SMALL)


def test_registered_through_the_plugin_hook():
    from factory.plugins import load

    regs = load(only=["factory_plugins.tiny"])
    assert isinstance(regs.families.get("tiny"), TinyFamily)


@pytest.mark.slow
def test_default_base_learns_the_breadth_skills(tmp_path):
    """The default schedule on the default 20,000-row corpus.

    Measured with the fast profile (8 heads, 1,000 steps of 64 rows, bf16 products, two threads):
    71.8% held-out exact match overall; count 100%, weekday 96%, numeral 90%, sort 83% (of about 25
    rows each: one row is 4 points), copying made-up words 80%, reversing them 33%. On the flagship's
    corpus the same schedule gave 69.5%, copy 87.5%. The 4-head profile before it (1,600 steps)
    reached 70.5% there, copy 85%; the classic profile (2,600 steps) 84%, copy 95%: copying is the
    skill a shorter schedule gives up first.
    """
    from factory_plugins.tiny.pretrain import build

    corpus = tmp_path / "breadth"
    corpus.mkdir()
    rows = list(generate(20000, seed=0))
    with open(corpus / "train.jsonl", "w") as tr, open(corpus / "heldout.jsonl", "w") as ho:
        for r in rows:
            (ho if heldout(r, 20) else tr).write(json.dumps(r) + "\n")
    info = build(corpus, tmp_path / "base", {}, log=lambda s: None)
    check = info["heldout_breadth"]
    assert check["exact_match"] >= 0.6
    # 0.8: a skill's 25-odd rows move by 4 points a row, and another CPU kind's arithmetic moves them.
    assert all(check["per_skill"][s] >= 0.8 for s in ("count", "sort", "weekday", "numeral"))
    assert check["per_skill"]["copy"] >= 0.6
