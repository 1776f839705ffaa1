"""Packaging a run as a specialist, and checking a packaged specialist.

A specialist is a directory that loads with stock peft on its base model:
the adapter (`adapter_model.safetensors` + `adapter_config.json`, byte for
byte the run's), the tokenizer files and chat template of the base, a model
card (`README.md`) that carries the evidence (intended use, base and digest,
training data, every criterion with baseline and candidate values, the
decision) and `manifest.json` with the digest of every file and the run and
stage keys it came from.

The recipe's `package` stage (`build_package`) writes `artifact.json` and,
when the decision is ship, `specialist/` into the run; the engine then
publishes it to `specialists/<recipe>-<key8>/` (`publish_specialist`).
`factory package` does the same for a chosen run, and packages a run that did
not ship only when forced, saying so at the top of the card. `factory verify`
rechecks every digest.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from factory.errors import FactoryError

SPECIALIST_DIR = "specialist"
MANIFEST = "manifest.json"
CARD = "README.md"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
# Tokenizer and chat-template files a transformers model directory may hold.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model",
    "chat_template.jinja", "chat_template.json",
)
PROMPT_TEMPLATE = "prompt_template.txt"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise FactoryError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def _digest(path: Path) -> str:
    from factory.hashing import hash_file

    return hash_file(path)


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
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


def _suite_rows(ev_b: dict[str, Any], ev_c: dict[str, Any]) -> list[str]:
    rows = []
    cand = {s.get("suite"): s for s in ev_c.get("suites", [])}
    base = {s.get("suite"): s for s in ev_b.get("suites", [])}
    for name in list(dict.fromkeys([*base, *cand])):
        b, c = base.get(name, {}), cand.get(name, {})
        metric = c.get("primary_metric") or b.get("primary_metric") or "exact_match"

        def score(s: dict[str, Any]) -> str:
            if s.get("status") == "failed":
                return f"failed ({s.get('error') or 'no reason given'})"
            sc = (s.get("scores") or {}).get(metric)
            if not sc:
                return "–"
            text = _fmt(sc.get("value"))
            if sc.get("ci_low") is not None and sc.get("ci_high") is not None:
                text += f" [{_fmt(sc['ci_low'])}, {_fmt(sc['ci_high'])}]"
            return text + (f" (n={sc['n']})" if sc.get("n") else "")

        rows.append(f"| {name} | {metric} | {score(b)} | {score(c)} |")
    return rows


def model_card(*, spec_id: str, recipe: str, goal: str, owner: str, base: dict[str, Any],
               decision: dict[str, Any], dataset: dict[str, Any], train: dict[str, Any],
               eval_baseline: dict[str, Any], eval_candidate: dict[str, Any], forced: bool,
               run_id: str | None, prompt_template: str | None, has_chat_template: bool) -> str:
    """README.md of a specialist: what it is for, what it was trained on, and the evidence."""
    verdict = decision.get("decision", "unknown")
    # The card names no directory: the same bytes sit in the run's specialist/ and in specialists/<id>/.
    lines = [f"# {recipe} specialist", ""]
    if verdict != "ship":
        lines += [
            f"> **Not approved for use.** The acceptance gate decided **{verdict}**: "
            f"{decision.get('reason', '')}. This package was made with `--force` for inspection only.", "",
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
    counts = dataset.get("counts", {})
    lines += ["## Training data", ""]
    for s in dataset.get("sources", []):
        lines.append(f"- source `{s.get('kind')}` `{s.get('path')}`: {s.get('rows')} rows, digest `{s.get('digest')}`")
    lines += [
        f"- rows: {counts.get('input_rows', '–')} read, {counts.get('train_rows', '–')} train, "
        f"{counts.get('heldout_rows', '–')} held out, {counts.get('dropped_rows', '–')} dropped",
    ]
    for reason, n in sorted((counts.get("dropped_by_reason") or {}).items()):
        lines.append(f"  - dropped for {reason}: {n}")
    for split, ref in sorted((dataset.get("splits") or {}).items()):
        lines.append(f"- {split} split digest: `{ref.get('digest')}`")
    lines.append("")
    if train:
        params = train.get("params") or {}
        lines += ["## Training", "",
                  f"- method: `{train.get('method', '–')}`, {train.get('steps', '–')} steps, "
                  f"final loss {_fmt(train.get('final_loss'))}, "
                  f"{_fmt(train.get('seconds'))} s on {train.get('device', '–')}"]
        shown = {k: v for k, v in params.items() if not isinstance(v, (dict, list))}
        if shown:
            lines.append("- parameters: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(shown.items())))
        lines.append("")
    lines += ["## Evaluation", "", "| suite | metric | baseline | candidate |", "|---|---|---|---|",
              *_suite_rows(eval_baseline, eval_candidate), ""]
    lines += ["## Acceptance criteria", "",
              "| criterion | metric | threshold | baseline | candidate | delta | passed |",
              "|---|---|---|---|---|---|---|"]
    for c in decision.get("criteria", []):
        lines.append(f"| {c.get('name')} | {c.get('metric')} | {_fmt(c.get('threshold'))} | {_fmt(c.get('baseline'))} "
                     f"| {_fmt(c.get('candidate'))} | {_fmt(c.get('delta'))} | {_fmt(c.get('passed'))} |")
    lines += ["", f"**Decision: {verdict}.** {decision.get('reason', '')}"]
    if decision.get("next_action"):
        lines.append(f"Next action: {decision['next_action']}")
    lines += ["", "## Provenance", "",
              f"`{MANIFEST}` lists the digest of every file here and the stage keys this package came from; "
              "`factory verify <this directory>` rechecks them.", ""]
    return "\n".join(lines)


# --- writing a specialist ------------------------------------------------------------------

def write_specialist(dest: Path, *, spec_id: str, adapter_dir: Path, base_dir: Path, root: Path | None,
                     recipe: str, goal: str, owner: str, base: dict[str, Any], decision: dict[str, Any],
                     dataset: dict[str, Any], train: dict[str, Any], eval_baseline: dict[str, Any],
                     eval_candidate: dict[str, Any], forced: bool, run_id: str | None,
                     stage_keys: dict[str, str], inputs: dict[str, str] | None = None) -> Path:
    """Write a complete specialist directory at `dest` (which must not exist yet)."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    for n in ADAPTER_FILES:
        src = Path(adapter_dir) / n
        if not src.is_file():
            raise FactoryError(f"{src}: missing; the train stage writes it")
        _link_or_copy(src, dest / n)
    toks = tokenizer_files(base_dir, root)
    for n, src in toks.items():
        _link_or_copy(src, dest / n)
    template = _read_json(Path(base_dir) / "base.json").get("template")
    tok_cfg = _read_json(dest / "tokenizer_config.json")
    has_chat = (dest / "chat_template.jinja").is_file() or (dest / "chat_template.json").is_file() or bool(
        tok_cfg.get("chat_template"))
    if template and not has_chat:
        (dest / PROMPT_TEMPLATE).write_text(template)
    (dest / CARD).write_text(model_card(
        spec_id=spec_id, recipe=recipe, goal=goal, owner=owner, base=base, decision=decision, dataset=dataset,
        train=train, eval_baseline=eval_baseline, eval_candidate=eval_candidate, forced=forced, run_id=run_id,
        prompt_template=template, has_chat_template=has_chat))
    write_manifest(dest, {
        "id": spec_id, "run_id": run_id, "recipe": recipe, "decision": decision.get("decision"),
        "shipped": decision.get("decision") == "ship", "forced": forced,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base": base, "base_digest": base.get("digest"), "tokenizer_digest": tokenizer_digest(toks),
        "stage_keys": stage_keys, "inputs": inputs or {},
    })
    return dest


def write_manifest(dest: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """manifest.json: `meta` plus the digest and size of every other file in the directory."""
    man = {"schema_version": "1.0", **meta, "files": _files_of(dest)}
    (Path(dest) / MANIFEST).write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")
    return man


def _files_of(dest: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(Path(dest).rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(dest).as_posix()] = {"digest": _digest(p), "size": p.stat().st_size}
    return out


# --- the package stage ---------------------------------------------------------------------

def build_package(ctx: Any) -> None:
    """Build function of the `package` stage: artifact.json, and specialist/ when the run ships."""
    from factory.records import Artifact, FileRef, write_record

    inputs = {k: Path(v) for k, v in ctx.inputs.items()}
    decision = _read_json(inputs["decide"] / "decision.json")
    if not decision:
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
    shipped = decision.get("decision") == "ship"
    forced = bool(ctx.config.get("force", False))
    base_digest = ctx.input_digests.get("base") or ""
    out = Path(ctx.out)
    write_record(out / "artifact.json", Artifact(adapter=refs, base_digest=base_digest,
                                                 tokenizer_digest=tokenizer_digest(toks), shipped=shipped))
    if not (shipped or forced):
        ctx.log(f"package: decision is {decision.get('decision')}; artifact.json only, no specialist")
        return
    recipe = str(ctx.config.get("recipe") or getattr(getattr(ctx, "recipe", None), "name", "") or "specialist")
    base_info = {"family": ctx.config.get("family"), "model": ctx.config.get("base_model"), "digest": base_digest}
    write_specialist(
        out / SPECIALIST_DIR, spec_id=f"{recipe}-{ctx.key[:8]}", adapter_dir=adapter_dir, base_dir=inputs["base"],
        root=root, recipe=recipe, goal=str(ctx.config.get("goal") or ""), owner=str(ctx.config.get("owner") or ""),
        base=base_info, decision=decision, dataset=_read_json(inputs["dataset"] / "dataset.json"),
        train=_read_json(inputs["train"] / "train.json"),
        eval_baseline=_read_json(inputs["eval-baseline"] / "eval-baseline.json"),
        eval_candidate=_read_json(inputs["eval-candidate"] / "eval-candidate.json"),
        forced=forced and not shipped, run_id=None, stage_keys={"package": ctx.key},
        inputs=dict(ctx.input_digests),
    )


# --- publishing ----------------------------------------------------------------------------

def specialist_id(run_dir: Path, recipe: str | None = None) -> str:
    """<recipe>-<key8> from a run directory named <date>-<recipe>-<key8>."""
    name = Path(run_dir).name
    key8 = name.rsplit("-", 1)[-1]
    if recipe is None:
        recipe = _read_json(Path(run_dir) / "config.json").get("recipe") or name[11:].rsplit("-", 1)[0]
    return f"{recipe}-{key8}"


def _run_meta(run_dir: Path) -> dict[str, Any]:
    man = _read_json(run_dir / "run_manifest.json")
    cfg = _read_json(run_dir / "config.json")
    return {"run_id": man.get("run_id") or run_dir.name,
            "stage_keys": man.get("stage_keys") or cfg.get("stage_keys") or {}}


def publish_specialist(run_dir: Path, root: Path) -> Path | None:
    """Copy (hardlink) a run's specialist/ to specialists/<id>/; None if the run has none.

    The published manifest adds the run id and every stage key, which the
    package stage cannot know (the run's key includes its own).
    """
    run_dir = Path(run_dir)
    src = run_dir / SPECIALIST_DIR
    if not (src / MANIFEST).is_file():
        return None
    src_man = _read_json(src / MANIFEST)
    spec_id = specialist_id(run_dir, src_man.get("recipe"))
    dest = Path(root) / "specialists" / spec_id
    meta = _run_meta(run_dir)
    if (dest / MANIFEST).is_file():
        old = _read_json(dest / MANIFEST)
        if old.get("files") == src_man.get("files") and old.get("run_id") == meta["run_id"]:
            return dest  # already published
    tmp = dest.with_name(f".{spec_id}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for p in sorted(src.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            _link_or_copy(p, tmp / p.relative_to(src))
    man = {**src_man, **meta, "id": spec_id}
    (tmp / MANIFEST).write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


# --- commands ------------------------------------------------------------------------------

def best_run(root: Path, recipe: str) -> str:
    """The best shipped run of a recipe, by the index: highest primary score, least breadth loss, newest."""
    from factory import index

    runs_dir = Path(root) / "runs"
    index._ready(runs_dir, log=lambda m: print(m, file=sys.stderr))
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


def package_run(root: Path, run_dir: Path, force: bool = False) -> Path:
    """specialists/<id>/ for a run: published from its specialist/, or built from the run when forced."""
    root, run_dir = Path(root), Path(run_dir)
    decision = _read_json(run_dir / "decision.json")
    if not decision:
        raise FactoryError(f"{run_dir.name}: no decision.json; the run is not complete")
    verdict = decision.get("decision")
    if verdict != "ship" and not force:
        raise FactoryError(f"{run_dir.name}: decision is {verdict} ({decision.get('reason', '')}); "
                           "only shipped runs are packaged; --force packages it anyway and the card says so")
    if verdict == "ship" and (run_dir / SPECIALIST_DIR / MANIFEST).is_file():
        dest = publish_specialist(run_dir, root)
        assert dest is not None
        return dest
    meta = _run_meta(run_dir)
    cfg = _read_json(run_dir / "config.json")
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
        decision=decision, dataset=_read_json(run_dir / "dataset.json"), train=_read_json(run_dir / "train.json"),
        eval_baseline=_read_json(run_dir / "eval-baseline.json"),
        eval_candidate=_read_json(run_dir / "eval-candidate.json"),
        forced=verdict != "ship", run_id=meta["run_id"], stage_keys=meta["stage_keys"],
    )
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return dest


def cli_package(root: Path, run: str | None, best: str | None, force: bool) -> int:
    """`factory package <run>` or `factory package --best <recipe>` [--force]."""
    root = Path(root)
    try:
        if best and run:
            raise FactoryError("package: name a run or --best <recipe>, not both")
        ref = best_run(root, best) if best else run
        if not ref:
            raise FactoryError("package: name a run, or --best <recipe>")
        from factory.runs import resolve_run

        run_dir = resolve_run(root, ref)
        dest = package_run(root, run_dir, force)
    except FactoryError as e:
        print(f"factory package: {e}", file=sys.stderr)
        return 1
    man = _read_json(dest / MANIFEST)
    note = " (forced: the run did not ship; the card says so)" if man.get("forced") else ""
    print(f"{dest}: {len(man.get('files', {}))} files from run {man.get('run_id')}{note}")
    try:
        from factory import index

        index.refresh(root / "runs", only=[])
    except Exception as e:  # the index is derived; packaging has succeeded
        print(f"factory package: index not refreshed ({e})", file=sys.stderr)
    return 0


def verify(path: Path) -> list[str]:
    """Problems found in a specialist directory, one line each; empty when every digest matches."""
    path = Path(path)
    man_path = path / MANIFEST
    if not man_path.is_file():
        raise FactoryError(f"{man_path}: missing; not a packaged specialist")
    man = _read_json(man_path)
    files = man.get("files")
    if not isinstance(files, dict) or not files:
        raise FactoryError(f"{man_path}: files: missing or empty")
    problems = []
    for rel, ref in sorted(files.items()):
        p = path / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
            continue
        if ref.get("size") is not None and p.stat().st_size != ref["size"]:
            problems.append(f"{rel}: changed (size {p.stat().st_size}, manifest says {ref['size']})")
        elif _digest(p) != ref.get("digest"):
            problems.append(f"{rel}: changed (digest differs from the manifest)")
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_file() and p.name != MANIFEST and rel not in files:
            problems.append(f"{rel}: not in the manifest")
    return problems


def cli_verify(path: str) -> int:
    """`factory verify specialists/<id>`: 0 when every file matches its digest, else 1 naming each file."""
    try:
        problems = verify(Path(path))
    except FactoryError as e:
        print(f"factory verify: {e}", file=sys.stderr)
        return 1
    if problems:
        for p in problems:
            print(f"factory verify: {path}: {p}", file=sys.stderr)
        return 1
    n = len(_read_json(Path(path) / MANIFEST).get("files", {}))
    print(f"{path}: ok, {n} files match manifest.json")
    return 0
