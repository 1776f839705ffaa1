"""The `benchmark` suite: a local file of prompts and expected answers that the recipe names.

A recipe defines an instance with its own file and scorer:

    evals:
      primary: support-bench
      define:
        support-bench: {suite: benchmark, options: {path: evals/support.jsonl, scorer: exact}}

The file is JSONL (one object a line) or CSV (a header row), with the fields
`prompt`, `expected`, and optionally `id`, `skill` and `choices` (a JSON list;
in CSV, choices separated by `|`). Rows without an id are numbered by line
(`line-3`), so a baseline and a candidate pair on the same rows. The file is an
input of the eval stages, so its digest is in their keys: editing it re-runs
the evaluation.

Scorers (`scorer`):
- `exact`: the output, stripped, equals `expected` (`ignore_case` optional);
- `regex`: `expected` is a regular expression the stripped output matches in
  full (`match: search` accepts a match anywhere);
- `choice`: multiple choice by log-likelihood, nothing generated: the choice
  the model gives the lowest mean negative log-likelihood per token (its end
  token included) is its answer, correct when it is `expected`.
The primary metric is `accuracy`; per-skill accuracy comes from `skill`.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from factory.errors import FactoryError
from factory.interfaces import LoadedModel, SuiteOutput

from . import common


class BenchmarkOptions(BaseModel):
    """Options of a `benchmark` instance (recipe: evals.define.<name>.options)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="the benchmark file, relative to the project root: .jsonl or .csv")
    format: Literal["auto", "jsonl", "csv"] = Field("auto", description="file format; auto: from the extension")
    scorer: Literal["exact", "regex", "choice"] = Field(
        "exact", description="exact match, a regular expression, or multiple choice by log-likelihood")
    ignore_case: bool = Field(False, description="exact and regex: compare without case")
    match: Literal["full", "search"] = Field("full", description="regex: the whole output, or anywhere in it")
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="generation budget; default: evals.max_new_tokens")


def _format(opts: BenchmarkOptions, path: Path) -> str:
    if opts.format != "auto":
        return opts.format
    if path.suffix.lower() in (".jsonl", ".json"):
        return "jsonl"
    if path.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    raise FactoryError(f"{path}: cannot tell the format from the extension; set options.format to jsonl or csv")


def _records(path: Path, fmt: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, raw record) for every row of the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FactoryError(f"{path}: benchmark file not found") from None
    except UnicodeDecodeError as e:
        raise FactoryError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    out: list[tuple[int, dict[str, Any]]] = []
    if fmt == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise FactoryError(f"{path}:{n}: not a JSON object ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise FactoryError(f"{path}:{n}: a row must be a JSON object with prompt and expected")
            out.append((n, rec))
        return out
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        for rec in reader:
            if None in rec:
                raise FactoryError(f"{path}:{reader.line_num}: more cells than the header has columns")
            out.append((reader.line_num, rec))
    except csv.Error as e:
        raise FactoryError(f"{path}:{reader.line_num}: {e}") from None
    return out


def _choices(value: Any, path: Path, n: int) -> list[str] | None:
    if value in (None, ""):
        return None
    if isinstance(value, str):
        value = [c.strip() for c in value.split("|")]
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, (str, int, float)) for c in value):
        raise FactoryError(f"{path}:{n}: choices must be a list of at least two strings")
    return [str(c) for c in value]


def load_rows(opts: BenchmarkOptions, root: Path) -> list[dict[str, Any]]:
    """The benchmark's rows, checked: every problem names the file and its line."""
    path = Path(opts.path) if Path(opts.path).is_absolute() else Path(root) / opts.path
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for n, rec in _records(path, _format(opts, path)):
        for key in ("prompt", "expected"):
            if not isinstance(rec.get(key), (str, int, float)) or str(rec.get(key)) == "":
                raise FactoryError(f"{path}:{n}: field {key!r} is missing or empty")
        row_id = str(rec.get("id") or f"line-{n}")
        if row_id in seen:
            raise FactoryError(f"{path}:{n}: id {row_id!r} repeats line {seen[row_id]}")
        seen[row_id] = n
        choices = _choices(rec.get("choices"), path, n)
        expected = str(rec["expected"])
        if opts.scorer == "choice":
            if choices is None:
                raise FactoryError(f"{path}:{n}: the choice scorer needs choices")
            if expected not in choices:
                raise FactoryError(f"{path}:{n}: expected {expected!r} is not one of the choices")
        if opts.scorer == "regex":
            try:
                re.compile(expected)
            except re.error as e:
                raise FactoryError(f"{path}:{n}: expected is not a regular expression ({e})") from None
        row = {"id": row_id, "prompt": str(rec["prompt"]), "answer": expected,
               "skill": str(rec["skill"]) if rec.get("skill") not in (None, "") else None}
        if choices is not None:
            row["choices"] = choices
        rows.append(row)
    if not rows:
        raise FactoryError(f"{path}: no rows")
    return rows


class BenchmarkSuite:
    name = "benchmark"
    version = "1.0"
    needs = "own"
    primary_metric = "accuracy"
    Options = BenchmarkOptions
    # Modules whose code changes this suite's outputs, beyond its own (for stage keys).
    code_modules = ("factory_plugins.evals.common", "factory.ml.generate", "factory.ml.text")

    def files(self, options: dict[str, Any], root: Path) -> list[str]:
        """The files whose digests go into the eval stages' keys (relative to the project root)."""
        return [BenchmarkOptions.model_validate(options).path]

    def load_rows(self, options: dict[str, Any], root: Path) -> list[dict[str, Any]]:
        return load_rows(BenchmarkOptions.model_validate(options), root)

    def evaluate(self, lm: LoadedModel, rows: list[dict[str, Any]], settings: dict[str, Any]) -> SuiteOutput:
        opts = BenchmarkOptions.model_validate(settings.get("options") or {})
        if opts.scorer == "choice":
            return score_choices(rows, choice_losses(lm, rows, common.batch_size(settings)))
        outputs = common.generate(lm, [r["prompt"] for r in rows], settings, opts.max_new_tokens)
        return score(rows, outputs, opts)


def choice_losses(lm: Any, rows: list[dict[str, Any]], batch_size: int) -> list[list[float]]:
    """Per row, the mean answer-token loss of each of its choices (one batched pass over all of them)."""
    from factory.ml.generate import answer_logprobs

    flat = [{"prompt": r["prompt"], "answer": c} for r in rows for c in r["choices"]]
    losses = answer_logprobs(lm, flat, batch_size)
    out, i = [], 0
    for r in rows:
        # A choice cut away entirely by the context has no loss: it can never be the answer.
        out.append([float(x) if math.isfinite(x) else math.inf for x in losses[i : i + len(r["choices"])]])
        i += len(r["choices"])
    return out


def is_correct(output: str, expected: str, opts: BenchmarkOptions) -> bool:
    out = output.strip()
    if opts.scorer == "regex":
        flags = re.IGNORECASE if opts.ignore_case else 0
        m = re.fullmatch(expected, out, flags) if opts.match == "full" else re.search(expected, out, flags)
        return m is not None
    if opts.ignore_case:
        return out.casefold() == expected.strip().casefold()
    return out == expected.strip()


def score(rows: list[dict[str, Any]], outputs: list[str], opts: BenchmarkOptions) -> SuiteOutput:
    """Score generated outputs (pure: no model)."""
    samples = []
    for row, out in zip(rows, outputs, strict=True):
        ok = is_correct(out, row["answer"], opts)
        samples.append({"id": row["id"], "prompt": row["prompt"], "expected": row["answer"], "output": out,
                        "correct": ok, "skill": row.get("skill"), "values": {"accuracy": float(ok)}})
    return _output(samples)


def score_choices(rows: list[dict[str, Any]], losses: list[list[float]]) -> SuiteOutput:
    """Score multiple choice: the lowest-loss choice is the answer (pure: no model)."""
    samples = []
    for row, ls in zip(rows, losses, strict=True):
        best = min(range(len(ls)), key=lambda j: (ls[j], j))
        answer = row["choices"][best]
        ok = answer == row["answer"]
        samples.append({"id": row["id"], "prompt": row["prompt"], "expected": row["answer"], "output": answer,
                        "correct": ok, "skill": row.get("skill"), "choices": row["choices"],
                        "choice_losses": [x if math.isfinite(x) else None for x in ls], "values": {"accuracy": float(ok)}})
    return _output(samples)


def _output(samples: list[dict[str, Any]]) -> SuiteOutput:
    scores = {"accuracy": common.rate_of(s["correct"] for s in samples)}
    return SuiteOutput(scores=scores, samples=samples, per_skill=common.per_group(samples, "skill"))
