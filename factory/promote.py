"""The `promote` stage: is a training step's checkpoint good enough for the next step to start from it?

A step's `promote` criteria ('suite.metric' -> minimum) are checked on that step's own
checkpoint: the step's model is evaluated on the suites the criteria name (the same
eval stage code that scores baseline and candidate), and `verdict.json` says whether
every criterion cleared its minimum. The verdict guards what follows the step: the next
step's training, or, after the last step, the candidate's evaluation. A verdict that
does not pass stops that chain (nothing later is trained) and the gate's decision is
`rework`, naming the step and the criterion.

Outputs: `eval-candidate.json` and `samples/candidate/<suite>.jsonl` (the step's evidence),
and `verdict.json` {pass, decision, reason, next_action, blocked_by, checks, step}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from factory.records import EvalRecord, read_record


def check(record: EvalRecord, promote: dict[str, float], step: str, field: str) -> dict[str, Any]:
    """The verdict of one step's promotion criteria on its eval record."""
    by_suite = {s.suite: s for s in record.suites}
    checks, failed = [], []
    for crit in sorted(promote):
        minimum = float(promote[crit])
        suite_name, metric = crit.split(".", 1)
        suite = by_suite.get(suite_name)
        score = suite.scores.get(metric) if suite is not None and suite.status == "ok" else None
        value = None if score is None else float(score.value)
        # A lower-is-better metric (a risk rate, a loss) reads the bound as a ceiling, as the gate does.
        higher = score is None or (score.model_extra or {}).get("higher_is_better", True) is not False
        passed = value is not None and (value >= minimum if higher else value <= minimum)
        entry = {"criterion": crit, "min": minimum, "value": value, "passed": passed, "higher_is_better": higher,
                 "ci_low": None if score is None else score.ci_low, "ci_high": None if score is None else score.ci_high,
                 "n": 0 if score is None else score.n}
        if suite is None or suite.status != "ok":
            entry["error"] = f"suite {suite_name} did not run: {getattr(suite, 'error', 'missing')}"
        elif score is None:
            entry["error"] = f"suite {suite_name} has no metric {metric!r}; its metrics: {', '.join(sorted(suite.scores))}"
        checks.append(entry)
        if not passed:
            failed.append(entry)
    if not failed:
        shown = ", ".join(f"{c['criterion']} {c['value']:.3f} {'>=' if c['higher_is_better'] else '<='} {c['min']:g}"
                          for c in checks)
        return {"pass": True, "decision": "promote", "step": step, "reason": f"step {step} promoted: {shown}",
                "next_action": None, "blocked_by": [], "checks": checks}
    words = []
    for c in failed:
        got = "no value" if c["value"] is None else f"{c['value']:.3f}"
        words.append(f"{c['criterion']} {got} {'<' if c['higher_is_better'] else '>'} {c['min']:g}"
                     + (f" ({c['error']})" if c.get("error") else ""))
    return {
        "pass": False, "decision": "rework", "step": step,
        "reason": f"step {step} not promoted: " + "; ".join(words),
        "next_action": (f"train step {step} longer or differently ({field}.steps, {field}.lr, {field}.replay), "
                        f"or lower {field}.promote." + failed[0]["criterion"]),
        "blocked_by": [f"promote.{step}.{c['criterion']}" for c in failed],
        "checks": checks,
    }


def build_promote(ctx: Any) -> None:
    """Build function of the `promote` stage kind."""
    import dataclasses

    from factory.evaluate import build_eval

    build_eval(dataclasses.replace(ctx, config={**ctx.config, "role": "candidate"}))
    out = Path(ctx.out)
    record = read_record(out / "eval-candidate.json")
    assert isinstance(record, EvalRecord)
    verdict = check(record, ctx.config["promote"], ctx.config["step"], ctx.config.get("field", "train"))
    (out / "verdict.json").write_text(json.dumps(verdict, indent=2, sort_keys=True) + "\n")
    ctx.log(verdict["reason"])
