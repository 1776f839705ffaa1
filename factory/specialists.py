"""Packaging a run as a specialist, and checking a packaged specialist.

A specialist is a directory that loads with stock peft on its base model:
the adapter (`adapter_model.safetensors` + `adapter_config.json`, byte for
byte the run's), the tokenizer files and chat template of the base, a model
card (`README.md`) that carries the evidence (intended use, base and digest,
training data, every criterion with baseline and candidate values, the
decision) and `manifest.json` with the sha256 of every other file and the run
and stage keys it came from. Files are copies, never links into the cache.

`signing.json` names the manifest's sha256 and the signer; a package published
with a key (`factory package --sign-key`, or `FACTORY_SIGNING_KEY`) also holds
`model.sig`, an OpenSSF model-signing signature over every file, and
`signer.pub`. The card repeats the signer and the manifest digest.

The recipe's `package` stage (`build_package`) writes `artifact.json` and,
when the decision is ship, `specialist/` into the run; the engine then
publishes it to `specialists/<recipe>-<key8>/` (`publish_specialist`).
`factory package` (`package_run`) does the same for a chosen run, and packages
a run that did not ship only when forced, saying so at the top of the card.
`verify` checks the signature and every file, and names what changed. The card
reads the run's records through `factory.evidence`; the commands that print
are in `factory.packagecmd`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from factory.errors import FactoryError
from factory.evidence import STAGE_DIRS, Evidence, gather, read_run
from factory.records import read_json_object

SPECIALIST_DIR = "specialist"
MANIFEST = "manifest.json"
CARD = "README.md"
SIGNATURE = "model.sig"
SIGNING = "signing.json"
PUBLIC_KEY = "signer.pub"
# Files outside the manifest's list: the manifest itself, and what names or signs it.
UNLISTED = (MANIFEST, CARD, SIGNATURE, SIGNING, PUBLIC_KEY)
KEY_ENV = "FACTORY_SIGNING_KEY"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
# Tokenizer and chat-template files a transformers model directory may hold.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model",
    "chat_template.jinja", "chat_template.json",
)
PROMPT_TEMPLATE = "prompt_template.txt"
CARD_RECORDS = ("decision.json", "dataset.json", "train.json", "eval-baseline.json", "eval-candidate.json")


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file of a package or a stage output; {} when it does not exist."""
    return read_json_object(path, missing={})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest(path: Path) -> str:
    from factory.hashing import hash_file

    return hash_file(path)


def _copy(src: Path, dest: Path) -> None:
    """A copy of a regular file: a package must not share an inode with the read-only cache."""
    if Path(src).is_symlink():
        raise FactoryError(f"{src}: a symlink; a package holds regular files only")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def tokenizer_dir(base_dir: Path, root: Path | None = None) -> Path | None:
    """The directory holding the base's tokenizer: the base output itself, or the model it points to."""
    base_dir = Path(base_dir)
    if any((base_dir / n).is_file() for n in TOKENIZER_FILES):
        return base_dir
    info = _read_json(base_dir / "base.json")
    for cand in (info.get("path"), info.get("model")):
        if not cand:
            continue
        p = Path(cand).expanduser()
        if not p.is_absolute() and root is not None:
            p = Path(root) / p
        if any((p / n).is_file() for n in TOKENIZER_FILES):
            return p
    return None


def tokenizer_files(base_dir: Path, root: Path | None = None) -> dict[str, Path]:
    src = tokenizer_dir(base_dir, root)
    if src is None:
        return {}
    return {n: src / n for n in TOKENIZER_FILES if (src / n).is_file()}


def tokenizer_digest(files: dict[str, Path]) -> str | None:
    from factory.hashing import digest_json

    if not files:
        return None
    return digest_json({n: _digest(p) for n, p in sorted(files.items())})


# --- the model card ------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _written(model: Any, name: str) -> Any:
    """A record field as the file wrote it: None when the file left it out (no default filled in)."""
    return getattr(model, name) if model is not None and name in model.model_fields_set else None


def _suite_rows(ev: Evidence) -> list[str]:
    rows = []
    cand = {s.suite: s for s in (ev.candidate.suites if ev.candidate else [])}
    base = {s.suite: s for s in (ev.baseline.suites if ev.baseline else [])}
    for name in list(dict.fromkeys([*base, *cand])):
        b, c = base.get(name), cand.get(name)
        metric = (c.primary_metric if c else None) or (b.primary_metric if b else None) or "exact_match"

        def score(s: Any) -> str:
            if s is None:
                return "–"
            if s.status == "failed":
                return f"failed ({s.error or 'no reason given'})"
            sc = s.scores.get(metric)
            if sc is None:
                return "–"
            text = _fmt(sc.value)
            if sc.ci_low is not None and sc.ci_high is not None:
                text += f" [{_fmt(sc.ci_low)}, {_fmt(sc.ci_high)}]"
            return text + (f" (n={sc.n})" if sc.n else "")

        rows.append(f"| {name} | {metric} | {score(b)} | {score(c)} |")
    return rows


def model_card(ev: Evidence, *, spec_id: str, recipe: str, goal: str, owner: str, base: dict[str, Any],
               forced: bool, run_id: str | None, prompt_template: str | None, has_chat_template: bool) -> str:
    """README.md of a specialist: what it is for, what it was trained on, and the evidence."""
    d = ev.decision
    verdict = d.decision if d is not None else "unknown"
    reason = d.reason if d is not None else ""
    # The card names no directory: the same bytes sit in the run's specialist/ and in specialists/<id>/.
    lines = [f"# {recipe} specialist", ""]
    if verdict != "ship":
        lines += [
            f"> **Not approved for use.** The acceptance gate decided **{verdict}**: "
            f"{reason}. This package was made with `--force` for inspection only.", "",
        ]
    lines += [
        "## Intended use", "",
        goal.strip() or "(the recipe states no goal)", "",
        f"Recipe `{recipe}`" + (f", owner {owner}" if owner else "") + (f", run `{run_id}`." if run_id else "."), "",
        "## Base model", "",
        f"- family: `{base.get('family', '–')}`",
        f"- model: `{base.get('model', '–')}`",
        f"- digest (xxh3-128 of the built base): `{base.get('digest', '–')}`", "",
        "This directory holds a LoRA adapter and the base's tokenizer, not the base weights. Load it on the "
        "base whose digest is above:", "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'base = AutoModelForCausalLM.from_pretrained("<base model directory>")',
        'model = PeftModel.from_pretrained(base, "<this directory>")',
        'tokenizer = AutoTokenizer.from_pretrained("<this directory>")',
        "```", "",
    ]
    if has_chat_template:
        lines += ["Prompts are formatted with the chat template shipped with the tokenizer.", ""]
    elif prompt_template:
        lines += [f"Prompts are formatted with the plain template in `{PROMPT_TEMPLATE}`: "
                  f"`{prompt_template!r}`; the answer follows it directly.", ""]
    data = ev.dataset
    counts = data.counts if data is not None else None
    lines += ["## Training data", ""]
    for s in data.sources if data is not None else []:
        lines.append(f"- source `{s.kind}` `{s.path}`: {s.rows} rows, digest `{s.digest}`")
    shown = {k: _written(counts, k) for k in ("input_rows", "train_rows", "heldout_rows", "dropped_rows")}
    shown = {k: "–" if v is None else v for k, v in shown.items()}
    lines += [
        f"- rows: {shown['input_rows']} read, {shown['train_rows']} train, "
        f"{shown['heldout_rows']} held out, {shown['dropped_rows']} dropped",
    ]
    for why, n in sorted((counts.dropped_by_reason if counts is not None else {}).items()):
        lines.append(f"  - dropped for {why}: {n}")
    for split, ref in sorted((data.splits if data is not None else {}).items()):
        lines.append(f"- {split} split digest: `{ref.digest}`")
    lines.append("")
    t = ev.train
    if t is not None:
        lines += ["## Training", "",
                  f"- method: `{t.method}`, {t.steps} steps, final loss {_fmt(t.final_loss)}, "
                  f"{_fmt(t.seconds)} s on {t.device}"]
        params = {k: v for k, v in t.params.items() if not isinstance(v, (dict, list))}
        if params:
            lines.append("- parameters: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items())))
        lines.append("")
    lines += ["## Evaluation", "", "| suite | metric | baseline | candidate |", "|---|---|---|---|",
              *_suite_rows(ev), ""]
    lines += ["## Acceptance criteria", "",
              "| criterion | metric | threshold | baseline | candidate | delta | passed |",
              "|---|---|---|---|---|---|---|"]
    for c in d.criteria if d is not None else []:
        lines.append(f"| {c.name} | {c.metric} | {_fmt(c.threshold)} | {_fmt(c.baseline)} "
                     f"| {_fmt(c.candidate)} | {_fmt(c.delta)} | {_fmt(c.passed)} |")
    lines += ["", f"**Decision: {verdict}.** {reason}"]
    if d is not None and d.next_action:
        lines.append(f"Next action: {d.next_action}")
    return "\n".join(lines) + "\n" + provenance(None, None)


PROVENANCE = "## Provenance"


def provenance(manifest_sha256: str | None, signer: str | None) -> str:
    """The card's last section: the manifest digest and who signed."""
    lines = ["", PROVENANCE, "",
             f"`{MANIFEST}` lists the sha256 of every file here and the stage keys this package came from; "
             "`factory verify <this directory>` rechecks them and the signature.", ""]
    if manifest_sha256:
        lines.append(f"- manifest sha256: `{manifest_sha256}`")
    lines.append(f"- signed by: {signer}" if signer else
                 "- signed by: nobody (unsigned: the digests show accidents, not tampering)")
    return "\n".join(lines) + "\n"


def _set_provenance(dest: Path, manifest_sha256: str, signer: str | None) -> None:
    card = dest / CARD
    text = card.read_text() if card.is_file() else ""
    head = text.split("\n" + PROVENANCE + "\n", 1)[0].rstrip("\n") + "\n"
    card.write_text(head + provenance(manifest_sha256, signer))


# --- writing a specialist ------------------------------------------------------------------

def write_specialist(dest: Path, *, spec_id: str, adapter_dir: Path, base_dir: Path, root: Path | None,
                     recipe: str, goal: str, owner: str, base: dict[str, Any], evidence: Evidence, forced: bool,
                     run_id: str | None, stage_keys: dict[str, str], inputs: dict[str, str] | None = None) -> Path:
    """Write a complete specialist directory at `dest` (which must not exist yet); the card shows `evidence`
    (its decision, dataset, training and both evals)."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    for n in ADAPTER_FILES:
        src = Path(adapter_dir) / n
        if not src.is_file():
            raise FactoryError(f"{src}: missing; the train stage writes it")
        _copy(src, dest / n)
    toks = tokenizer_files(base_dir, root)
    for n, src in toks.items():
        _copy(src, dest / n)
    template = _read_json(Path(base_dir) / "base.json").get("template")
    tok_cfg = _read_json(dest / "tokenizer_config.json")
    has_chat = (dest / "chat_template.jinja").is_file() or (dest / "chat_template.json").is_file() or bool(
        tok_cfg.get("chat_template"))
    if template and not has_chat:
        (dest / PROMPT_TEMPLATE).write_text(template)
    (dest / CARD).write_text(model_card(
        evidence, spec_id=spec_id, recipe=recipe, goal=goal, owner=owner, base=base, forced=forced, run_id=run_id,
        prompt_template=template, has_chat_template=has_chat))
    verdict = evidence.decision.decision if evidence.decision is not None else None
    write_manifest(dest, {
        "id": spec_id, "run_id": run_id, "recipe": recipe, "decision": verdict,
        "shipped": verdict == "ship", "forced": forced,
        "base": base, "base_digest": base.get("digest"), "tokenizer_digest": tokenizer_digest(toks),
        "stage_keys": stage_keys, "inputs": inputs or {},
    })
    seal(dest, None)
    return dest


def write_manifest(dest: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """manifest.json: `meta` plus the sha256 and size of every file but the card and the signing files."""
    man = {"schema_version": "1.1", **meta, "files": _files_of(dest)}
    (Path(dest) / MANIFEST).write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")
    return man


def _files_of(dest: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(Path(dest).rglob("*")):
        rel = p.relative_to(dest).as_posix()
        if p.is_symlink():
            raise FactoryError(f"{p}: a symlink; a package holds regular files only")
        if p.is_file() and rel not in UNLISTED:
            out[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    return out


# --- signing -------------------------------------------------------------------------------

def _model_signing():
    try:
        import model_signing  # noqa: F401  (optional extra: pip install -e ".[sign]")
        from model_signing import hashing as ms_hashing, signing as ms_signing, verifying as ms_verifying
    except ImportError as e:
        raise FactoryError(f"signing needs the model-signing package ({e}); pip install -e \".[sign]\"") from None
    return ms_hashing, ms_signing, ms_verifying


def _public_key_of(key_path: Path):
    """(public key PEM bytes, identity) of an elliptic-curve private key file; one-line errors naming the file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key_path = Path(key_path)
    try:
        data = key_path.read_bytes()
    except FileNotFoundError:
        raise FactoryError(f"{key_path}: signing key missing") from None
    except OSError as e:
        raise FactoryError(f"{key_path}: cannot read the signing key ({e.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise FactoryError(f"{key_path}: not a PEM private key without a password ({str(e).splitlines()[0]})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FactoryError(f"{key_path}: not an elliptic-curve private key (model-signing signs with EC keys)")
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pub, key_identity(key.public_key())


def key_identity(public_key: Any) -> str:
    """A signer named by its key: sha256 of the DER SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "key sha256:" + hashlib.sha256(der).hexdigest()


def seal(dest: Path, key_path: Path | None, sigstore: bool = False) -> dict[str, Any]:
    """Write signing.json and the card's provenance, then sign every file when a key (or sigstore) is given."""
    dest = Path(dest)
    for name in (SIGNATURE, PUBLIC_KEY):
        (dest / name).unlink(missing_ok=True)
    man_sha = sha256_file(dest / MANIFEST)
    info: dict[str, Any] = {"manifest_sha256": man_sha, "signed": False, "method": None, "signer": None}
    pub = None
    if key_path is not None:
        pub, identity = _public_key_of(Path(key_path))
        info.update(signed=True, method="key", signer=identity)
    elif sigstore:
        info.update(signed=True, method="sigstore", signer="sigstore (identity in model.sig's certificate)")
    if pub is not None:
        (dest / PUBLIC_KEY).write_bytes(pub)
    (dest / SIGNING).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    _set_provenance(dest, man_sha, info["signer"])
    if info["signed"]:
        ms_hashing, ms_signing, _ = _model_signing()
        cfg = ms_signing.Config()
        cfg = cfg.use_elliptic_key_signer(private_key=Path(key_path)) if key_path is not None else cfg.use_sigstore_signer()
        cfg.set_hashing_config(ms_hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False))
        try:
            cfg.sign(dest, dest / SIGNATURE)
        except Exception as e:  # sigstore needs a network and an identity; a key can still be refused
            raise FactoryError(f"{dest}: signing failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return info


def signing_key(explicit: str | Path | None) -> Path | None:
    """The private key to sign with: the one given, else $FACTORY_SIGNING_KEY, else none."""
    value = explicit or os.environ.get(KEY_ENV)
    return Path(value).expanduser() if value else None


# --- the package stage ---------------------------------------------------------------------

def build_package(ctx: Any) -> None:
    """Build function of the `package` stage: artifact.json, and specialist/ when the run ships."""
    from factory.records import Artifact, FileRef, write_record

    inputs = {k: Path(v) for k, v in ctx.inputs.items()}
    ev = gather({k: inputs.get(k) for k in STAGE_DIRS})
    ev.require(*CARD_RECORDS)
    if ev.decision is None:
        raise FactoryError(f"{inputs['decide']}: no decision.json; the decide stage writes it")
    adapter_dir = inputs["train"] / "adapter"
    refs = []
    for n in ADAPTER_FILES:
        p = adapter_dir / n
        if not p.is_file():
            raise FactoryError(f"{p}: missing; the train stage writes it")
        refs.append(FileRef(path=f"adapter/{n}", digest=_digest(p), size=p.stat().st_size))
    root = Path(ctx.root) if getattr(ctx, "root", None) else None
    toks = tokenizer_files(inputs["base"], root)
    shipped = ev.decision.decision == "ship"
    forced = bool(ctx.config.get("force", False))
    base_digest = ctx.input_digests.get("base") or ""
    out = Path(ctx.out)
    write_record(out / "artifact.json", Artifact(adapter=refs, base_digest=base_digest,
                                                 tokenizer_digest=tokenizer_digest(toks), shipped=shipped))
    if not (shipped or forced):
        ctx.log(f"package: decision is {ev.decision.decision}; artifact.json only, no specialist")
        return
    recipe = str(ctx.config.get("recipe") or getattr(getattr(ctx, "recipe", None), "name", "") or "specialist")
    base_info = {"family": ctx.config.get("family"), "model": ctx.config.get("base_model"), "digest": base_digest}
    write_specialist(
        out / SPECIALIST_DIR, spec_id=f"{recipe}-{ctx.key[:8]}", adapter_dir=adapter_dir, base_dir=inputs["base"],
        root=root, recipe=recipe, goal=str(ctx.config.get("goal") or ""), owner=str(ctx.config.get("owner") or ""),
        base=base_info, evidence=ev, forced=forced and not shipped, run_id=None, stage_keys={"package": ctx.key},
        inputs=dict(ctx.input_digests),
    )


# --- publishing ----------------------------------------------------------------------------

def _safe_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not SAFE_ID.match(value) or ".." in value:
        raise FactoryError(f"{where}: {value!r} is not a safe specialist name (letters, digits, '.', '_', '-')")
    return value


def specialist_id(run_dir: Path, recipe: str | None = None) -> str:
    """<recipe>-<key8> from a run directory named <date>-<recipe>-<key8>."""
    name = Path(run_dir).name
    key8 = name.rsplit("-", 1)[-1]
    if recipe is None:
        recipe = _read_json(Path(run_dir) / "config.json").get("recipe") or name[11:].rsplit("-", 1)[0]
    return _safe_id(f"{_safe_id(recipe, f'{name}: recipe')}-{key8}", f"{name}: specialist id")


def _run_meta(run_dir: Path) -> dict[str, Any]:
    """The run id and every stage key, which a published manifest adds to the package stage's.

    Read as plain JSON, not as records: publishing needs these two fields only, and a run whose other
    manifest fields are off still publishes."""
    man = _read_json(run_dir / "run_manifest.json")
    cfg = _read_json(run_dir / "config.json")
    return {"run_id": man.get("run_id") or run_dir.name,
            "stage_keys": man.get("stage_keys") or cfg.get("stage_keys") or {}}


def _listed_files(src: Path) -> list[str]:
    """The files a package's manifest lists, each contained in the package and a regular file."""
    man = _read_json(src / MANIFEST)
    files = man.get("files")
    if not isinstance(files, dict):
        raise FactoryError(f"{src / MANIFEST}: files: expected an object of path -> digest")
    out = []
    for rel in sorted(files):
        where = _contained(src, rel)
        if where is not None:
            raise FactoryError(f"{src / MANIFEST}: files: {rel!r} {where}")
        out.append(rel)
    return out


def publish_specialist(run_dir: Path, root: Path, sign_key: str | Path | None = None,
                       sigstore: bool = False) -> Path | None:
    """Copy a run's specialist/ to specialists/<id>/, signed when a key is given or set; None if it has none.

    The published manifest adds the run id and every stage key, which the
    package stage cannot know (the run's key includes its own); signing.json,
    the card's provenance and the signature follow the new manifest.
    """
    run_dir = Path(run_dir)
    src = run_dir / SPECIALIST_DIR
    if not (src / MANIFEST).is_file():
        return None
    src_man = _read_json(src / MANIFEST)
    spec_id = specialist_id(run_dir, src_man.get("recipe"))
    dest = Path(root) / "specialists" / spec_id
    meta = _run_meta(run_dir)
    key = signing_key(sign_key)
    if (dest / MANIFEST).is_file() and key is None and not sigstore:
        try:
            old = _read_json(dest / MANIFEST)
            intact = not verify(dest)
        except FactoryError:
            old, intact = {}, False
        if old.get("files") == src_man.get("files") and old.get("run_id") == meta["run_id"] and intact:
            return dest  # already published and intact
    tmp = dest.with_name(f".{spec_id}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for rel in [*_listed_files(src), CARD]:
            if (src / rel).is_file():
                _copy(src / rel, tmp / rel)
        man = {**src_man, **meta, "id": spec_id,
               "published": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / MANIFEST).write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")
        seal(tmp, key, sigstore)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


# --- commands ------------------------------------------------------------------------------

def best_run(root: Path, recipe: str, log: Callable[[str], None] = lambda m: None) -> str:
    """The best shipped run of a recipe, by the index: highest primary score, least breadth loss, newest.
    `log` hears what bringing the index up to date says."""
    from factory import index

    runs_dir = Path(root) / "runs"
    index._ready(runs_dir, log=log)
    _, rows = index.query(runs_dir, (
        "SELECT run_id FROM run_summary WHERE recipe = ? AND decision = 'ship' "
        "ORDER BY primary_candidate DESC NULLS LAST, breadth_delta_pp DESC NULLS LAST, created DESC LIMIT 1"),
        [recipe])
    if not rows:
        _, known = index.query(runs_dir, "SELECT count(*) FROM runs WHERE recipe = ?", [recipe])
        if not known[0][0]:
            raise FactoryError(f"--best {recipe}: no runs of that recipe in the index (see `factory runs`)")
        raise FactoryError(f"--best {recipe}: none of its {known[0][0]} runs shipped; "
                           "name a run and pass --force to package one anyway")
    return rows[0][0]


def package_run(root: Path, run_dir: Path, force: bool = False, sign_key: str | Path | None = None,
                sigstore: bool = False) -> Path:
    """specialists/<id>/ for a run: published from its specialist/, or built from the run when forced."""
    root, run_dir = Path(root), Path(run_dir)
    ev = read_run(run_dir)
    ev.require("config.json", *CARD_RECORDS)
    if ev.decision is None:
        raise FactoryError(f"{run_dir.name}: no decision.json; the run is not complete")
    verdict = ev.decision.decision
    if verdict != "ship" and not force:
        raise FactoryError(f"{run_dir.name}: decision is {verdict} ({ev.decision.reason}); "
                           "only shipped runs are packaged; --force packages it anyway and the card says so")
    if verdict == "ship" and (run_dir / SPECIALIST_DIR / MANIFEST).is_file():
        dest = publish_specialist(run_dir, root, sign_key, sigstore)
        assert dest is not None
        return dest
    meta = _run_meta(run_dir)
    cfg = ev.config_values()
    base_key = meta["stage_keys"].get("base")
    if not base_key:
        raise FactoryError(f"{run_dir.name}: run_manifest.json names no base stage key")
    from factory.store import Store

    base_dir = Store(root / "cache").tree(base_key)
    recipe = cfg.get("recipe") or run_dir.name[11:].rsplit("-", 1)[0]
    spec_id = specialist_id(run_dir, recipe)
    dest = root / "specialists" / spec_id
    tmp = dest.with_name(f".{spec_id}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    base = cfg.get("base") or {}
    write_specialist(
        tmp, spec_id=spec_id, adapter_dir=run_dir / "adapter", base_dir=base_dir, root=root, recipe=recipe,
        goal=cfg.get("goal", ""), owner=cfg.get("owner", ""),
        base={"family": base.get("family"), "model": base.get("model"), "digest": base.get("digest")},
        evidence=ev, forced=verdict != "ship", run_id=meta["run_id"], stage_keys=meta["stage_keys"],
    )
    key = signing_key(sign_key)
    if key is not None or sigstore:
        seal(tmp, key, sigstore)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return dest


def _contained(root: Path, rel: Any) -> str | None:
    """Why a manifest path is not a plain relative path inside root, or None when it is."""
    if not isinstance(rel, str) or not rel:
        return "is not a path"
    if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel) or "\\" in rel:
        return "is not a relative POSIX path"
    if any(part in ("..", "") for part in rel.split("/")):
        return "escapes the package (.. or an empty part)"
    try:
        (Path(root) / rel).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return "escapes the package through a symlink"
    return None


def verify(path: Path, public_key: str | Path | None = None) -> list[str]:
    """Problems found in a specialist directory, one line each; empty when it is intact.

    Every file listed must be a regular file inside the directory with the
    listed sha256; nothing may be added; signing.json must name the manifest's
    own sha256; a signed package's model.sig must verify (with public_key, or
    the signer.pub it ships, whose identity must then be the one in signing.json).
    """
    path = Path(path)
    man_path = path / MANIFEST
    if not path.is_dir():
        raise FactoryError(f"{path}: not a directory; not a packaged specialist")
    if man_path.is_symlink():
        raise FactoryError(f"{man_path}: a symlink; a package holds regular files only")
    if not man_path.is_file():
        raise FactoryError(f"{man_path}: missing; not a packaged specialist")
    man = _read_json(man_path)
    files = man.get("files")
    if not isinstance(files, dict) or not files:
        raise FactoryError(f"{man_path}: files: missing or empty")
    problems = []
    for rel, ref in sorted(files.items()):
        where = _contained(path, rel)
        if where is not None:
            problems.append(f"{rel}: {where} (listed in {MANIFEST})")
            continue
        if not isinstance(ref, dict):
            problems.append(f"{rel}: manifest entry is {type(ref).__name__}, expected an object with sha256")
            continue
        p = path / rel
        if p.is_symlink():
            problems.append(f"{rel}: a symlink (to {os.readlink(p)}); a package holds regular files only")
            continue
        if not p.is_file():
            problems.append(f"{rel}: missing (removed after packaging)")
            continue
        want = ref.get("sha256")
        if not isinstance(want, str):
            problems.append(f"{rel}: no sha256 in the manifest")
        elif isinstance(ref.get("size"), int) and p.stat().st_size != ref["size"]:
            problems.append(f"{rel}: changed (size {p.stat().st_size}, manifest says {ref['size']})")
        elif sha256_file(p) != want:
            problems.append(f"{rel}: changed (sha256 differs from the manifest)")
    for dirpath, dirnames, filenames in os.walk(path):
        for name in sorted([*dirnames, *filenames]):
            p = Path(dirpath) / name
            rel = p.relative_to(path).as_posix()
            if p.is_symlink():
                if rel not in files:
                    problems.append(f"{rel}: a symlink (to {os.readlink(p)}); a package holds regular files only")
            elif p.is_file() and rel not in files and rel not in UNLISTED:
                problems.append(f"{rel}: added (not in the manifest)")
    problems += _check_signing(path, public_key)
    return problems


def signing_state(path: Path) -> dict[str, Any]:
    """signing.json of a package ({} when it has none)."""
    p = Path(path) / SIGNING
    return _read_json(p) if p.is_file() and not p.is_symlink() else {}


def _check_signing(path: Path, public_key: str | Path | None) -> list[str]:
    problems: list[str] = []
    info = signing_state(path)
    actual = sha256_file(path / MANIFEST)
    if not info:
        if (path / SIGNATURE).exists():
            problems.append(f"{SIGNING}: missing beside {SIGNATURE}")
        return problems
    if info.get("manifest_sha256") != actual:
        problems.append(f"{MANIFEST}: changed (sha256 {actual[:16]} differs from {SIGNING}'s "
                        f"{str(info.get('manifest_sha256'))[:16]}): the manifest was edited after packaging")
    card = path / CARD
    if card.is_file() and not card.is_symlink() and str(info.get("manifest_sha256")) not in card.read_text(errors="replace"):
        problems.append(f"{CARD}: does not show the manifest sha256 of {SIGNING}")
    if not info.get("signed"):
        if (path / SIGNATURE).exists():
            problems.append(f"{SIGNATURE}: present, but {SIGNING} says the package is unsigned")
        return problems
    sig = path / SIGNATURE
    if not sig.is_file() or sig.is_symlink():
        problems.append(f"{SIGNATURE}: missing; {SIGNING} says the package is signed by {info.get('signer')}")
        return problems
    _, _, ms_verifying = _model_signing()
    cfg = ms_verifying.Config()
    if info.get("method") == "key":
        key = Path(public_key) if public_key else path / PUBLIC_KEY
        if not key.is_file():
            problems.append(f"{key.name}: missing; no public key to check the signature with (pass --key)")
            return problems
        try:
            from cryptography.hazmat.primitives import serialization

            pub = serialization.load_pem_public_key(key.read_bytes())
        except (ValueError, TypeError, UnicodeDecodeError):
            raise FactoryError(f"{key}: not a PEM public key") from None
        if key_identity(pub) != info.get("signer"):
            problems.append(f"{SIGNING}: signer {info.get('signer')} is not the holder of {key} "
                            f"({key_identity(pub)})")
            return problems
        cfg = cfg.use_elliptic_key_verifier(public_key=key)
    elif info.get("method") == "sigstore":
        identity, issuer = os.environ.get("FACTORY_SIGSTORE_IDENTITY"), os.environ.get("FACTORY_SIGSTORE_ISSUER")
        if not identity or not issuer:
            problems.append(f"{SIGNATURE}: sigstore signature; set FACTORY_SIGSTORE_IDENTITY and "
                            "FACTORY_SIGSTORE_ISSUER to the identity you trust to check it")
            return problems
        cfg = cfg.use_sigstore_verifier(identity=identity, oidc_issuer=issuer)
    else:
        problems.append(f"{SIGNING}: method: {info.get('method')!r}; expected key or sigstore")
        return problems
    try:
        cfg.verify(path, sig)
    except ValueError as e:
        problems += _signature_diff(str(e))
    except Exception as e:  # a malformed or forged bundle
        problems.append(f"{SIGNATURE}: does not verify ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    return problems


def _signature_diff(message: str) -> list[str]:
    """model-signing's mismatch message, one line per file, in the words verify uses."""
    out = []
    # The message is a Python list's repr, so its quotes may come escaped.
    for m in re.finditer(r"Hash mismatch for \\*'([^'\\]+)\\*'", message):
        out.append(f"{m.group(1)}: changed since it was signed")
    for m in re.finditer(r"Extra files found in model \\*'[^']*\\*': ([^'\"\]\\]+)", message):
        out += [f"{f.strip()}: added since signing" for f in m.group(1).split(",")]
    for m in re.finditer(r"Missing files in model \\*'[^']*\\*': ([^'\"\]\\]+)", message):
        out += [f"{f.strip()}: removed since signing" for f in m.group(1).split(",")]
    return out or [f"{SIGNATURE}: does not verify ({message.splitlines()[0]})"]
