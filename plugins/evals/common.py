"""Helpers the first-party eval suites share: scores with intervals, generation, JSON parsing.

Kept free of torch at import; the generation and scoring functions are imported
inside the calls.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Iterable

from factory import stats
from factory.records import Score


def rate(k: int, n: int, higher_is_better: bool = True) -> Score:
    """A rate k/n with its Wilson 95% interval."""
    lo, hi = stats.wilson(k, n)
    value = k / n if n else 0.0
    return Score(value=value, ci_low=lo, ci_high=hi, n=n, higher_is_better=higher_is_better, unit="rate")


def rate_of(flags: Iterable[bool], higher_is_better: bool = True) -> Score:
    flags = list(flags)
    return rate(sum(1 for f in flags if f), len(flags), higher_is_better)


def per_group(samples: list[dict[str, Any]], key: str) -> dict[str, Score]:
    """Exact-match rate per value of `key` in the samples (skill, action name, ...)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        g = s.get(key)
        if g is not None:
            groups[str(g)].append(bool(s["correct"]))
    return {g: rate_of(v) for g, v in sorted(groups.items())}


def batch_size(settings: dict[str, Any]) -> int:
    return int(settings.get("batch_size") or 64)


def max_new_tokens(settings: dict[str, Any]) -> int:
    return int(settings.get("max_new_tokens") or 96)


def generate(lm: Any, prompts: list[str], settings: dict[str, Any], max_new: int | None = None) -> list[str]:
    """Greedy continuations of raw task prompts (the family's template is applied by the generator)."""
    from factory.ml.generate import generate as _generate

    if not prompts:
        return []
    return list(_generate(lm, prompts, max_new or max_new_tokens(settings), batch_size=batch_size(settings)))


def parse_json(text: str) -> tuple[Any, bool]:
    """(value, ok): the whole text parsed as JSON (surrounding whitespace allowed)."""
    try:
        return json.loads(text.strip()), True
    except (ValueError, TypeError):
        return None, False


def json_prefix(text: str) -> tuple[Any, str, bool]:
    """(value, rest, ok): the first JSON value at the start of text and whatever follows it."""
    s = text.lstrip()
    try:
        value, end = json.JSONDecoder().raw_decode(s)
    except ValueError:
        return None, text, False
    return value, s[end:], True


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf fields of nested dicts as dotted paths: {"action": .., "args.day": ..}."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict) and (obj or not prefix):
        for k in sorted(obj):
            out.update(flatten(obj[k], f"{prefix}{k}."))
        return out
    out[prefix[:-1]] = obj
    return out
