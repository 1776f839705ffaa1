"""The `lm-eval` suite: lm-evaluation-harness tasks run on factory's loaded model.

    evals:
      regression: [harness]
      define:
        harness: {suite: lm-eval, options: {tasks: [evals/mytask.yaml, arc_easy], num_fewshot: 0}}

A task is a registered lm-eval task name or the path of a task YAML (relative to the
project root; its directory is searched for further YAML it includes). The model
factory loaded (base, or base plus adapter) is handed to lm-eval's own Python API
(`lm_eval.simple_evaluate` with an `HFLM` wrapping it), with per-sample logging on;
every logged sample becomes one line of factory's samples file, id `<task>/<doc_id>`,
so a baseline and a candidate pair by sample. A task's YAML, and the local data files
its `dataset_kwargs.data_files` name (relative to the project root, where lm-eval runs),
are inputs of the eval stages: their digests are in the keys.

Scores: `accuracy` (the share of samples whose task metric is 1: acc, exact_match, ...;
the primary metric), `<task>.<metric>` for each metric lm-eval reports, and per-skill
scores by task. lm-eval is an optional extra (`pip install -e ".[lm-eval]"`), imported
only when this suite runs; everything is offline (the hub is never called), so a named
standard task needs its dataset in the local Hugging Face cache.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from factory.errors import FactoryError
from factory.interfaces import LoadedModel, SuiteOutput

from . import common


class LmEvalOptions(BaseModel):
    """Options of an `lm-eval` instance (recipe: evals.define.<name>.options)."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(min_length=1, description="lm-eval task names, or task YAML paths relative to the project root")
    num_fewshot: int | None = Field(None, ge=0, le=64, description="few-shot examples per prompt; default: the task's")
    include_path: str | None = Field(None, description="a directory of further task YAML files (relative to the root)")
    batch_size: int | None = Field(None, ge=1, le=1024, description="lm-eval's batch size; default: evals.batch_size")


def _is_yaml(task: str) -> bool:
    return task.endswith((".yaml", ".yml"))


def _abs(root: Path, p: str) -> Path:
    return Path(p) if Path(p).is_absolute() else Path(root) / p


def _read_yaml(path: Path) -> dict[str, Any]:
    """A task YAML as data; lm-eval's own tags (`!function`) are read as plain strings."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: str(getattr(node, "value", "")))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise FactoryError(f"{path}: lm-eval task file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise FactoryError(f"{path}{where}: not a valid task YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise FactoryError(f"{path}: a task YAML must be a mapping")
    return data


def _data_files(spec: dict[str, Any]) -> list[str]:
    files = ((spec.get("dataset_kwargs") or {}).get("data_files")) or []
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        out: list[str] = []
        for v in files.values():
            out.extend([v] if isinstance(v, str) else list(v))
        return out
    return [str(f) for f in files]


def task_files(opts: LmEvalOptions, root: Path) -> list[str]:
    """Task YAMLs and the local data files they read, relative to the root where they are under it."""
    out: list[str] = []
    for t in opts.tasks:
        if not _is_yaml(t):
            continue
        path = _abs(root, t)
        out.append(t)
        for f in _data_files(_read_yaml(path)):
            fp = _abs(root, f)  # lm-eval reads data files relative to the working directory: the root
            if fp.is_file():
                try:
                    out.append(fp.resolve().relative_to(Path(root).resolve()).as_posix())
                except ValueError:
                    out.append(str(fp.resolve()))
    return out


def _offline() -> None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"


def resolve_tasks(opts: LmEvalOptions, root: Path) -> tuple[list[str], Any]:
    """(task names, lm-eval TaskManager); an unknown task is a FactoryError naming the option."""
    _offline()
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise FactoryError("the lm-eval suite needs lm-evaluation-harness: pip install -e \".[lm-eval]\"") from None
    include: list[str] = []
    names: list[str] = []
    for t in opts.tasks:
        if _is_yaml(t):
            path = _abs(root, t)
            spec = _read_yaml(path)
            if not isinstance(spec.get("task"), str):
                raise FactoryError(f"{path}: the task YAML has no `task:` name")
            include.append(str(path.parent))
            names.append(spec["task"])
        else:
            names.append(t)
    if opts.include_path:
        include.append(str(_abs(root, opts.include_path)))
    tm = TaskManager(include_path=sorted(set(include)) or None, verbosity="ERROR")
    known = set(tm.all_tasks)
    for t, name in zip(opts.tasks, names):
        if name not in known:
            raise FactoryError(f"options.tasks: unknown lm-eval task {t!r} (not registered, and no such YAML); "
                               "`lm-eval ls tasks` lists the registered ones")
    return names, tm


class LmEvalSuite:
    name = "lm-eval"
    version = "1.0"
    needs = "own"
    primary_metric = "accuracy"
    applies_limit = True  # settings["limit"] is per task, applied by lm-eval, not a cut of load_rows
    Options = LmEvalOptions
    code_modules = ("factory_plugins.evals.common",)

    def files(self, options: dict[str, Any], root: Path) -> list[str]:
        return task_files(LmEvalOptions.model_validate(options), Path(root))

    def load_rows(self, options: dict[str, Any], root: Path) -> list[dict[str, Any]]:
        """One row per task (checked now, before the model loads); lm-eval reads the samples itself."""
        opts = LmEvalOptions.model_validate(options)
        names, _ = resolve_tasks(opts, Path(root))
        return [{"id": n, "task": n, "source": t} for n, t in zip(names, opts.tasks)]

    def evaluate(self, lm: LoadedModel, rows: list[dict[str, Any]], settings: dict[str, Any]) -> SuiteOutput:
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        opts = LmEvalOptions.model_validate(settings.get("options") or {})
        root = Path(settings.get("root") or ".")
        names, tm = resolve_tasks(opts, root)
        model = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, max_length=int(lm.max_length),
                     batch_size=opts.batch_size or common.batch_size(settings))
        limit = settings.get("limit")
        with contextlib.chdir(root):  # task YAMLs name their local data files relative to the project root
            res = lm_eval.simple_evaluate(model=model, tasks=names, task_manager=tm, num_fewshot=opts.num_fewshot,
                                          limit=int(limit) if limit else None, log_samples=True, random_seed=0,
                                          numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
        return score(res)


def _metric_names(sample: dict[str, Any]) -> list[str]:
    return [m for m in sample.get("metrics") or [] if isinstance(sample.get(m), (int, float, bool))]


def _choice_output(sample: dict[str, Any]) -> tuple[str, str]:
    """(expected, output) texts of a multiple-choice sample: the target's and the likeliest choice's."""
    args = sample.get("arguments") or []
    conts = [a[1] if isinstance(a, (list, tuple)) and len(a) > 1 else "" for a in args]
    lls = [r[0] if isinstance(r, (list, tuple)) else r for r in sample.get("filtered_resps") or []]
    best = max(range(len(lls)), key=lambda j: (lls[j], -j)) if lls else None
    target = sample.get("target")
    try:
        expected = conts[int(target)] if conts else str(target)
    except (TypeError, ValueError, IndexError):
        expected = str(target)
    return str(expected).strip(), (str(conts[best]).strip() if best is not None and conts else "")


def score(results: dict[str, Any]) -> SuiteOutput:
    """lm-eval's results (with logged samples) as factory scores and samples (pure: no model)."""
    samples: list[dict[str, Any]] = []
    per_task_metric: dict[tuple[str, str], list[float]] = {}
    for task in sorted(results.get("samples") or {}):
        for s in results["samples"][task]:
            metrics = _metric_names(s)
            values = {m: float(s[m]) for m in metrics}
            for m, v in values.items():
                per_task_metric.setdefault((task, m), []).append(v)
            args = s.get("arguments") or [[""]]
            prompt = args[0][0] if isinstance(args[0], (list, tuple)) else str(args[0])
            is_choice = all(isinstance(r, (list, tuple)) for r in s.get("filtered_resps") or [None])
            if is_choice and s.get("filtered_resps"):
                expected, output = _choice_output(s)
            else:
                resp = (s.get("filtered_resps") or [""])[0]
                expected, output = str(s.get("target")), str(resp)
            first = values.get(metrics[0]) if metrics else None
            samples.append({
                "id": f"{task}/{s.get('doc_id')}", "prompt": str(prompt), "expected": expected, "output": output,
                "correct": bool(first is not None and first >= 1.0), "skill": task,
                "values": values, "prompt_hash": s.get("prompt_hash"), "doc_hash": s.get("doc_hash"),
            })
    if not samples:
        raise FactoryError("lm-eval returned no samples (empty tasks, or --limit 0)")
    scores = {"accuracy": common.rate_of(s["correct"] for s in samples)}
    for (task, metric), vals in sorted(per_task_metric.items()):
        if all(v in (0.0, 1.0) for v in vals):
            scores[f"{task}.{metric}"] = common.rate(int(sum(vals)), len(vals))
        else:
            mean = sum(vals) / len(vals)
            from factory.records import Score

            scores[f"{task}.{metric}"] = Score(value=mean if math.isfinite(mean) else 0.0, n=len(vals))
    return SuiteOutput(scores=scores, samples=samples, per_skill=common.per_group(samples, "skill"))
