"""The `breadth` suite: held-out rows of the general skills the base was trained on.

Exact match of the output with the expected answer (surrounding whitespace
ignored), overall and per skill, so a regression shows where it happened.
"""

from __future__ import annotations

from typing import Any

from factory.interfaces import LoadedModel, SuiteOutput

from . import common


class BreadthSuite:
    name = "breadth"
    version = "1.0"
    needs = "breadth"
    primary_metric = "exact_match"
    # Modules whose code changes this suite's outputs, beyond its own (for stage keys).

    def evaluate(self, lm: LoadedModel, rows: list[dict[str, Any]], settings: dict[str, Any]) -> SuiteOutput:
        outputs = common.generate(lm, [r["prompt"] for r in rows], settings)
        return score(rows, outputs)


def score(rows: list[dict[str, Any]], outputs: list[str]) -> SuiteOutput:
    samples = []
    for row, out in zip(rows, outputs, strict=True):
        correct = out.strip() == str(row["answer"]).strip()
        samples.append(
            {
                "id": str(row["id"]),
                "prompt": row["prompt"],
                "expected": row["answer"],
                "output": out,
                "correct": correct,
                "skill": row.get("skill"),
                "values": {"exact_match": float(correct)},
            }
        )
    scores = {"exact_match": common.rate_of(s["correct"] for s in samples)}
    return SuiteOutput(scores=scores, samples=samples, per_skill=common.per_group(samples, "skill"))
