"""`factory eval`: run eval suites on any local model, a run's candidate or a specialist, without a recipe.

    factory eval models/my-model --suite evals/support.jsonl
    factory eval models/my-model --adapter specialists/x --suite 'mc=benchmark:path=evals/mc.csv,scorer=choice'
    factory eval runs/2026-12-01-pace-planner-1a2b3c4d --suite json-action --rows data/heldout.jsonl
    factory eval specialists/pace-planner-1a2b3c4d --suite evals/support.jsonl

What is loaded (`find_target`):
- a transformers model directory: through the `hf` family (its tree digest checked as a recipe's
  base is), optionally with a LoRA adapter directory (`--adapter`);
- a run (its directory, its id under runs/, or a recipe name: its newest run): its candidate,
  loaded by the family plugin the run's config.json names, from the base stage's output in the
  store (`stage_keys.base`) and the run's `adapter/` (the last training step's output, checked
  against the run manifest's digests);
- a packaged specialist (`specialists/<id>/`): its adapter files as packaged (verified against
  its manifest) on the base its manifest names, the base stage's output in the store.
Each `--suite` is a benchmark file (a `.jsonl`/`.csv`/`.tsv` path: a `benchmark` instance named
by the file's stem, scored by exact match), or `[NAME=]SUITE[:OPTION=VALUE,...]` for any
registered suite; suites that read held-out rows take them from `--rows`.

The evaluation is an `eval-only` stage in the store, keyed by the model's digests (the base's,
the adapter's tree), the family and its load settings, the suites with their versions and
options, the digests of their files and rows, the settings and the code, so a second call with
nothing changed is a hit that rebuilds nothing. Its outputs (the eval record and the samples)
are linked into a run directory, `runs/<date>-eval-<name>-<key8>/`, whose `run_manifest.json`
says `"eval_only": true`, and the index ingests it like any run. Generations also go through
the per-sample cache (factory.samplecache), keyed by the same base digest a recipe's eval stages
use, so a run's own generations are found again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from factory import hashing
from factory.errors import FactoryError

BENCH_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
SCHEMA_VERSION = "1.0"  # of the run files written here (factory.records)


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
        raise FactoryError(f"{path}: no such model directory, run or specialist")
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


@dataclass
class Target:
    """What `factory eval` loads: a family, the directory its `load` reads as the base, an adapter."""

    kind: str  # "model" (a model directory), "run" or "specialist"
    path: Path
    name: str  # for the run directory's name
    family: Any
    base_digest: str
    base: dict[str, Any]  # config.json's base: family, model, digest
    load: dict[str, Any]  # the family's load settings
    adapter_dir: Path | None = None
    base_dir: Path | None = None  # None: written by the family's build_base at build time
    base_cfg: dict[str, Any] | None = None  # the base config build_base reads
    origin: dict[str, Any] = field(default_factory=dict)  # which stage outputs it came from


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FactoryError(f"{path}: missing") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise FactoryError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise FactoryError(f"{path}: expected a JSON object")
    return data


def _device(device: str) -> str:
    from factory.fastpath import cuda_available

    return ("cuda" if cuda_available() else "cpu") if device == "auto" else device


def _stage_output(store: Any, key: str | None) -> tuple[Path, str] | None:
    """(the stage's output directory, its output digest) when the store holds it whole, else None."""
    man = store.check(key) if key else None
    if man is None:
        return None
    return store.tree(key, man), man["output_digest"]


def find_target(root: Path, ref: str, adapter: str | None, device: str, regs: Any) -> Target:
    """A model directory, a run (its directory or id) or a packaged specialist, as a Target; else a one-line error."""
    p = Path(ref).expanduser()
    cands = [p] if p.is_absolute() else [root / p, Path.cwd() / p]
    path = next((c for c in cands if c.is_dir()), None)
    if path is None and "/" not in ref and (root / "specialists" / ref / "manifest.json").is_file():
        path = root / "specialists" / ref
    if path is None and "/" not in ref:
        from factory.runs import resolve_run

        try:
            path = resolve_run(root, ref)
        except FactoryError as e:
            if "matches" in str(e):
                raise
    if path is None:
        raise FactoryError(f"{ref}: no such model directory, run or specialist (runs: `factory runs`; "
                           "specialists: specialists/)")
    path = path.resolve()
    if (path / "run_manifest.json").is_file():
        return _run_target(root, path, adapter, device, regs)
    if (path / "manifest.json").is_file() and not (path / "config.json").is_file():
        return _specialist_target(root, path, adapter, device, regs)
    check_model_dir(path)
    adapter_dir = None
    if adapter:
        a = Path(adapter).expanduser()
        adapter_dir = check_adapter_dir(a if a.is_absolute() else root / a)
    family = regs.families.get("hf")
    base_cfg = family.resolve_base({"model": str(path), "options": {"device": device}}, root)
    tag = (adapter_dir.parent.name if adapter_dir.name == "adapter" else adapter_dir.name) if adapter_dir else ""
    return Target(kind="model", path=path, name=path.name + (f"+{tag}" if tag else ""), family=family,
                  base_digest=base_cfg["digest"], base={"family": "hf", "model": _rel(path, root),
                                                        "digest": base_cfg["digest"], "dtype": base_cfg["dtype"]},
                  load={"device": base_cfg["device"]}, adapter_dir=adapter_dir, base_cfg=base_cfg)


def _no_adapter_arg(rel: str, adapter: str | None, what: str) -> None:
    if adapter:
        raise FactoryError(f"--adapter: {rel} is a {what} and brings its own adapter; to pair another adapter "
                           "with a base, give the base's model directory")


def _run_target(root: Path, run: Path, adapter: str | None, device: str, regs: Any) -> Target:
    """A run's candidate: the base stage's output (from the store) and the adapter of its last training step."""
    from factory.store import Store

    rel = _rel(run, root)
    _no_adapter_arg(rel, adapter, "run")
    cfg = _read_json(run / "config.json")
    if cfg.get("eval_only"):
        raise FactoryError(f"{rel}: an evaluation run (factory eval) holds no model of its own; evaluate the model "
                           f"it names ({(cfg.get('target') or {}).get('path') or (cfg.get('base') or {}).get('model')})")
    base = cfg.get("base") or {}
    keys = cfg.get("stage_keys") or {}
    if not base.get("family") or "base" not in keys:
        raise FactoryError(f"{rel}/config.json: base.family and stage_keys.base are needed to load the run's model")
    family = regs.families.get(base["family"])  # the plugin the run names; unknown: one line listing them
    adapter_dir = run / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        stops = sorted((run / "stopped").glob("*.json")) if (run / "stopped").is_dir() else []
        if stops:
            stop = _read_json(stops[0])
            why = stop.get("reason") or (stop.get("verdict") or {}).get("reason") or f"stopped by {stop.get('stopped_by')}"
            raise FactoryError(f"{rel}: did not train: stage {stops[0].stem} was stopped ({why}); "
                               "there is no candidate to evaluate")
        raise FactoryError(f"{rel}: no adapter/ (the output of its train stage); the run has no candidate to evaluate")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise FactoryError(f"{rel}/adapter: no adapter weights (adapter_model.safetensors)")
    files = _read_json(run / "run_manifest.json").get("files") or {}
    for f in sorted(adapter_dir.iterdir()):
        want = files.get(f"adapter/{f.name}")
        if want and f.is_file() and hashing.hash_file(f) != want:
            raise FactoryError(f"{rel}/adapter/{f.name}: changed since the run was made (`factory run validate {run.name}`)")
    store = Store(root / "cache")
    got = _stage_output(store, keys["base"])
    if got is None:
        raise FactoryError(f"{rel}: its base (stage base, key {keys['base'][:12]}) is not in the store (cache/); "
                           f"restore it with `factory cache pull {cfg.get('recipe')}` from a shared store, or build the recipe again "
                           f"(doit recipe:{cfg.get('recipe')})")
    base_dir, base_digest = got
    train = next((n for n in reversed(list(keys)) if n == "train" or n.startswith("train-")), None)
    return Target(kind="run", path=run, name=run.name, family=family, base_digest=base_digest,
                  base={"family": family.name, "model": base.get("model"), "digest": base_digest},
                  load={"device": _device(device)}, adapter_dir=adapter_dir, base_dir=base_dir,
                  origin={"run": run.name, "base": f"stage base {keys['base']}",
                          "adapter": f"{rel}/adapter" + (f" (stage {train} {keys[train]})" if train else "")})


def _specialist_target(root: Path, spec: Path, adapter: str | None, device: str, regs: Any) -> Target:
    """A packaged specialist: its adapter files as packaged, on the base its manifest names (from the store)."""
    from factory.specialists import ADAPTER_FILES, verify
    from factory.store import Store

    rel = _rel(spec, root)
    _no_adapter_arg(rel, adapter, "specialist")
    man = _read_json(spec / "manifest.json")
    for n in ADAPTER_FILES:
        if not (spec / n).is_file():
            raise FactoryError(f"{rel}: no adapter weights ({n} missing); not a complete specialist")
    problems = verify(spec)
    if problems:
        raise FactoryError(f"{rel}: {problems[0]} (`factory verify {rel}` lists every change)")
    base = man.get("base") or {}
    if not base.get("family"):
        raise FactoryError(f"{rel}/manifest.json: base.family: missing; the manifest must name its base")
    family = regs.families.get(base["family"])
    digest = man.get("base_digest") or base.get("digest")
    key = (man.get("stage_keys") or {}).get("base")
    got = _stage_output(Store(root / "cache"), key)
    if got is None or (digest and got[1] != digest):
        raise FactoryError(f"{rel}: its base ({base['family']} {base.get('model')}, digest {str(digest)[:12]}) is not in "
                           f"this project's store; build recipe {man.get('recipe')} here to restore it"
                           + (", or give the base's model directory with --adapter " + rel if base["family"] == "hf" else ""))
    base_dir, base_digest = got
    return Target(kind="specialist", path=spec, name=spec.name, family=family, base_digest=base_digest,
                  base={"family": family.name, "model": base.get("model"), "digest": base_digest},
                  load={"device": _device(device)}, adapter_dir=spec, base_dir=base_dir,
                  origin={"specialist": man.get("id") or spec.name, "run": man.get("run_id"),
                          "base": f"stage base {key}", "adapter": rel})


def _code_digest(family: Any, suites: list[Any]) -> dict[str, str]:
    from factory.evaluate import build_eval
    from factory.stages import code_closure

    return code_closure([build_eval, family.load, *sorted({type(s).__module__ for s in suites}),
                         *sorted({m for s in suites for m in getattr(s, "code_modules", ())})])


def run_eval(root: Path, model: str, suite_args: list[str], adapter: str | None = None, rows: str | None = None,
             limit: int | None = None, batch_size: int = 64, max_new_tokens: int = 96,
             device: str = "auto") -> dict[str, Any]:
    """Evaluate; returns {"run": run dir, "key", "hit", "record", "target"}. Every bad input is a FactoryError."""
    from factory import options as opt
    from factory import plugins
    from factory.store import Store

    root = Path(root).resolve()
    if not suite_args:
        raise FactoryError("eval: name at least one --suite")
    regs = plugins.registries()
    target = find_target(root, model, adapter, device, regs)

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

    settings = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "limit": limit}
    role = "candidate" if target.adapter_dir is not None else "baseline"
    adapter_digest = hashing.digest_tree(target.adapter_dir) if target.adapter_dir is not None else None
    family = target.family
    config = {"role": role, "family": family.name, "suites": entries, "settings": settings, "load": target.load}
    from factory.stages import numerics_versions

    key = hashing.digest_json({
        "kind": "eval-only", "config": config, "code": _code_digest(family, suites), "libs": numerics_versions(),
        "family_version": str(getattr(family, "version", "")),
        "inputs": {"base": target.base_digest, "dtype": target.base.get("dtype"), "adapter": adapter_digest, **digests},
    })

    store = Store(root / "cache")
    hit = store.check(key) is not None
    if not hit:
        _build(store, key, root, target, config, rows_path, inputs, regs)
    run = _materialize(store, key, root, target, adapter_digest, entries, role)
    record = json.loads((run / f"eval-{role}.json").read_text())
    _refresh_index(root, run)
    return {"run": run, "key": key, "hit": hit, "record": record, "role": role, "target": target}


def _build(store: Any, key: str, root: Path, target: Target, config: dict[str, Any], rows_path: Path | None,
           needs: dict[str, Any], regs: Any) -> None:
    from types import SimpleNamespace

    from factory.evaluate import build_eval

    out = store.new_build_dir()
    base_dir = target.base_dir
    made = None
    try:
        if base_dir is None:  # a model directory: the family writes its base record, as a recipe's base stage does
            made = base_dir = out.parent / f"{out.name}-base"
            base_dir.mkdir(parents=True)
            target.family.build_base(SimpleNamespace(config={"base": target.base_cfg}, out=base_dir))
        inputs: dict[str, Any] = {"base": base_dir}
        for need in needs:
            inputs[need] = rows_path
        if target.adapter_dir is not None:
            inputs["adapter"] = target.adapter_dir
        ctx = SimpleNamespace(stage="eval", out=out, root=root, log=lambda m: print(m, flush=True),
                              registry=regs, config=config, inputs=inputs,
                              input_digests={"base": target.base_digest})
        try:
            build_eval(ctx)
        except FactoryError as e:  # the stage names a recipe's field; here the suite came from --suite
            msg = str(e)
            for entry in config["suites"]:
                field = f"evals.define.{entry['name']}"
                if msg.startswith(field):
                    raise FactoryError(f"--suite {entry['name']}{msg[len(field):]}") from None
            raise
        store.publish(key, out, {"kind": "eval-only", "stage": "eval"})
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "model"


def _materialize(store: Any, key: str, root: Path, target: Target, adapter_digest: str | None,
                 entries: list[dict[str, Any]], role: str) -> Path:
    """The run directory of this evaluation (made once; a hit finds it again)."""
    runs = root / "runs"
    name_part = _slug(target.name)
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
    recipe = f"eval:{_slug(target.path.name)}"
    adapter = target.adapter_dir
    config = {"recipe": recipe, "goal": f"evaluation of a {'local model' if target.kind == 'model' else target.kind}",
              "eval_only": True, "method": "eval-only", "base": target.base,
              "target": {"kind": target.kind, "path": _rel(target.path, root), **target.origin},
              "adapter": {"path": _rel(adapter, root), "digest": adapter_digest} if adapter else None,
              "evals": {"primary": entries[0]["name"], "regression": [e["name"] for e in entries[1:]]},
              "suites": entries, "stage_keys": {"eval": key}}
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # a RunManifest (factory.records), so compare and validate read it as any run's
    manifest = {"schema_version": SCHEMA_VERSION, "eval_only": True, "recipe": recipe, "run_id": run.name,
                "recipe_path": "", "created": now.isoformat(timespec="seconds"), "device": target.load.get("device"),
                "stage_keys": {"eval": key}}
    (tmp / "run_manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, run)  # the run appears whole, or not at all
    return run


def _refresh_index(root: Path, run: Path) -> None:
    from factory.index import refresh_written

    note = refresh_written(root / "runs", [run.name])
    if note:
        print(f"factory eval: {note}")


def cli_eval(root: Path, args: Any) -> int:
    res = run_eval(root, args.model, args.suite or [], adapter=args.adapter, rows=args.rows, limit=args.limit,
                   batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, device=args.device)
    rec = res["record"]
    t = res["target"]
    if t.kind != "model":
        print(f"{t.kind} {_rel(t.path, Path(root))}: {t.family.name} base from {t.origin['base'][:23]}, "
              f"adapter {t.origin['adapter']}")
    print(f"{'hit' if res['hit'] else 'built'}: {_rel(res['run'], Path(root))} (key {res['key'][:12]})")
    for s in rec["suites"]:
        if s["status"] != "ok":
            print(f"  {s['suite']}: failed: {s.get('error')}")
            continue
        score = s["scores"][s["primary_metric"]]
        ci = f" [{score['ci_low']:.3f}, {score['ci_high']:.3f}]" if score.get("ci_low") is not None else ""
        print(f"  {s['suite']}: {s['primary_metric']} {score['value']:.3f}{ci} n={score['n']}")
    return 0 if all(s["status"] == "ok" for s in rec["suites"]) else 1
