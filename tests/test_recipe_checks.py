"""Bad recipes get one line naming the file and the field, from `factory check`, before anything builds.

These run the real first-party plugins (no torch is imported by a check) on a copy of the quick recipe.
"""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

QUICK = (REPO / "recipes" / "pace-planner-quick.yaml").read_text()


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks")
    (root / "recipes").mkdir()
    shutil.copytree(REPO / "recipes" / "pace-planner", root / "recipes" / "pace-planner")
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    return root


def check(root, text: str | bytes, data: bytes | None = None):
    recipe = root / "recipes" / "x.yaml"
    (recipe.write_bytes if isinstance(text, bytes) else recipe.write_text)(text)
    if data is not None:
        (root / "recipes" / "pace-planner" / "bad.jsonl").write_bytes(data)
    env = {k: v for k, v in os.environ.items() if k not in ("FACTORY_LOAD_PLUGINS", "FACTORY_ROOT")}
    env["CUDA_VISIBLE_DEVICES"] = ""  # cuda is absent, as on the machines the tests run on
    r = subprocess.run([sys.executable, "-m", "factory.cli", "check", str(recipe)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=120)
    return r.returncode, (r.stdout + r.stderr).strip()


def sub(old: str, new: str) -> str:
    assert old in QUICK, old
    return QUICK.replace(old, new, 1)


TRAIN = "train: {method: sft-lora, steps: 150, replay: 0.0}"
BAD_DATA = "path: pace-planner/traces.jsonl"

CASES = [
    ("max_char typo", sub("max_chars: 256", "max_char: 256"), None, "data.options.max_char: unknown option; known: max_chars"),
    ("contract typo", sub("contract: json-action", "contract: json-actoin"), None, "data.contract:"),
    ("lora typo", sub(TRAIN, "train: {method: sft-lora, steps: 150, options: {lora: {rr: 8}}}"), None,
     "train.options.lora.rr: unknown option; known: r, alpha, dropout, targets"),
    ("steps 10^12", sub(TRAIN, "train: {steps: 1000000000000}"), None, "train.steps: Input should be less than or equal to 1000000"),
    ("26 digits", sub(TRAIN, "train: {steps: 12345678901234567890123456}"), None, "train.steps:"),
    ("batch 10^9", sub(TRAIN, "train: {batch_size: 1000000000}"), None, "train.batch_size:"),
    ("new tokens 10^9", sub("extra: [perplexity, risk-probes]}", "extra: [perplexity, risk-probes], max_new_tokens: 1000000000}"),
     None, "evals.max_new_tokens:"),
    ("infinite lr", sub(TRAIN, "train: {lr: .inf}"), None, "train.lr:"),
    ("seed 2^70", sub(TRAIN, f"train: {{seed: {2**70}}}"), None, "train.seed:"),
    ("seed among options", sub(TRAIN, "train: {method: sft-lora, steps: 150, options: {seed: 3}}"), None,
     "train.options.seed: is set by train.seed, not in options (it would be ignored)"),
    ("step precision among options", sub(TRAIN, "train: [{name: a, options: {precision: fp32}}]"), None,
     "train.0.options.precision: is set by train.0.precision"),
    ("cuda", sub(TRAIN, "train: {device: cuda}"), None, "train.device: cuda asked for, but this machine has no CUDA device"),
    ("duplicate key", QUICK + "package: false\n", None, "duplicate key 'package'"),
    ("alias bomb", QUICK.replace("base: {family: tiny, model: tiny-llama, options: {}}",
                                 "base: {family: tiny, model: tiny-llama, options: {}}\nbomb:\n"
                                 "  a: &a [x, x, x, x, x, x, x, x, x, x]\n  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                                 "  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                                 "  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n  f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"),
     None, "expands to more than 100,000 values"),
    ("binary", b"\x00\x01\x02\xff\xfe binary", None, "not UTF-8"),
    ("nul", b"goal: x\x00\n", None, "NUL byte"),
    ("unknown method", sub(TRAIN, "train: {method: ppo}"), None, "train.method: the tiny family has no method 'ppo'; its methods: sft-lora, dpo-lora"),
    ("dpo alone", sub(TRAIN, "train: {method: dpo-lora}"), None, "train.method: dpo-lora trains on top of an earlier step"),
    ("dpo option typo", sub(TRAIN, "train: [{name: sft}, {name: dpo, method: dpo-lora, options: {betta: 0.2}}]"), None,
     "train.1.options.betta: unknown option; known: steps, lr, batch_size"),
    ("unknown source option", sub("options: {}}]", "options: {rows: 3}}]"), None, "data.sources.0.options.rows: unknown option"),
    ("empty data", sub(BAD_DATA, "path: pace-planner/bad.jsonl"), b"", "bad.jsonl: empty"),
    ("one row", sub(BAD_DATA, "path: pace-planner/bad.jsonl"), b'{"request": "x", "action": "{}"}\n', "bad.jsonl: 1 row"),
    ("not json", sub(BAD_DATA, "path: pace-planner/bad.jsonl"), b"hello\nworld\n", "bad.jsonl: line 1: not a JSON object"),
    ("not utf-8", sub(BAD_DATA, "path: pace-planner/bad.jsonl"), b'{"request": "\xff\xfe"}\n', "bad.jsonl: line 1: not UTF-8"),
    ("giant line", sub(BAD_DATA, "path: pace-planner/bad.jsonl"), b'{"request": "' + b"a" * (2 << 20) + b'"}\n',
     "bad.jsonl: line 1 is 2,097,168 bytes"),
    ("unknown suite", sub("regression: [breadth]", "regression: [breath]"), None, "evals: unknown suite 'breath'; registered eval suites: benchmark, breadth"),
    ("unknown step data", sub(TRAIN, "train: [{name: a, data: nowhere}]"), None, "train.0.data: no data section 'nowhere'"),
]


@pytest.mark.parametrize("name,text,data,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_recipe_is_one_line_naming_the_field(proj, name, text, data, expected):
    code, out = check(proj, text, data)
    assert code != 0, out
    assert "Traceback" not in out
    assert len(out.splitlines()) == 1, out
    assert "x.yaml" in out or "bad.jsonl" in out, out
    assert expected in out, out


def test_the_quick_recipe_itself_is_fine(proj):
    code, out = check(proj, QUICK)
    assert code == 0, out
