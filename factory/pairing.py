"""Paired comparison of two evaluations that may come from different tools.

An imported run (`factory import`) and a run factory built score the same benchmark under
different suite names and, often, different sample ids. `pair_evaluations` matches each suite of
one evaluation with the suite of the other that shares the most samples: by sample id, or, where
no id is shared, by the digest of the prompt text (whitespace folded). On the matched samples it
gives the statistics the gate gives a baseline and a candidate (`factory.gate`): the paired
difference of the correct-rates with its closed-form interval (`stats.paired_difference`,
`stats.interval_at`) and McNemar's exact test on the discordant pairs; and it says how many
samples paired and how many of each side did not.
"""

from __future__ import annotations

from typing import Any

from factory import hashing, stats


def prompt_digest(prompt: Any) -> str:
    return hashing.digest_bytes(" ".join(str(prompt or "").split()).encode())


def is_imported(ev: Any) -> bool:
    """Whether a run's evidence (`factory.evidence.Evidence`) is of a `factory import` run."""
    return ev.manifest is not None and (ev.manifest.model_extra or {}).get("imported") is True


def evaluations(ev: Any) -> list[dict[str, Any]]:
    """[{"role", "suites": {suite: samples}}] of a run's evidence: its candidate first, then its baseline."""
    for role in ("eval-candidate.json", "eval-baseline.json"):
        ev.require(role)
    return [{"role": role, "suites": ev.samples.get(role) or {}}
            for role in ("candidate", "baseline") if ev.eval(role) is not None]


def _keyed(samples: list[dict[str, Any]], by: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in samples:
        k = str(s.get("id")) if by == "id" else prompt_digest(s.get("prompt"))
        out.setdefault(k, s)  # a prompt asked twice pairs once
    return out


def _match(samples: list[dict[str, Any]], others: dict[str, list[dict[str, Any]]]) -> tuple[str | None, str, int]:
    """(the other suite sharing the most samples, "id" or "prompt", how many it shares)."""
    for by in ("id", "prompt"):
        mine = set(_keyed(samples, by))
        best = max(((len(mine & set(_keyed(o, by))), name) for name, o in sorted(others.items())),
                   default=(0, None))
        if best[0]:
            return best[1], by, best[0]
    return None, "id", 0


def paired_stats(a: list[bool], b: list[bool], confidence: float = 0.95) -> dict[str, Any]:
    """The gate's paired statistics of b against a over paired correctness flags."""
    av, bv = [float(x) for x in a], [float(x) for x in b]
    delta, centre, se = stats.paired_difference(av, bv)
    lo, hi = stats.interval_at(centre, se, (1 - confidence) / 2)
    disc = stats.discordant(a, b)
    return {"a": sum(av) / len(av), "b": sum(bv) / len(bv), "delta": delta,
            "interval": [max(-1.0, lo), min(1.0, hi)], "discordant": list(disc),
            "p_value": stats.mcnemar_exact(*disc), "confidence": confidence}


def pair_evaluations(a: dict[str, list[dict[str, Any]]], b: dict[str, list[dict[str, Any]]],
                     confidence: float = 0.95) -> list[dict[str, Any]]:
    """One row per suite of `a`: the suite of `b` it pairs with, the counts, and the paired statistics."""
    rows = []
    for suite in sorted(a):
        samples = a[suite]
        other, by, _ = _match(samples, b)
        row: dict[str, Any] = {"suite": suite, "other": other, "by": by, "paired": 0,
                               "only_a": len(_keyed(samples, "id")), "only_b": 0}
        if other is not None:
            mine, theirs = _keyed(samples, by), _keyed(b[other], by)
            common = [k for k in mine if k in theirs]
            row.update(paired=len(common), only_a=len(mine) - len(common), only_b=len(theirs) - len(common),
                       **paired_stats([bool(mine[k].get("correct")) for k in common],
                                      [bool(theirs[k].get("correct")) for k in common], confidence))
        rows.append(row)
    return rows


def compare_runs(evidence: list[Any], confidence: float = 0.95) -> list[dict[str, Any]]:
    """The first run's evaluation (its candidate, else its baseline) paired with every evaluation of
    each other run, from their evidence (`factory.evidence.read_run`): [{"run": i, "role_a", "role_b", "rows"}]."""
    first = evaluations(evidence[0])
    if not first:
        return []
    out = []
    for i, ev in enumerate(evidence[1:], 1):
        for other in evaluations(ev):
            out.append({"run": i, "role_a": first[0]["role"], "role_b": other["role"],
                        "rows": pair_evaluations(first[0]["suites"], other["suites"], confidence)})
    return out
