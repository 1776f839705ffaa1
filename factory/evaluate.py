"""The `eval` stage: one model (a base, or a base plus adapter) scored by every suite the recipe names.

The model is loaded once and every suite runs on it. Each suite writes one
samples file (`samples/<role>/<suite>.jsonl`, one JSON line per row) and its
scores, with the file's digest, land in `eval-<role>.json`, so every number
can be traced to the rows behind it. A suite that raises is recorded as
`failed` with its error, and the gate blocks on it; the stage itself still
succeeds, so the other suites' evidence is kept.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

from factory import hashing, samplecache
from factory.errors import FactoryError
from factory.records import EvalRecord, FileRef, ModelRef, SampleRecord, Score, SuiteResult, read_rows, write_record


def adapter_dir_of(path: Path | None) -> Path | None:
    """The directory holding adapter files: `<train stage>/adapter/`, or the given directory itself."""
    if path is None:
        return None
    path = Path(path)
    return path / "adapter" if (path / "adapter").is_dir() else path


def samples_path(role: str, suite: str) -> str:
    return f"samples/{role}/{suite}.jsonl"


def write_samples(path: Path, samples: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for s in samples:
            SampleRecord.model_validate(s)  # a suite that writes a malformed sample fails here, loudly
            f.write(json.dumps(s, sort_keys=True, ensure_ascii=False) + "\n")


def _scores(d: dict[str, Any]) -> dict[str, Score]:
    return {k: v if isinstance(v, Score) else Score.model_validate(v) for k, v in d.items()}


def run_suite(
    suite: Any, lm: Any, rows: list[dict[str, Any]], settings: dict[str, Any], role: str, out: Path,
    name: str | None = None,
) -> SuiteResult:
    """Run one suite and write its samples under `name` (the instance; default the suite's own name).

    A raising suite becomes a `failed` result.
    """
    name = name or suite.name
    result = SuiteResult(
        suite=name,
        version=str(suite.version),
        rows=len(rows),
        data_digest=hashing.digest_json(rows),
        primary_metric=suite.primary_metric,
    )
    if name != suite.name:
        result.instance_of = suite.name
    from factory.ml.generate import collect_notes, progress_label

    try:
        if not rows:
            raise FactoryError(f"suite {name}: no {suite.needs} rows to score")
        with collect_notes() as notes, progress_label(name):
            output = suite.evaluate(lm, rows, settings)
        if notes:
            result.notes = list(notes)
        rel = samples_path(role, name)
        write_samples(out / rel, output.samples)
        result.scores = _scores(output.scores)
        result.per_skill = _scores(output.per_skill or {})
        result.rows = len(output.samples)
        result.samples = FileRef(path=rel, digest=hashing.hash_file(out / rel), size=(out / rel).stat().st_size)
        if suite.primary_metric not in result.scores:
            raise FactoryError(f"suite {name}: no score for its primary metric {suite.primary_metric!r}")
    except Exception as e:  # recorded, not raised: the gate blocks on a failed suite
        result.status = "failed"
        result.error = f"{type(e).__name__}: {e}".splitlines()[0]
        result.traceback = traceback.format_exc(limit=8)
    return result


def suite_spec(entry: Any) -> dict[str, Any]:
    """A stage config's suite entry as {"name", "suite", "options"}.

    Entries are a name, {"name", "version"}, or an instance {"name", "suite", "version", "options"};
    a missing "suite" means the suite of that name, missing options mean {}.
    """
    if isinstance(entry, str):
        return {"name": entry, "suite": entry, "options": {}}
    return {"name": entry["name"], "suite": entry.get("suite") or entry["name"], "options": dict(entry.get("options") or {})}


def _check_options(suite: Any, spec: dict[str, Any]) -> dict[str, Any]:
    model = getattr(suite, "Options", None)
    if model is None:
        return spec["options"]
    from factory import options

    return options.dump(model, spec["options"], f"evals.define.{spec['name']}.options")


def build_eval(ctx: Any) -> None:
    """Build function of the `eval` stage kind (see the module docstring)."""
    cfg = ctx.config
    role = cfg["role"]
    if role not in ("baseline", "candidate"):
        raise FactoryError(f"eval stage {ctx.stage}: role must be baseline or candidate, not {role!r}")
    settings = dict(cfg.get("settings") or {})
    specs = [suite_spec(s) for s in cfg["suites"]]
    suites = [ctx.registry.suites.get(spec["suite"]) for spec in specs]  # unknown names fail before loading
    limit = settings.get("limit")

    data: dict[str, list[dict[str, Any]]] = {}
    for need in sorted({s.needs for s in suites} - {"own"}):
        if need not in ctx.inputs:
            raise FactoryError(f"eval stage {ctx.stage}: a suite needs {need!r} rows but the stage has no such input")
        rows = read_rows(ctx.inputs[need])
        data[need] = rows[: int(limit)] if limit else rows  # file order is fixed by the dataset stage
    # Suites with their own data (a benchmark file): read and checked before the model loads, so a
    # malformed file is one line naming the file and its line, not a failed suite after minutes.
    own: dict[str, list[dict[str, Any]]] = {}
    for spec, suite in zip(specs, suites):
        if suite.needs == "own":
            opts = _check_options(suite, spec)
            try:
                rows = suite.load_rows(opts, Path(getattr(ctx, "root", ".")))
            except FactoryError as e:
                where = f"evals.define.{spec['name']}"
                msg = str(e)
                raise FactoryError(f"{where}.{msg}" if msg.startswith("options.") else f"{where}: {msg}") from None
            # A suite that applies the limit itself (per task, say) gets all its rows.
            cut = limit and not getattr(suite, "applies_limit", False)
            own[spec["name"]] = rows[: int(limit)] if cut else rows

    adapter = adapter_dir_of(ctx.inputs.get("adapter"))
    if role == "candidate" and adapter is None:
        raise FactoryError(f"eval stage {ctx.stage}: the candidate needs an adapter input")
    family = ctx.registry.families.get(cfg["family"])
    t0 = time.perf_counter()
    load_settings = dict(cfg.get("load") or {})
    lm = family.load(Path(ctx.inputs["base"]), adapter, load_settings)
    load_s = time.perf_counter() - t0
    # What a suite needs to load this model again in a fresh process (the mode-switch probe):
    # the family by name and the plugin that registers it, the same directories and settings.
    plugin_of = getattr(ctx.registry, "plugin_of", None)
    info = plugin_of("family", family.name) if plugin_of is not None else None
    lm.source = {"family": family.name, "plugin": info.name if info else type(family).__module__,
                 "base": str(Path(ctx.inputs["base"]).resolve()),
                 "adapter": str(Path(adapter).resolve()) if adapter is not None else None,
                 "settings": load_settings, "root": str(Path(getattr(ctx, "root", None) or ".").resolve())}

    base_digest = ctx.input_digests.get("base") or hashing.digest_tree(Path(ctx.inputs["base"]))
    adapter_digest = hashing.digest_tree(adapter) if adapter is not None else None
    root = getattr(ctx, "root", None)
    cache = samplecache.for_model(Path(root), base_digest, adapter_digest, family.name, lm) if root else None

    results = []
    timings: dict[str, float] = {}
    with samplecache.using(cache):
        for spec, suite in zip(specs, suites):
            name = spec["name"]
            rows = own[name] if suite.needs == "own" else data[suite.needs]
            per_suite = {**settings, "options": spec["options"], "name": name, "root": str(getattr(ctx, "root", "."))}
            t = time.perf_counter()
            results.append(run_suite(suite, lm, rows, per_suite, role, Path(ctx.out), name))
            timings[name] = round(time.perf_counter() - t, 3)
            r = results[-1]
            ctx.log(f"{ctx.stage}: {name} {r.status} in {timings[name]:.1f}s")
            for note in getattr(r, "notes", None) or []:
                ctx.log(f"{ctx.stage}: {name}: {note}")
    if cache is not None and (cache.hits or cache.misses):
        ctx.log(f"{ctx.stage}: generations: {cache.hits} from the sample cache, {cache.misses} generated")

    record = EvalRecord(
        role=role,
        model=ModelRef(base_digest=base_digest, adapter_digest=adapter_digest),
        heldout_digest=ctx.input_digests.get("heldout"),
        suites=results,
        settings=settings,
    )
    # Timings differ on every execution: the stage manifest and events keep them, not the record.
    facts = getattr(ctx, "facts", None)
    if facts is not None:
        facts.update({"seconds": round(time.perf_counter() - t0, 3), "timings": {"load": round(load_s, 3), **timings}})
    write_record(Path(ctx.out) / f"eval-{role}.json", record)
