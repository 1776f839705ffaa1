"""The `perplexity` suite: mean answer-token loss on held-out rows (lower is better).

`loss` is the token-weighted mean negative log-likelihood of the answer tokens
(EOS included) given the prompt; `perplexity` is exp(loss). A sample counts as
`correct` when its own mean loss is below ln 2 (the answer tokens average better
than even odds), which gives the gate a per-row signal to pair on.
"""

from __future__ import annotations

import math
from typing import Any

from factory import stats
from factory.interfaces import LoadedModel, SuiteOutput
from factory.records import Score

from . import common

EVEN_ODDS = math.log(2)


class PerplexitySuite:
    name = "perplexity"
    version = "1.0"
    needs = "heldout"
    primary_metric = "loss"
    # Modules whose code changes this suite's outputs, beyond its own (for stage keys).

    def evaluate(self, lm: LoadedModel, rows: list[dict[str, Any]], settings: dict[str, Any]) -> SuiteOutput:
        from factory.ml.generate import answer_logprobs
        from factory.ml.text import encode_answer

        losses = [float(x) for x in answer_logprobs(lm, rows, common.batch_size(settings))]
        tokens = [len(encode_answer(lm, str(r["answer"]))) for r in rows]
        return score(rows, losses, tokens)


def score(rows: list[dict[str, Any]], losses: list[float], tokens: list[int]) -> SuiteOutput:
    samples = []
    for row, loss, n in zip(rows, losses, tokens, strict=True):
        samples.append(
            {
                "id": str(row["id"]),
                "prompt": row["prompt"],
                "expected": row["answer"],
                "output": "",
                "correct": loss < EVEN_ODDS,
                "skill": row.get("skill"),
                "values": {"loss": loss},
                "weight": n,
            }
        )
    mean, lo, hi = stats.mean_interval(losses, tokens)
    scores = {
        "loss": Score(value=mean, ci_low=lo, ci_high=hi, n=len(losses), higher_is_better=False, unit="nats"),
        "perplexity": Score(
            value=_exp(mean), ci_low=_exp(lo), ci_high=_exp(hi), n=len(losses), higher_is_better=False, unit="ratio"
        ),
        "even_odds_rate": common.rate_of(s["correct"] for s in samples),
    }
    return SuiteOutput(scores=scores, samples=samples)


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return float("inf")
