"""`factory eval`: run eval suites on any local model, without a recipe.

    factory eval models/my-model --suite evals/support.jsonl
    factory eval models/my-model --adapter specialists/x/adapter --suite 'mc=benchmark:path=evals/mc.csv,scorer=choice'
    factory eval models/my-model --suite json-action --rows data/heldout.jsonl

The model is a transformers model directory, loaded through the `hf` family (its tree digest
checked as a recipe's base is), optionally with a LoRA adapter directory. Each `--suite` is a
benchmark file (a `.jsonl`/`.csv`/`.tsv` path: a `benchmark` instance named by the file's stem,
scored by exact match), or `[NAME=]SUITE[:OPTION=VALUE,...]` for any registered suite; suites
that read held-out rows take them from `--rows`.

The evaluation is an `eval-only` stage in the store, keyed by the model's digests, the suites
with their versions and options, the digests of their files and rows, the settings and the code,
so a second call with nothing changed is a hit that rebuilds nothing. Its outputs (the eval
record and the samples) are linked into a run directory, `runs/<date>-eval-<model>-<key8>/`,
whose `run_manifest.json` says `"eval_only": true`, and the index ingests it like any run.
Generations also go through the per-sample cache (factory.samplecache).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from factory import hashing
from factory.errors import FactoryError

BENCH_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
SCHEMA_VERSION = 1


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_suite(arg: str, root: Path) -> dict[str, Any]:
    """One `--suite` argument as a stage config entry {"name", "suite", "options"}."""
    p = Path(arg)
    if p.suffix.lower() in BENCH_SUFFIXES:
        full = p if p.is_absolute() else root / p
        if not full.is_file():
            raise FactoryError(f"--suite {arg}: no such benchmark file")
        return {"name": p.stem, "suite": "benchmark", "options": {"path": _rel(full, root)}}
    m = re.fullmatch(r"(?:([A-Za-z0-9_.-]+)=)?([A-Za-z0-9_.-]+)(?::(.*))?", arg)
    if not m:
        raise FactoryError(f"--suite {arg}: expected a benchmark file or [NAME=]SUITE[:OPTION=VALUE,...]")
    name, suite, rest = m.group(1) or m.group(2), m.group(2), m.group(3)
    options: dict[str, Any] = {}
    for part in (rest or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise FactoryError(f"--suite {arg}: option {part!r} is not OPTION=VALUE")
        k, v = part.split("=", 1)
        options[k.strip()] = _value(v.strip())
    return {"name": name, "suite": suite, "options": options}


def check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise FactoryError(f"{path}: no such model directory")
    if not (path / "config.json").is_file():
        raise FactoryError(f"{path}: not a transformers model directory (no config.json)")
    if not any(next(path.glob(pat), None) for pat in WEIGHT_PATTERNS):
        raise FactoryError(f"{path}: no model weights (no *.safetensors or *.bin file)")


def check_adapter_dir(path: Path) -> Path:
    from factory.evaluate import adapter_dir_of

    path = adapter_dir_of(path)
    if not (path / "adapter_config.json").is_file():
        raise FactoryError(f"{path}: not a LoRA adapter directory (no adapter_config.json)")
    return path


def _code_digest(regs: Any, suites: list[Any]) -> dict[str, str]:
    from factory.stages import module_ast_digest

    mods = {"factory.evaluate", "factory.ml.generate", "factory.ml.text", "factory_plugins.hf"}
    for s in suites:
        mods.add(type(s).__module__)
        mods.update(getattr(s, "code_modules", ()))
    return {m: module_ast_digest(m) for m in sorted(mods)}


def run_eval(root: Path, model: str, suite_args: list[str], adapter: str | None = None, rows: str | None = None,
             limit: int | None = None, batch_size: int = 64, max_new_tokens: int = 96,
             device: str = "auto") -> dict[str, Any]:
    """Evaluate; returns {"run": run dir, "key", "hit", "record"}. Every bad input is a FactoryError."""
    from factory import options as opt
    from factory import plugins
    from factory.store import Store

    root = Path(root).resolve()
    if not suite_args:
        raise FactoryError("eval: name at least one --suite")
    model_dir = Path(model).expanduser()
    model_dir = model_dir if model_dir.is_absolute() else root / model_dir
    check_model_dir(model_dir)
    adapter_dir = None
    if adapter:
        a = Path(adapter).expanduser()
        adapter_dir = check_adapter_dir(a if a.is_absolute() else root / a)
    regs = plugins.registries()
    family = regs.families.get("hf")

    entries, suites, inputs, digests = [], [], {}, {}
    for arg in suite_args:
        e = parse_suite(arg, root)
        if any(x["name"] == e["name"] for x in entries):
            raise FactoryError(f"--suite {arg}: a suite named {e['name']!r} is given twice; name one NAME=SUITE")
        suite = regs.suites.get(e["suite"])
        model_cls = getattr(suite, "Options", None)
        if model_cls is not None:
            e["options"] = opt.dump(model_cls, e["options"], f"--suite {e['name']}: options")
        elif e["options"]:
            raise FactoryError(f"--suite {arg}: suite {e['suite']} takes no options")
        for f in (suite.files(e["options"], root) if hasattr(suite, "files") else ()):
            full = Path(f) if Path(f).is_absolute() else root / f
            if not full.is_file():
                raise FactoryError(f"--suite {arg}: {f}: no such file")
            digests[f"suite.{e['name']}.{f}"] = hashing.digest_file(full)
        if suite.needs != "own":
            if not rows:
                raise FactoryError(f"--suite {arg}: suite {e['suite']} reads {suite.needs} rows; give them with --rows FILE")
            inputs[suite.needs] = None
        entries.append({**e, "version": str(suite.version)})
        suites.append(suite)
    rows_path = None
    if inputs:
        rows_path = Path(rows) if Path(rows).is_absolute() else root / rows
        if not rows_path.is_file():
            raise FactoryError(f"--rows {rows}: no such file")
        from factory_plugins.datasets import check_jsonl

        check_jsonl(rows_path, min_rows=1)
        digests["rows"] = hashing.digest_file(rows_path)

    base_cfg = family.resolve_base({"model": str(model_dir), "options": {"device": device}}, root)
    settings = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "limit": limit}
    role = "candidate" if adapter_dir is not None else "baseline"
    adapter_digest = hashing.digest_tree(adapter_dir) if adapter_dir is not None else None
    config = {"role": role, "family": "hf", "suites": entries, "settings": settings,
              "load": {"device": base_cfg["device"]}}
    from factory.stages import numerics_versions

    key = hashing.digest_json({
        "kind": "eval-only", "config": config, "code": _code_digest(regs, suites), "libs": numerics_versions(),
        "inputs": {"base": base_cfg["digest"], "dtype": base_cfg["dtype"], "adapter": adapter_digest, **digests},
    })

    store = Store(root / "cache")
    hit = store.manifest(key) is not None
    if not hit:
        _build(store, key, root, family, base_cfg, config, adapter_dir, rows_path, inputs)
    run = _materialize(store, key, root, model_dir, adapter_dir, base_cfg, adapter_digest, entries, role)
    record = json.loads((run / f"eval-{role}.json").read_text())
    _refresh_index(root, run)
    return {"run": run, "key": key, "hit": hit, "record": record, "role": role}


def _build(store: Any, key: str, root: Path, family: Any, base_cfg: dict[str, Any], config: dict[str, Any],
           adapter_dir: Path | None, rows_path: Path | None, needs: dict[str, Any]) -> None:
    from types import SimpleNamespace

    from factory import plugins
    from factory.evaluate import build_eval

    out = store.new_build_dir()
    base_dir = out.parent / f"{out.name}-base"
    base_dir.mkdir(parents=True)
    try:
        family.build_base(SimpleNamespace(config={"base": base_cfg}, out=base_dir))
        inputs: dict[str, Any] = {"base": base_dir}
        for need in needs:
            inputs[need] = rows_path
        if adapter_dir is not None:
            inputs["adapter"] = adapter_dir
        ctx = SimpleNamespace(stage="eval", out=out, root=root, log=lambda m: print(m, flush=True),
                              registry=plugins.registries(), config=config, inputs=inputs,
                              input_digests={"base": base_cfg["digest"]})
        build_eval(ctx)
        store.publish(key, out, {"kind": "eval-only", "stage": "eval"})
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "model"


def _materialize(store: Any, key: str, root: Path, model_dir: Path, adapter_dir: Path | None,
                 base_cfg: dict[str, Any], adapter_digest: str | None, entries: list[dict[str, Any]],
                 role: str) -> Path:
    """The run directory of this evaluation (made once; a hit finds it again)."""
    runs = root / "runs"
    name_part = _slug(model_dir.name + (f"+{adapter_dir.parent.name if adapter_dir.name == 'adapter' else adapter_dir.name}"
                                        if adapter_dir else ""))
    existing = sorted(runs.glob(f"*-eval-{name_part}-{key[:8]}")) if runs.exists() else []
    if existing:
        return existing[-1]
    now = datetime.now(timezone.utc)
    run = runs / f"{now:%Y-%m-%d}-eval-{name_part}-{key[:8]}"
    tmp = runs / f".tmp-{run.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tree = store.tree(key)
    for f in hashing.tree_files(tree):
        dest = tmp / f.relative_to(tree)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, dest)
        except OSError:
            shutil.copy2(f, dest)
    recipe = f"eval:{_slug(model_dir.name)}"
    config = {"recipe": recipe, "goal": "evaluation of a local model", "eval_only": True,
              "base": {"family": "hf", "model": _rel(model_dir, root), "digest": base_cfg["digest"]},
              "adapter": {"path": _rel(adapter_dir, root), "digest": adapter_digest} if adapter_dir else None,
              "evals": {"primary": entries[0]["name"], "regression": [e["name"] for e in entries[1:]]},
              "suites": entries, "stage_keys": {"eval": key}}
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    manifest = {"schema_version": SCHEMA_VERSION, "eval_only": True, "recipe": recipe,
                "created": now.isoformat(timespec="seconds"), "device": base_cfg["device"],
                "stage_keys": {"eval": key}}
    (tmp / "run_manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, run)  # the run appears whole, or not at all
    return run


def _refresh_index(root: Path, run: Path) -> None:
    try:
        from factory.index import refresh

        refresh(root / "runs", only=[run.name])
    except FactoryError:
        raise
    except Exception as e:  # the index is rebuilt from runs/ by any later refresh
        print(f"factory eval: the index was not refreshed ({type(e).__name__}: {e}); run `factory runs` to retry")


def cli_eval(root: Path, args: Any) -> int:
    res = run_eval(root, args.model, args.suite or [], adapter=args.adapter, rows=args.rows, limit=args.limit,
                   batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, device=args.device)
    rec = res["record"]
    print(f"{'hit' if res['hit'] else 'built'}: {_rel(res['run'], Path(root))} (key {res['key'][:12]})")
    for s in rec["suites"]:
        if s["status"] != "ok":
            print(f"  {s['suite']}: failed: {s.get('error')}")
            continue
        score = s["scores"][s["primary_metric"]]
        ci = f" [{score['ci_low']:.3f}, {score['ci_high']:.3f}]" if score.get("ci_low") is not None else ""
        print(f"  {s['suite']}: {s['primary_metric']} {score['value']:.3f}{ci} n={score['n']}")
    return 0 if all(s["status"] == "ok" for s in rec["suites"]) else 1
