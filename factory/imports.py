"""`factory import`: per-sample results of lm-evaluation-harness and Inspect, as runs in the index.

    factory import lm-eval results/                 # an lm-eval --output_path (or one results_*.json)
    factory import inspect logs/2026-...-task.eval  # an Inspect log (.eval or .json)

An import reads the external tool's own output files and writes an ordinary run directory,
`runs/<date>-import-<tool>-<model>-<key8>/`: `config.json`, `run_manifest.json` (with
`"imported": true` and an `external` block: the tool and its version, the model, the tasks, the
tool's config and the digests of the source files), an eval record (`eval-baseline.json`, or
`eval-candidate.json` when the tool evaluated a base plus an adapter) and one samples file per
task in factory's own formats (`factory.records`). The index, `factory runs`, `factory sql`, the
web app and `factory compare` read it like any run.

The run's key is the digest of the source files (with the `--model` directory when one is named),
so importing the same files twice finds the same run directory and writes nothing; an Inspect log
imported before is found by its digest without loading Inspect. A run directory appears whole, by rename, or not at all;
a failed import removes what it wrote, and a killed one leaves only hidden litter that the next
import removes.

Samples keep the tool's ids, `<task>/<doc_id>` for lm-eval (the ids factory's own `lm-eval`
suite gives, so the two pair by id) and `<task>/<sample id>` for Inspect; `factory compare`
pairs on prompt digests where the ids differ (`factory.pairing`). A sample is correct when its
first metric (lm-eval) or first score (Inspect) is 1. When the model the tool ran is a local
transformers directory (found from the tool's model arguments, or named with `--model`), the
run records its digest, the digest the `hf` family gives the same directory, so SQL can join an
imported run with factory's own runs of the same model on `base_digest`.

lm-eval's files are plain JSON and need no extra; Inspect's logs are read with Inspect's own
reader, so `factory import inspect` needs the `inspect` extra (`pip install -e ".[inspect]"`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from factory import hashing
from factory.errors import FactoryError

TOOLS = ("lm-eval", "inspect")
PRIMARY = "accuracy"
TMP_PREFIX = ".tmp-import-"


@dataclass
class Task:
    """One task of an external run: a suite of the imported run."""

    name: str
    version: str
    samples: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)  # the tool's own aggregate scores


@dataclass
class External:
    """What one external evaluation says: the tool, the model, its tasks and where it came from."""

    tool: str
    version: str
    model: str
    model_source: str
    model_args: dict[str, Any]
    config: dict[str, Any]
    created: str
    sources: dict[str, Path]  # label -> file read
    tasks: list[Task]
    status: str = "success"
    model_path: str | None = None
    adapter_path: str | None = None


# --- reading: shared -------------------------------------------------------------------------

def _json_text(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FactoryError(f"{where}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise FactoryError(f"{where}: nested too deeply") from None


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FactoryError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FactoryError(f"{path}: a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise FactoryError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return _json_text(text, str(path))


def _local_dir(name: Any, root: Path) -> str | None:
    """A model or adapter argument as a local directory, when it is one."""
    if not isinstance(name, str) or not name:
        return None
    for cand in (Path(name).expanduser(), Path(root) / name):
        if cand.is_dir() and ((cand / "config.json").is_file() or (cand / "adapter_config.json").is_file()):
            return str(cand.resolve())
    return None


def _iso(ts: Any) -> str | None:
    if isinstance(ts, (int, float)) and math.isfinite(ts):
        return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
    if isinstance(ts, str):
        try:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(timezone.utc).isoformat(
                timespec="seconds")
        except ValueError:
            return None
    return None


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


# --- reading: lm-eval --------------------------------------------------------------------------

def _lm_eval_results(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FactoryError(f"{path}: no such file or directory")
    found = sorted(path.rglob("results_*.json"))
    if not found:
        raise FactoryError(f"{path}: no lm-eval results here (no results_*.json below it; "
                           "lm-eval writes them with --output_path, samples with --log_samples)")
    return found


def _args_dict(args: Any) -> dict[str, Any]:
    """lm-eval's model_args: a dict, or the command line's 'k=v,k=v' string."""
    if isinstance(args, dict):
        return args
    if isinstance(args, str):
        out = {}
        for part in args.split(","):
            if "=" in part:
                k, v = part.split("=", 1)
                out[k.strip()] = v.strip()
        return out
    return {}


def _lm_eval_requests(sample: dict[str, Any]) -> list[tuple[str, Any]]:
    """The (context, continuation or generation settings) of each request of one logged sample.

    lm-eval's samples files hold `arguments` as {"gen_args_0": {"arg_0": ..., "arg_1": ...}, ...};
    its in-memory results (and older files) as a list of lists.
    """
    args = sample.get("arguments")
    if isinstance(args, dict):
        args = [v for _, v in sorted(args.items(), key=lambda kv: int(re.sub(r"\D", "", kv[0]) or 0))]
        args = [[a.get(f"arg_{i}") for i in range(len(a))] if isinstance(a, dict) else a for a in args]
    out = []
    for a in args or []:
        if isinstance(a, (list, tuple)) and a:
            out.append((str(a[0]), a[1] if len(a) > 1 else None))
        else:
            out.append((str(a), None))
    return out


def _lm_eval_sample(task: str, s: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(s, dict) or "doc_id" not in s:
        raise FactoryError(f"{where}: not an lm-eval sample (no doc_id)")
    metrics = [m for m in (s.get("metrics") or []) if _num(s.get(m)) is not None]
    values = {m: _num(s[m]) for m in metrics}
    reqs = _lm_eval_requests(s)
    prompt = reqs[0][0] if reqs else ""
    resps = s.get("filtered_resps") or []
    target = s.get("target")
    if reqs and all(isinstance(c, str) for _, c in reqs) and all(isinstance(r, (list, tuple)) for r in resps):
        # multiple choice: one log-likelihood per choice; the answer is the likeliest choice
        lls = [_num(r[0]) if r else None for r in resps]
        best = max((j for j, v in enumerate(lls) if v is not None), key=lambda j: (lls[j], -j), default=None)
        choices = [c for _, c in reqs]
        try:
            expected = choices[int(target)]
        except (TypeError, ValueError, IndexError):
            expected = str(target)
        output = choices[best] if best is not None and best < len(choices) else ""
    else:
        expected = target if isinstance(target, str) else json.dumps(target)
        first = resps[0] if resps else ""
        output = first if isinstance(first, str) else json.dumps(first)
    first_value = values.get(metrics[0]) if metrics else None
    return {"id": f"{task}/{s['doc_id']}", "prompt": prompt, "expected": str(expected).strip(),
            "output": str(output).strip(), "correct": bool(first_value is not None and first_value >= 1.0),
            "skill": task, "values": values, "prompt_hash": s.get("prompt_hash"), "doc_hash": s.get("doc_hash"),
            "filter": s.get("filter")}


def _lm_eval_samples_file(results: Path, task: str) -> Path:
    stamp = results.stem[len("results_"):] if results.stem.startswith("results_") else ""
    exact = results.parent / f"samples_{task}_{stamp}.jsonl"
    if exact.is_file():
        return exact
    cands = sorted(results.parent.glob(f"samples_{task}_*.jsonl"))
    if len(cands) == 1:
        return cands[0]
    raise FactoryError(f"{results}: task {task}: no samples file {exact.name} beside it "
                       "(lm-eval writes per-sample results with --log_samples)")


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    out = []
    n = 0
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    out.append((n, _json_text(line, f"{path}:{n}")))
    except UnicodeDecodeError:
        raise FactoryError(f"{path}:{n + 1}: not UTF-8 text") from None
    return out


def read_lm_eval(path: Path, root: Path) -> list[External]:
    """Every evaluation under an lm-eval output directory (one per results_*.json), or one results file."""
    out = []
    for results in _lm_eval_results(Path(path)):
        data = _read_json(results)
        if not isinstance(data, dict) or not isinstance(data.get("results"), dict) \
                or not isinstance(data.get("config"), dict):
            raise FactoryError(f"{results}: not an lm-eval results file (no 'results' and 'config' objects)")
        groups = {g for g, subs in (data.get("group_subtasks") or {}).items() if subs}
        tasks = []
        sources = {"results": results}
        for name in sorted(t for t in data["results"] if t not in groups):
            sfile = _lm_eval_samples_file(results, name)
            sources[f"samples.{name}"] = sfile
            by_filter: dict[str, list[dict[str, Any]]] = {}
            for n, raw in _read_jsonl(sfile):
                s = _lm_eval_sample(name, raw, f"{sfile}:{n}")
                by_filter.setdefault(str(s.get("filter") or "none"), []).append(s)
            version = str((data.get("versions") or {}).get(name, ""))
            cfg = (data.get("configs") or {}).get(name) or {}
            reported = data["results"][name] if isinstance(data["results"][name], dict) else {}
            for filt, samples in by_filter.items():
                label = name if len(by_filter) == 1 else f"{name}[{filt}]"
                tasks.append(Task(label, version, samples, cfg if isinstance(cfg, dict) else {},
                                  {k: v for k, v in reported.items() if k.endswith(f",{filt}")}))
        if not tasks:
            raise FactoryError(f"{results}: the results name no task with samples")
        cfg = data["config"]
        args = _args_dict(cfg.get("model_args"))
        model = str(data.get("model_name") or args.get("pretrained") or cfg.get("model") or "unknown")
        stamp = results.stem[len("results_"):]
        created = _iso(_num(data.get("date"))) or _iso(stamp[:10] + "T" + stamp[11:19].replace("-", ":")) \
            or datetime.fromtimestamp(results.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
        out.append(External(
            tool="lm-eval", version=str(data.get("lm_eval_version") or "unknown"), model=model,
            model_source=str(data.get("model_source") or cfg.get("model") or ""), model_args=args,
            config={k: v for k, v in cfg.items() if k != "model_args"} | {"n-shot": data.get("n-shot") or {}},
            created=created, sources=sources, tasks=tasks,
            model_path=_local_dir(args.get("pretrained") or data.get("model_name"), root),
            adapter_path=_local_dir(args.get("peft"), root)))
    return out


# --- reading: Inspect --------------------------------------------------------------------------

def _check_inspect_file(path: Path) -> None:
    """Name the file and the place of a damaged log before Inspect's reader sees it."""
    if not path.is_file():
        raise FactoryError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if path.suffix == ".json":
        data = _read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("eval"), dict):
            raise FactoryError(f"{path}: not an Inspect log (no 'eval' object)")
        return
    if path.suffix != ".eval":
        raise FactoryError(f"{path}: not an Inspect log (a .eval or .json file expected)")
    if not zipfile.is_zipfile(path):
        raise FactoryError(f"{path}: not an Inspect .eval log (not a zip archive; truncated or another format)")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if "header.json" not in names and "_journal/start.json" not in names:
                raise FactoryError(f"{path}: not an Inspect .eval log (no header.json in the archive)")
            for name in names:
                if name.endswith(".json"):
                    try:
                        text = z.read(name).decode("utf-8")
                    except NotImplementedError:
                        return  # compressed in a way this Python cannot read (zstd): Inspect's reader checks
                    except UnicodeDecodeError as e:
                        raise FactoryError(f"{path}: {name}: not UTF-8 text (byte {e.start})") from None
                    _json_text(text, f"{path}: {name}")
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise FactoryError(f"{path}: damaged .eval archive ({e})") from None


def _score_values(value: Any, name: str) -> dict[str, float]:
    """An Inspect score value as numbers: C/I/P/N and yes/no as Inspect reads them; dicts by key."""
    from inspect_ai.scorer import value_to_float

    to_float = value_to_float()
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_score_values(v, f"{name}.{k}"))
        return out
    if isinstance(value, list):
        return {}
    try:
        f = float(to_float(value))
    except (TypeError, ValueError):
        return {}
    return {name: f} if math.isfinite(f) else {}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # chat messages, or content parts
        return "\n".join(_text(getattr(m, "text", None) if hasattr(m, "text") else
                               (m.get("text") if isinstance(m, dict) else m)) for m in content)
    return "" if content is None else str(content)


def read_inspect(path: Path, root: Path) -> External:
    """One Inspect log as an external evaluation."""
    path = Path(path)
    _check_inspect_file(path)
    try:
        from inspect_ai.log import read_eval_log
    except ImportError:
        raise FactoryError("importing Inspect logs needs inspect-ai: pip install -e \".[inspect]\"") from None
    try:
        log = read_eval_log(str(path))
    except Exception as e:  # noqa: BLE001 - Inspect's reader raises many kinds; one line names the file
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise FactoryError(f"{path}: not a readable Inspect log ({type(e).__name__}: {msg})") from None
    ev = log.eval
    task = str(ev.task)
    samples = []
    epochs = max((s.epoch for s in log.samples or []), default=1)
    for s in log.samples or []:
        values: dict[str, float] = {}
        for scorer, sc in (s.scores or {}).items():
            values.update(_score_values(sc.value, scorer))
        first = next(iter(values.values()), None)
        target = s.target if isinstance(s.target, str) else " | ".join(map(str, s.target or []))
        sid = f"{task}/{s.id}" + (f"#{s.epoch}" if epochs > 1 else "")
        rec = {"id": sid, "prompt": _text(s.input), "expected": target,
               "output": (s.output.completion if s.output is not None else "") or "",
               "correct": bool(first is not None and first >= 1.0), "skill": task, "values": values,
               "epoch": s.epoch}
        if s.error is not None:
            rec["error"] = (str(getattr(s.error, "message", s.error)).splitlines() or [""])[0]
        samples.append(rec)
    if not samples:
        raise FactoryError(f"{path}: the log holds no samples (status {log.status}; "
                           "Inspect logs them unless --no-log-samples is given)")
    reported = {}
    for sc in (log.results.scores if log.results else []) or []:
        for m, mv in (sc.metrics or {}).items():
            reported[f"{sc.name}.{m}"] = mv.value
    args = dict(ev.model_args or {})
    model = str(ev.model)
    local = args.get("model_path") or (model.split("/", 1)[1] if model.startswith("hf/") else None)
    config = {"task_args": dict(ev.task_args or {}), "generate": ev.model_generate_config.model_dump(exclude_none=True),
              "eval": ev.config.model_dump(exclude_none=True), "dataset": ev.dataset.model_dump(exclude_none=True),
              "scorers": [sc.name for sc in ev.scorers or []]}
    return External(
        tool="inspect", version=str((ev.packages or {}).get("inspect_ai") or "unknown"), model=model,
        model_source=model.split("/", 1)[0], model_args=args, config=config,
        created=_iso(ev.created) or datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(
            timespec="seconds"),
        sources={"log": path}, tasks=[Task(task, str(ev.task_version), samples, {}, reported)],
        status=str(log.status), model_path=_local_dir(local, root))


# --- writing the run -----------------------------------------------------------------------------

def _slug(text: str) -> str:
    text = text.rstrip("/").rsplit("/", 1)[-1] or text
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:40] or "model"


def _file_name(suite: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", suite).strip("._") or "task"


def _scores(task: Task) -> tuple[dict[str, Any], dict[str, Any]]:
    """(scores, per_skill) of one task in factory's Score form."""
    from factory import stats
    from factory.records import Score

    def rate(flags: list[bool]) -> Score:
        k, n = sum(flags), len(flags)
        lo, hi = stats.wilson(k, n)
        return Score(value=k / n if n else 0.0, ci_low=lo, ci_high=hi, n=n)

    scores = {PRIMARY: rate([s["correct"] for s in task.samples])}
    metrics: dict[str, list[float]] = {}
    for s in task.samples:
        for m, v in s["values"].items():
            metrics.setdefault(m, []).append(v)
    for m, vals in sorted(metrics.items()):
        if m == PRIMARY:
            continue
        if all(v in (0.0, 1.0) for v in vals):
            scores[m] = rate([v == 1.0 for v in vals])
        else:
            mean = sum(vals) / len(vals)
            half = stats.Z95 * math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals) / len(vals))
            scores[m] = Score(value=mean, ci_low=mean - half, ci_high=mean + half, n=len(vals))
    return scores, {task.name: scores[PRIMARY]}


def source_digests(ext: External) -> dict[str, str]:
    return {label: hashing.hash_file(p) for label, p in sorted(ext.sources.items())}


def import_key(tool: str, digests: dict[str, str], model: str | None = None) -> str:
    """The run's key: the tool and the digests of the files read (the same files, the same run), and
    the model directory when `--model` names it."""
    parts: dict[str, Any] = {"kind": "import", "tool": tool, "sources": sorted(digests.values())}
    if model is not None:
        parts["model"] = model
    return hashing.digest_json(parts)


def _find(runs: Path, key: str) -> Path | None:
    for d in sorted(runs.glob(f"*-import-*-{key[:8]}")) if runs.is_dir() else []:
        try:
            man = json.loads((d / "run_manifest.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(man, dict) and (man.get("external") or {}).get("key") == key:
            return d
    return None


def _remove_litter(runs: Path) -> None:
    """Remove what an import killed part-way left: its hidden temporary run directory."""
    from factory.runs import pid_alive as _alive

    if not runs.is_dir():
        return
    for d in runs.glob(f"{TMP_PREFIX}*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _write(tmp: Path, ext: External, key: str, digests: dict[str, str], run_id: str, root: Path) -> None:
    from factory.evaluate import samples_path, write_samples
    from factory.records import (EvalRecord, FileRef, ModelRef, RunConfig, RunManifest, SuiteResult,
                                 write_record)

    model_digest = hashing.digest_tree(Path(ext.model_path)) if ext.model_path else None
    adapter_digest = hashing.digest_tree(Path(ext.adapter_path)) if ext.adapter_path else None
    role = "candidate" if adapter_digest else "baseline"
    suites = []
    for task in ext.tasks:
        if any(s.suite == task.name for s in suites):
            raise FactoryError(f"{ext.sources[next(iter(ext.sources))]}: task {task.name} appears twice")
        rel = samples_path(role, _file_name(task.name))
        write_samples(tmp / rel, task.samples)
        scores, per_skill = _scores(task)
        suites.append(SuiteResult(
            suite=task.name, version=task.version, rows=len(task.samples),
            data_digest=hashing.digest_json(sorted(s["id"] for s in task.samples)), primary_metric=PRIMARY,
            scores=scores, per_skill=per_skill,
            samples=FileRef(path=rel, digest=hashing.hash_file(tmp / rel), size=(tmp / rel).stat().st_size),
            instance_of=ext.tool, reported=task.reported))
    model_ref = ModelRef(base_digest=model_digest or hashing.digest_json({"external_model": ext.model,
                                                                          "model_args": ext.model_args}),
                         adapter_digest=adapter_digest)
    write_record(tmp / f"eval-{role}.json", EvalRecord(role=role, model=model_ref, suites=suites,
                                                       settings={"imported_from": ext.tool}))
    recipe = f"import:{ext.tool}"
    rel_sources = {label: _shown(p, root) for label, p in ext.sources.items()}
    external = {
        "tool": ext.tool, "version": ext.version, "model": ext.model, "model_source": ext.model_source,
        "model_args": ext.model_args, "model_digest": "weights" if model_digest else "name",
        "model_path": ext.model_path, "adapter_path": ext.adapter_path,
        "tasks": [{"task": t.name, "version": t.version, "samples": len(t.samples), "config": t.config}
                  for t in ext.tasks],
        "config": ext.config, "status": ext.status, "key": key, "sources": rel_sources, "digests": digests,
    }
    config = RunConfig(
        recipe=recipe, goal=f"{ext.tool} {ext.version} results of {ext.model}, imported",
        base={"family": ext.model_source or ext.tool, "model": ext.model, "digest": model_digest},
        method="external", evals={"primary": ext.tasks[0].name, "regression": [t.name for t in ext.tasks[1:]]},
        imported=True, external={k: external[k] for k in ("tool", "version", "model", "key")}
        | {"tasks": [t.name for t in ext.tasks]})
    write_record(tmp / "config.json", config)
    manifest = RunManifest(run_id=run_id, recipe=recipe, recipe_path="", created=ext.created,
                           imported=True, eval_only=True, external=external,
                           imported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           files={n: hashing.hash_file(tmp / n) for n in ("config.json", f"eval-{role}.json")})
    write_record(tmp / "run_manifest.json", manifest)


def _shown(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def publish(root: Path, ext: External, model: str | None = None) -> tuple[Path, bool]:
    """The run directory of one external evaluation: (path, True when it was imported before)."""
    runs = Path(root) / "runs"
    digests = source_digests(ext)
    key = import_key(ext.tool, digests, model)
    found = _find(runs, key)
    if found is not None:
        return found, True
    runs.mkdir(parents=True, exist_ok=True)
    _remove_litter(runs)
    run_id = f"{ext.created[:10]}-import-{ext.tool}-{_slug(ext.model_path or ext.model)}-{key[:8]}"
    tmp = runs / f"{TMP_PREFIX}{run_id}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write(tmp, ext, key, digests, run_id, Path(root))
        # a kill between the rename and the refresh leaves a whole run the index lacks: every read
        # of the index looks for such directories first (index.ready) and takes it in
        try:
            os.replace(tmp, runs / run_id)  # the run appears whole, or not at all
        except OSError:
            if (runs / run_id).is_dir():  # imported a moment ago by another process
                return runs / run_id, True
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return runs / run_id, False


def import_results(root: Path, tool: str, path: str, model: str | None = None) -> list[dict[str, Any]]:
    """Import every evaluation `path` holds; [{"run", "hit"}], in the order read."""
    root = Path(root).resolve()
    if tool not in TOOLS:
        raise FactoryError(f"import: unknown tool {tool!r}; one of {', '.join(TOOLS)}")
    src = Path(path).expanduser()
    local = None
    if model is not None:
        local = _local_dir(model, root)
        if local is None:
            raise FactoryError(f"--model {model}: not a local model directory (no config.json)")
    if tool == "inspect":
        # one file: a log imported before is found by its digest, without loading Inspect to read it
        _check_inspect_file(src)
        found = _find(root / "runs", import_key(tool, {"log": hashing.hash_file(src)}, local))
        if found is not None:
            _refresh_index(root, [found.name])
            return [{"run": found, "hit": True}]
    exts = read_lm_eval(src, root) if tool == "lm-eval" else [read_inspect(src, root)]
    out = []
    for e in exts:
        if local is not None:
            e.model_path = local
        run, hit = publish(root, e, local)
        out.append({"run": run, "hit": hit})
    _refresh_index(root, [o["run"].name for o in out])
    return out


def _refresh_index(root: Path, names: list[str]) -> None:
    from factory.index import refresh_written

    note = refresh_written(root / "runs", names)
    if note:
        print(f"factory import: {note}", file=sys.stderr)


def cli_import(root: Path, tool: str, path: str, model: str | None = None) -> int:
    """Import and print each run with its tasks' accuracy, read back from the run directory."""
    for r in import_results(root, tool, path, model):
        run = r["run"]
        ext = json.loads((run / "run_manifest.json").read_text())["external"]
        n = sum(t["samples"] for t in ext["tasks"])
        print(f"{'already imported' if r['hit'] else 'imported'}: {_shown(run, root)} "
              f"({ext['tool']} {ext['version']}, {ext['model']}, {len(ext['tasks'])} task(s), {n} samples)")
        record = next(run.glob("eval-*.json"))
        for s in json.loads(record.read_text())["suites"]:
            acc = s["scores"][PRIMARY]
            print(f"  {s['suite']}: {PRIMARY} {acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}] n={acc['n']}")
    return 0
