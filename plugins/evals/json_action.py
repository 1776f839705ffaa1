"""The `json-action` suite: the model's output parsed as JSON and compared with the expected action.

Scores: `exact_match` (the whole parsed action equals the expected one; the
primary metric), `valid_json` (the whole output parses as JSON; trailing text
after the action makes it invalid, as it would for a strict caller), and
per-field accuracy: `field.<path>` for the action name and each argument
(`field.action`, `field.args.day`, ...), and `field_accuracy` over all fields.
Per-skill scores group rows by their `skill`, or by the expected action name.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from factory.interfaces import LoadedModel, SuiteOutput

from . import common


class JsonActionSuite:
    name = "json-action"
    version = "1.0"
    needs = "heldout"
    primary_metric = "exact_match"
    # Modules whose code changes this suite's outputs, beyond its own (for stage keys).

    def evaluate(self, lm: LoadedModel, rows: list[dict[str, Any]], settings: dict[str, Any]) -> SuiteOutput:
        outputs = common.generate(lm, [r["prompt"] for r in rows], settings)
        return score(rows, outputs)


def score(rows: list[dict[str, Any]], outputs: list[str]) -> SuiteOutput:
    """Score outputs against rows (pure: no model), so the scoring is testable on its own."""
    samples = []
    field_hits: dict[str, list[bool]] = defaultdict(list)
    for row, out in zip(rows, outputs, strict=True):
        expected, exp_ok = common.parse_json(row["answer"])
        got, ok = common.parse_json(out)
        exact = bool(ok and exp_ok and got == expected)
        want = common.flatten(expected) if exp_ok else {}
        have = common.flatten(got) if ok and isinstance(got, dict) else {}
        fields = {path: (path in have and have[path] == value) for path, value in want.items()}
        for path, hit in fields.items():
            field_hits[path].append(hit)
        group = row.get("skill") or (expected.get("action") if isinstance(expected, dict) else None)
        values = {"exact_match": float(exact), "valid_json": float(ok)}
        values.update({f"field.{p}": float(h) for p, h in fields.items()})
        samples.append(
            {
                "id": str(row["id"]),
                "prompt": row["prompt"],
                "expected": row["answer"],
                "output": out,
                "correct": exact,
                "skill": str(group) if group is not None else None,
                "fields": fields,
                "values": values,
            }
        )
    scores = {
        "exact_match": common.rate_of(s["correct"] for s in samples),
        "valid_json": common.rate_of(s["values"]["valid_json"] > 0 for s in samples),
        "field_accuracy": common.rate_of(h for hits in field_hits.values() for h in hits),
    }
    for path in sorted(field_hits):
        scores[f"field.{path}"] = common.rate_of(field_hits[path])
    return SuiteOutput(scores=scores, samples=samples, per_skill=common.per_group(samples, "skill"))
