"""Packaging specialists: the package stage, publishing, `factory package`, `factory verify`."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from factory import index, packagecmd, specialists
from factory.records import Artifact, read_record
from factory.stages import BuildContext

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from make_runs import make_runs  # noqa: E402

CHAT = "{% for m in messages %}{{ m['content'] }}\n=> {% endfor %}"
KEY = "0123456789abcdef" * 2


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory) -> Path:
    """Upstream stage outputs: a tiny random Llama base, a LoRA adapter on it, and the records."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from factory.ml.toymodels import save_toy_model

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("inputs")
    save_toy_model(d / "base", hidden=32, layers=1, heads=2, chat_template=CHAT)
    model = AutoModelForCausalLM.from_pretrained(d / "base")
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))  # random B: the adapter matters
    peft_model.save_pretrained(d / "train" / "adapter")
    (d / "train" / "train.json").write_text(json.dumps({"method": "sft-lora", "steps": 10, "final_loss": 0.5,
                                                        "seconds": 1.0, "device": "cpu", "params": {"lr": 0.005}}))
    (d / "dataset").mkdir()
    (d / "dataset" / "dataset.json").write_text(json.dumps({
        "sources": [{"kind": "jsonl", "path": "pace-planner/traces.jsonl", "rows": 50, "digest": "d" * 32}],
        "counts": {"input_rows": 50, "train_rows": 38, "heldout_rows": 10, "dropped_rows": 2,
                   "dropped_by_reason": {"duplicate": 2}},
        "splits": {"train": {"path": "train.jsonl", "digest": "t" * 32},
                   "heldout": {"path": "heldout.jsonl", "digest": "h" * 32}}}))
    for role, value in (("baseline", 0.1), ("candidate", 0.97)):
        (d / f"eval-{role}").mkdir()
        (d / f"eval-{role}" / f"eval-{role}.json").write_text(json.dumps({
            "role": role, "model": {"base_digest": "b" * 32},
            "suites": [{"suite": "json-action", "version": "1", "primary_metric": "exact_match",
                        "scores": {"exact_match": {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.02,
                                                   "n": 10}}}]}))
    return d


def _decision(verdict: str) -> dict:
    return {"decision": verdict, "reason": "every criterion passed" if verdict == "ship" else "breadth fell 4.2 points",
            "criteria": [
                {"name": "primary_min", "metric": "json-action.exact_match", "threshold": 0.95, "baseline": 0.1,
                 "candidate": 0.97, "delta": 0.87, "passed": True},
                {"name": "breadth_drop_max_pp", "metric": "breadth.exact_match", "threshold": 3.0, "baseline": 0.86,
                 "candidate": 0.82 if verdict != "ship" else 0.87, "delta": -0.042 if verdict != "ship" else 0.01,
                 "passed": verdict == "ship"}]}


def _ctx(stage_inputs: Path, tmp_path: Path, verdict: str, force: bool = False) -> BuildContext:
    decide = tmp_path / "decide"
    decide.mkdir(parents=True)
    (decide / "decision.json").write_text(json.dumps(_decision(verdict)))
    inputs = {"decide": decide, "train": stage_inputs / "train", "base": stage_inputs / "base",
              "dataset": stage_inputs / "dataset", "eval-baseline": stage_inputs / "eval-baseline",
              "eval-candidate": stage_inputs / "eval-candidate"}
    out = tmp_path / "out"
    out.mkdir()
    return BuildContext(
        recipe=None, stage="package", kind="package", key=KEY,
        config={"recipe": "pace-planner", "goal": "Plan a week of running from a training log.", "owner": "ml",
                "base_model": "tiny-llama", "family": "tiny", "method": "sft-lora", "force": force},
        inputs=inputs, out=out, root=tmp_path, registry=None, input_digests={"base": "b" * 32}, log=lambda m: None)


def _logits(base_dir: Path, adapter_dir: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir)).eval()
    tok = AutoTokenizer.from_pretrained(adapter_dir if (adapter_dir / "tokenizer.json").exists() else base_dir)
    ids = tok(["plan 5 km easy\n=> "], return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_package_stage_writes_a_specialist_that_loads_with_stock_peft(stage_inputs, tmp_path):
    import torch

    ctx = _ctx(stage_inputs, tmp_path, "ship")
    specialists.build_package(ctx)
    art = read_record(ctx.out / "artifact.json", Artifact)
    assert art.shipped and art.base_digest == "b" * 32 and art.tokenizer_digest
    assert [a.path for a in art.adapter] == ["adapter/adapter_model.safetensors", "adapter/adapter_config.json"]

    spec = ctx.out / "specialist"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "README.md", "manifest.json"):
        assert (spec / name).is_file(), name
    assert (spec / "adapter_model.safetensors").read_bytes() == (
        stage_inputs / "train" / "adapter" / "adapter_model.safetensors").read_bytes()

    packaged = _logits(stage_inputs / "base", spec)
    original = _logits(stage_inputs / "base", stage_inputs / "train" / "adapter")
    plain = _logits_base(stage_inputs / "base")
    assert torch.equal(packaged, original)
    assert not torch.allclose(packaged, plain)  # the adapter is really applied

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi\n=> "

    card = (spec / "README.md").read_text()
    assert "Plan a week of running" in card and "b" * 32 in card
    assert "38 train" in card and "dropped for duplicate: 2" in card
    assert "| primary_min | json-action.exact_match | 0.95 | 0.1 | 0.97 |" in card
    assert "**Decision: ship.**" in card and "Not approved" not in card
    man = json.loads((spec / "manifest.json").read_text())
    assert man["stage_keys"] == {"package": KEY} and man["inputs"] == {"base": "b" * 32}
    assert set(man["files"]) == {p.name for p in spec.iterdir()} - {"manifest.json", "README.md", "signing.json"}
    assert all(len(ref["sha256"]) == 64 for ref in man["files"].values())
    # The stage's output is content only and unsigned: signing is an act of whoever publishes.
    assert "created" not in man and not (spec / "model.sig").exists()
    info = json.loads((spec / "signing.json").read_text())
    assert info["signed"] is False and info["manifest_sha256"] == specialists.sha256_file(spec / "manifest.json")
    assert f"manifest sha256: `{info['manifest_sha256']}`" in card and "signed by: nobody" in card


def _logits_base(base_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    ids = AutoTokenizer.from_pretrained(base_dir)(["plan 5 km easy\n=> "], return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_a_run_that_does_not_ship_gets_no_specialist_unless_forced(stage_inputs, tmp_path):
    ctx = _ctx(stage_inputs, tmp_path / "a", "rework")
    specialists.build_package(ctx)
    assert not read_record(ctx.out / "artifact.json", Artifact).shipped
    assert not (ctx.out / "specialist").exists()

    ctx = _ctx(stage_inputs, tmp_path / "b", "rework", force=True)
    specialists.build_package(ctx)
    card = (ctx.out / "specialist" / "README.md").read_text()
    assert card.splitlines()[2].startswith("> **Not approved for use.** The acceptance gate decided **rework**")
    assert json.loads((ctx.out / "specialist" / "manifest.json").read_text())["forced"] is True


def _run_with_specialist(stage_inputs: Path, root: Path, verdict: str) -> Path:
    """A run directory as the engine materializes it, with the package stage's outputs."""
    ctx = _ctx(stage_inputs, root / "build", verdict, force=False)
    specialists.build_package(ctx)
    run = root / "runs" / f"2026-07-01-pace-planner-{KEY[:8]}"
    run.mkdir(parents=True)
    if (ctx.out / "specialist").exists():
        shutil.copytree(ctx.out / "specialist", run / "specialist")
    shutil.copy(ctx.out / "artifact.json", run)
    (run / "decision.json").write_text(json.dumps(_decision(verdict)))
    (run / "config.json").write_text(json.dumps({"recipe": "pace-planner", "base": {"family": "tiny", "model": "t"},
                                                 "method": "sft-lora"}))
    (run / "run_manifest.json").write_text(json.dumps({"run_id": run.name, "recipe": "pace-planner",
                                                       "stage_keys": {"base": "1" * 32, "package": KEY}}))
    return run


def test_publish_and_verify(stage_inputs, tmp_path, capsys):
    run = _run_with_specialist(stage_inputs, tmp_path, "ship")
    dest = specialists.publish_specialist(run, tmp_path)
    assert dest == tmp_path / "specialists" / f"pace-planner-{KEY[:8]}"
    man = json.loads((dest / "manifest.json").read_text())
    assert man["run_id"] == run.name and man["stage_keys"]["base"] == "1" * 32
    assert specialists.publish_specialist(run, tmp_path) == dest  # idempotent

    assert packagecmd.cli_verify(str(dest)) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "unsigned" in out

    # the published files are copies, not links into the run or the cache
    for p in dest.iterdir():
        src = run / "specialist" / p.name
        assert p.stat().st_nlink == 1 and (not src.exists() or not p.samefile(src))

    weights = dest / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert packagecmd.cli_verify(str(dest)) == 1
    err = capsys.readouterr().err
    assert "adapter_model.safetensors: changed" in err and "README.md" not in err
    # the run's own copy is untouched
    assert specialists.verify(run / "specialist") == []

    (dest / "extra.bin").write_bytes(b"x")
    (dest / "tokenizer.json").unlink()
    problems = specialists.verify(dest)
    assert "tokenizer.json: missing (removed after packaging)" in problems
    assert "extra.bin: added (not in the manifest)" in problems


def test_cli_package_refuses_a_run_that_did_not_ship(stage_inputs, tmp_path, capsys):
    run = _run_with_specialist(stage_inputs, tmp_path, "rework")
    assert packagecmd.cli_package(tmp_path, run.name, None, False) == 1
    err = capsys.readouterr().err
    assert "decision is rework" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "specialists").exists()


def test_cli_package_publishes_a_shipped_run_and_the_index_lists_it(stage_inputs, tmp_path, capsys):
    run = _run_with_specialist(stage_inputs, tmp_path, "ship")
    assert packagecmd.cli_package(tmp_path, run.name[-8:], None, False) == 0
    assert f"pace-planner-{KEY[:8]}" in capsys.readouterr().out
    rows = index.query(tmp_path / "runs", "SELECT specialist_id, run_id, forced FROM specialists")[1]
    assert rows == [(f"pace-planner-{KEY[:8]}", run.name, False)]


def test_best_picks_the_top_shipped_run_through_the_index(tmp_path):
    make_runs(tmp_path / "runs", 120, seed=5)
    best = specialists.best_run(tmp_path, "pace-planner")
    rows = index.query(tmp_path / "runs", "SELECT run_id, primary_candidate, breadth_delta_pp FROM run_summary "
                                          "WHERE recipe = 'pace-planner' AND decision = 'ship'")[1]
    top = max(r[1] for r in rows)
    assert best in {r[0] for r in rows if r[1] == top}
    with pytest.raises(Exception, match="no runs of that recipe"):
        specialists.best_run(tmp_path, "no-such-recipe")


# --- signing and tampering -------------------------------------------------------------------

@pytest.fixture()
def ec_key(tmp_path) -> Path:
    """A fresh P-256 private key in PEM, made offline with cryptography."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    p = tmp_path / "signer.pem"
    p.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return p


@pytest.fixture()
def signed(stage_inputs, tmp_path, ec_key) -> Path:
    run = _run_with_specialist(stage_inputs, tmp_path, "ship")
    dest = specialists.publish_specialist(run, tmp_path, sign_key=ec_key)
    assert specialists.verify(dest) == []
    return dest


def _recompute_manifest(dest: Path) -> None:
    """What a careful forger does: edit files, then write every digest afresh."""
    man = json.loads((dest / "manifest.json").read_text())
    man["files"] = specialists._files_of(dest)
    (dest / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")


def test_signed_package_names_signer_and_manifest_digest(signed, ec_key, capsys, tmp_path):
    info = json.loads((signed / "signing.json").read_text())
    _, identity = specialists._public_key_of(ec_key)
    assert info == {"manifest_sha256": specialists.sha256_file(signed / "manifest.json"), "method": "key",
                    "signed": True, "signer": identity}
    card = (signed / "README.md").read_text()
    assert f"signed by: {identity}" in card and info["manifest_sha256"] in card
    assert (signed / "model.sig").is_file() and (signed / "signer.pub").is_file()
    assert packagecmd.cli_verify(str(signed)) == 0
    assert f"signature by {identity} verifies" in capsys.readouterr().out
    # The signer's public key given explicitly: the same; another key: named as not the signer.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = tmp_path / "other.pub"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert specialists.verify(signed, signed / "signer.pub") == []
    assert any("is not the holder of" in p for p in specialists.verify(signed, other))


def test_tamper_edited_file(signed):
    w = signed / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + b"\x00")
    problems = specialists.verify(signed)
    assert "adapter_model.safetensors: changed (sha256 differs from the manifest)" in problems
    assert "adapter_model.safetensors: changed since it was signed" in problems


def test_tamper_edited_manifest_with_recomputed_digests(signed):
    w = signed / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + b"\x00")
    _recompute_manifest(signed)
    problems = specialists.verify(signed)
    assert not any("sha256 differs from the manifest" in p for p in problems)  # the digests agree now ...
    assert any(p.startswith("manifest.json: changed") and "edited after packaging" in p for p in problems)
    assert "manifest.json: changed since it was signed" in problems  # ... but the signature does not
    assert "adapter_model.safetensors: changed since it was signed" in problems
    # Forging signing.json and the card too still fails on the signature.
    info = json.loads((signed / "signing.json").read_text())
    old = info["manifest_sha256"]
    info["manifest_sha256"] = specialists.sha256_file(signed / "manifest.json")
    (signed / "signing.json").write_text(json.dumps(info))
    card = signed / "README.md"
    card.write_text(card.read_text().replace(old, info["manifest_sha256"]))
    problems = specialists.verify(signed)
    assert {"manifest.json: changed since it was signed", "signing.json: changed since it was signed",
            "README.md: changed since it was signed"} <= set(problems)


def test_tamper_added_and_removed_files(signed):
    (signed / "backdoor.bin").write_bytes(b"x")
    (signed / "tokenizer.json").unlink()
    problems = specialists.verify(signed)
    assert "backdoor.bin: added (not in the manifest)" in problems
    assert "backdoor.bin: added since signing" in problems
    assert "tokenizer.json: missing (removed after packaging)" in problems
    assert "tokenizer.json: removed since signing" in problems


def test_tamper_edited_card_is_caught_by_the_signature(signed):
    card = signed / "README.md"
    card.write_text(card.read_text().replace("**Decision: ship.**", "**Decision: ship, certified.**"))
    assert specialists.verify(signed) == ["README.md: changed since it was signed"]


def test_tamper_escaping_paths_and_symlinks(signed):
    man = json.loads((signed / "manifest.json").read_text())
    man["files"]["../../../../../etc/passwd"] = {"sha256": "0" * 64, "size": 1}
    man["files"]["/etc/passwd"] = {"sha256": "0" * 64, "size": 1}
    (signed / "manifest.json").write_text(json.dumps(man))
    problems = specialists.verify(signed)
    assert "../../../../../etc/passwd: escapes the package (.. or an empty part) (listed in manifest.json)" in problems
    assert "/etc/passwd: is not a relative POSIX path (listed in manifest.json)" in problems
    assert not any("ok" == p for p in problems)


def test_tamper_symlink_to_outside(stage_inputs, tmp_path):
    run = _run_with_specialist(stage_inputs, tmp_path, "ship")
    dest = specialists.publish_specialist(run, tmp_path)
    (dest / "tokenizer.json").unlink()
    os.symlink("/etc/passwd", dest / "tokenizer.json")
    os.symlink("/etc/hostname", dest / "extra")
    problems = specialists.verify(dest)
    assert "tokenizer.json: escapes the package through a symlink (listed in manifest.json)" in problems
    assert "extra: a symlink (to /etc/hostname); a package holds regular files only" in problems


@pytest.mark.parametrize("content,expected", [
    (b"[1, 2]", "manifest.json: (root): expected a JSON object, found list"),
    (b'{"files": {"a": 3}}', None),
    (b'{"files": {"a": [1]}}', None),
    (b"\xff\xfe{}", "manifest.json: not UTF-8 text (byte 0)"),
    (b"{", "manifest.json: not valid JSON"),
    (b'{"files": []}', "manifest.json: files: missing or empty"),
])
def test_verify_malformed_manifest_is_one_line(tmp_path, capsys, content, expected):
    d = tmp_path / "spec"
    d.mkdir()
    (d / "manifest.json").write_bytes(content)
    (d / "a").write_text("x")
    assert packagecmd.cli_verify(str(d)) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    if expected is None:
        assert err.splitlines() == [f"factory verify: {d}: a: manifest entry is "
                                    f"{'int' if b'3' in content else 'list'}, expected an object with sha256"]
    else:
        assert len(err.splitlines()) == 1 and expected in err


def test_verify_manifest_symlink_is_refused(tmp_path, capsys):
    d = tmp_path / "spec"
    d.mkdir()
    os.symlink("/etc/passwd", d / "manifest.json")
    assert packagecmd.cli_verify(str(d)) == 1
    assert "manifest.json: a symlink" in capsys.readouterr().err


def test_package_refuses_a_manifest_naming_an_escape(stage_inputs, tmp_path, capsys):
    run = _run_with_specialist(stage_inputs, tmp_path, "ship")
    man = json.loads((run / "specialist" / "manifest.json").read_text())
    (run / "specialist" / "manifest.json").write_text(json.dumps({**man, "recipe": "../../.."}))
    assert packagecmd.cli_package(tmp_path, run.name, None, False) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'../../..' is not a safe specialist name" in err
    man["files"]["../../../etc/passwd"] = {"sha256": "0" * 64}
    (run / "specialist" / "manifest.json").write_text(json.dumps(man))
    assert packagecmd.cli_package(tmp_path, run.name, None, False) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'../../../etc/passwd' escapes the package" in err
    assert not (tmp_path / "etc").exists() and not any((tmp_path / "specialists").glob("*/manifest.json"))


@pytest.mark.parametrize("make,expected", [
    (lambda p: None, "signing key missing"),
    (lambda p: p.write_text("not a key"), "not a PEM private key"),
])
def test_bad_signing_key_is_one_line(stage_inputs, tmp_path, capsys, make, expected):
    run = _run_with_specialist(stage_inputs, tmp_path, "ship")
    key = tmp_path / "key.pem"
    make(key)
    assert packagecmd.cli_package(tmp_path, run.name, None, False, sign_key=str(key)) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(key) in err and expected in err
    assert not (tmp_path / "specialists").exists() or not any((tmp_path / "specialists").iterdir())


def test_signing_key_from_the_environment(stage_inputs, tmp_path, ec_key, monkeypatch, capsys):
    run = _run_with_specialist(stage_inputs, tmp_path, "ship")
    monkeypatch.setenv(specialists.KEY_ENV, str(ec_key))
    assert packagecmd.cli_package(tmp_path, run.name, None, False) == 0
    out = capsys.readouterr().out
    _, identity = specialists._public_key_of(ec_key)
    assert f"signed by {identity}" in out


def test_the_index_records_signer_and_manifest_digest(stage_inputs, tmp_path, ec_key, capsys):
    run = _run_with_specialist(stage_inputs, tmp_path, "ship")
    assert packagecmd.cli_package(tmp_path, run.name, None, False, sign_key=str(ec_key)) == 0
    dest = tmp_path / "specialists" / f"pace-planner-{KEY[:8]}"
    _, identity = specialists._public_key_of(ec_key)
    rows = index.query(tmp_path / "runs", "SELECT signer, manifest_sha256 FROM specialists")[1]
    assert rows == [(identity, specialists.sha256_file(dest / "manifest.json"))]
