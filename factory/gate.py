"""The gate: acceptance criteria and paired evals of baseline and candidate -> ship, rework, reject or blocked.

The comparison is paired: both models scored the same held-out rows, so the
gate matches samples by id, runs McNemar's exact test on per-sample correctness
of the primary suite, and gives every delta a closed-form paired interval at
`criteria.confidence` (`stats.paired_difference`). Under the default interval
rule a regression suite or skill passes when the interval's lower end stays
above -limit (non-inferiority, Holm over the family of regression tests) and
the primary must clear primary_min and be significantly better than its base.

- blocked: evidence is missing or inconsistent (a suite failed, a samples file
  is missing or does not match its digest, model digests missing or different
  bases, baseline and candidate scored different rows); `blocked_by` names each.
- reject: the candidate is significantly worse than its base on the primary
  suite (McNemar p < 1 - confidence and a negative delta).
- ship: every criterion passes.
- rework: anything else; `next_action` names the recipe field to change, from
  the evidence (breadth dropped: raise train.replay; primary short while the
  training loss was still falling: raise train.steps).

Deltas and intervals are in the metric's own units (a rate delta of 0.05 is
5 points); thresholds are in the units the recipe writes them in.
`decide()` is pure, so the gate can be tested on hand-made records. Also here:
`power_check` and the `power` stage (can the held-out sets resolve the margins,
before training), `check_criteria` (criteria against the suites, at plan time),
the policy digest and `rederive`, and decisions from a guard's stop record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from factory import hashing, stats
from factory.errors import FactoryError
from factory.evidence import Samples, read_eval, read_stop, read_train
from factory.records import (
    CriterionResult,
    Decision,
    EvalRecord,
    SuiteResult,
    TrainLogLine,
    TrainSummary,
    write_record,
)

SEED = 0
DEFAULT_CRITERIA: dict[str, Any] = {
    "primary_min": None,
    "breadth_drop_max_pp": None,
    "suite_min": {},
    "delta_min_pp": {},
    "max_vram_gb": None,
    "device_tier": None,
    "require_model_hash": True,
    "require_samples": True,
    "confidence": 0.95,
    "rule": "interval",
    "skill_drop_max_pp": None,
    "skill_drop_max_pp_by_skill": {},
}
# Device tiers in increasing capability; a criterion allows its tier and every one below it.
TIERS = {"cpu": 0, "mps": 1, "xpu": 2, "cuda": 2, "gpu": 2}


# --- small helpers -------------------------------------------------------------

def _suite(record: EvalRecord | None, name: str) -> SuiteResult | None:
    if record is None:
        return None
    return next((s for s in record.suites if s.suite == name), None)


def _split_key(key: str, record: EvalRecord | None) -> tuple[str, str | None]:
    """'suite.metric' or 'suite' -> (suite, metric or None for the suite's primary metric).

    Suite names may contain dots only if no registered suite matches a shorter prefix;
    the record's suite names decide.
    """
    names = {s.suite for s in record.suites} if record else set()
    if key in names:
        return key, None
    for name in sorted(names, key=len, reverse=True):
        if key.startswith(name + "."):
            return name, key[len(name) + 1 :]
    suite, _, metric = key.partition(".")
    return suite, metric or None


def _score(s: SuiteResult | None, metric: str):
    if s is None or s.status != "ok":
        return None
    return s.scores.get(metric)


def _higher_is_better(*scores: Any) -> bool:
    for sc in scores:
        if sc is not None:
            extra = getattr(sc, "model_extra", None) or {}
            if "higher_is_better" in extra:
                return bool(extra["higher_is_better"])
    return True


def _value(sample: dict[str, Any], metric: str, primary_metric: str) -> float | None:
    values = sample.get("values") or {}
    if metric in values:
        return float(values[metric])
    if metric == primary_metric:
        return float(bool(sample.get("correct")))
    return None


def _paired(
    base: list[dict] | None, cand: list[dict] | None, metric: str, primary_metric: str
) -> tuple[list[float], list[float], list[float] | None, list[bool], list[bool]] | None:
    """Per-id paired values of a metric (and correctness) or None when the samples cannot be paired."""
    if not base or not cand:
        return None
    by_id = {str(s["id"]): s for s in base}
    bv, cv, w, bc, cc = [], [], [], [], []
    weighted = True
    for s in cand:
        b = by_id.get(str(s["id"]))
        if b is None:
            continue
        x, y = _value(b, metric, primary_metric), _value(s, metric, primary_metric)
        if x is None or y is None:
            continue
        bv.append(x)
        cv.append(y)
        bc.append(bool(b.get("correct")))
        cc.append(bool(s.get("correct")))
        weight = s.get("weight")
        if weight is None:
            weighted = False
        w.append(float(weight or 0))
    if not bv:
        return None
    return bv, cv, (w if weighted else None), bc, cc


class _Compare:
    """Baseline vs candidate for one suite and metric (optionally one skill): values, delta, paired interval, McNemar."""

    def __init__(self, baseline: EvalRecord | None, candidate: EvalRecord | None, samples: Samples, suite: str,
                 metric: str | None, confidence: float = 0.95, skill: str | None = None):
        self.suite = suite
        self.skill = skill
        self.confidence = confidence
        bs, cs = _suite(baseline, suite), _suite(candidate, suite)
        primary_metric = (cs or bs).primary_metric if (cs or bs) else "exact_match"
        self.metric = metric or primary_metric
        self.name = f"{suite}.{self.metric}" + (f"[{skill}]" if skill else "")
        b, c = _score(bs, self.metric), _score(cs, self.metric)
        self.higher = _higher_is_better(c, b)
        self.rate = _is_rate(c, b)
        self.baseline = b.value if b is not None else None
        self.candidate = c.value if c is not None else None
        self.interval: list[float] | None = None
        self.p_value: float | None = None
        self.discordant: tuple[int, int] | None = None
        self.centre: float | None = None  # of the improvement (positive: candidate better)
        self.se: float | None = None
        self.n = 0
        base_s = samples.get("baseline", {}).get(suite)
        cand_s = samples.get("candidate", {}).get(suite)
        if skill is not None:
            base_s = [s for s in base_s or [] if s.get("skill") == skill]
            cand_s = [s for s in cand_s or [] if s.get("skill") == skill]
        pairs = _paired(base_s, cand_s, self.metric, primary_metric)
        if pairs is not None:
            bv, cv, w, bc, cc = pairs
            self.n = len(bv)
            if skill is not None:
                self.baseline, self.candidate = stats._wmean(bv, w), stats._wmean(cv, w)
            delta, centre, se = stats.paired_difference(bv, cv, weights=w)
            lo, hi = stats.interval_at(centre, se, (1 - confidence) / 2)
            self.interval = self.clip([lo, hi])
            self.centre, self.se = (centre, se) if self.higher else (-centre, se)
            self.discordant = stats.discordant(bc, cc)
            self.p_value = stats.mcnemar_exact(*self.discordant)
        elif skill is not None:
            self.baseline = self.candidate = None
        self.delta = self.candidate - self.baseline if None not in (self.baseline, self.candidate) else None

    def clip(self, iv: list[float]) -> list[float]:
        """A difference of two rates lies in [-1, 1]; the adjusted interval may reach past it."""
        return [max(-1.0, iv[0]), min(1.0, iv[1])] if self.rate else iv

    @property
    def available(self) -> bool:
        return self.baseline is not None and self.candidate is not None

    def improvement(self) -> float | None:
        """Delta in the better direction: positive means the candidate is better."""
        if self.delta is None:
            return None
        return self.delta if self.higher else -self.delta

    def improvement_bound(self, one_sided_alpha: float) -> float | None:
        """Lower end of the improvement's interval at a one-sided level (None without paired samples)."""
        if self.centre is None or self.se is None:
            return None
        return stats.interval_at(self.centre, self.se, one_sided_alpha)[0]

    def p_not_worse_than(self, margin: float) -> float | None:
        """One-sided p-value of H0: improvement <= -margin (a small p shows the drop is less than the margin)."""
        if self.centre is None or self.se is None:
            return None
        if self.se == 0:
            return 0.0 if self.centre > -margin else 1.0
        return stats.normal_sf((self.centre + margin) / self.se)

    def entry(self, name: str, threshold: Any, passed: bool, **extra: Any) -> CriterionResult:
        fields = dict(name=name, metric=self.name, threshold=threshold, baseline=self.baseline,
                      candidate=self.candidate, delta=self.delta, interval=self.interval, p_value=self.p_value,
                      n=self.n or None, passed=passed)
        return CriterionResult(**{**fields, **extra})


def _is_rate(*scores: Any) -> bool:
    for sc in scores:
        if sc is not None:
            extra = getattr(sc, "model_extra", None) or {}
            if "unit" in extra:
                return extra["unit"] == "rate"
    return all(sc is None or 0.0 <= sc.value <= 1.0 for sc in scores)


def _pp(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:+.1f}"


def _iv(cmp: "_Compare", interval: list[float] | tuple[float, float] | None = None) -> str:
    iv = interval if interval is not None else cmp.interval
    if iv is None:
        return "no paired interval"
    return f"{_pp(iv[0])}..{_pp(iv[1])} pts"


def loss_still_falling(log: Iterable[TrainLogLine] | None, tolerance: float = 0.02) -> bool | None:
    """Whether the last fifth of training still lowered the loss by more than `tolerance` (relative).

    None when there are too few log lines to tell.
    """
    losses = [line.loss for line in (log or [])]
    if len(losses) < 4:
        return None
    w = max(1, len(losses) // 5)
    last = sum(losses[-w:]) / w
    prev = sum(losses[-2 * w : -w]) / w
    return last < prev * (1 - tolerance)


def _device_kind(device: str | None) -> str:
    return (device or "cpu").split(":")[0].lower()


# --- the decision ----------------------------------------------------------------

def decide(
    baseline: EvalRecord | None,
    candidate: EvalRecord | None,
    samples: Samples,
    train: TrainSummary | None,
    criteria: dict[str, Any] | Any,
    primary: str,
    regression: list[str] | tuple[str, ...] = (),
    *,
    train_log: list[TrainLogLine] | None = None,
    problems: Iterable[str] = (),
) -> Decision:
    """Decide ship / rework / reject / blocked from the records (pure; see the module docstring).

    samples: {"baseline": {suite: [sample dicts]}, "candidate": {...}} as read from the samples files.
    problems: evidence problems already found while loading (missing or edited files); they block.
    """
    crit = resolve_criteria(criteria)
    blocked_by: list[str] = list(problems)
    entries: list[CriterionResult] = []

    # Evidence: records present, suites ok, samples present, same rows, same base.
    records = {"baseline": baseline, "candidate": candidate}
    for role, rec in records.items():
        if rec is None:
            blocked_by.append(f"eval-{role}.json: missing")
    needed = [primary, *regression]
    needed += [_split_key(k, candidate or baseline)[0] for k in crit["suite_min"]]
    needed += [_split_key(k, candidate or baseline)[0] for k in crit["delta_min_pp"]]
    for role, rec in records.items():
        if rec is None:
            continue
        for s in rec.suites:
            if s.status != "ok":
                blocked_by.append(f"eval-{role}.json: suite {s.suite} failed: {s.error or 'no error recorded'}")
        for name in dict.fromkeys(needed):
            s = _suite(rec, name)
            if s is None:
                blocked_by.append(f"eval-{role}.json: suite {name} missing")
            elif s.status == "ok" and crit["require_samples"] and name not in samples.get(role, {}):
                path = s.samples.path if s.samples else f"samples/{role}/{name}.jsonl"
                msg = f"{path}: samples missing for suite {name}"
                if not any(p.startswith(path) for p in blocked_by):
                    blocked_by.append(msg)
    if baseline is not None and candidate is not None:
        for name in dict.fromkeys(needed):
            b, c = _suite(baseline, name), _suite(candidate, name)
            if b and c and b.data_digest and c.data_digest and b.data_digest != c.data_digest:
                blocked_by.append(f"suite {name}: baseline and candidate scored different rows (data_digest differs)")
        if baseline.heldout_digest and candidate.heldout_digest and baseline.heldout_digest != candidate.heldout_digest:
            blocked_by.append("heldout_digest differs between eval-baseline.json and eval-candidate.json")

    if crit["require_model_hash"]:
        ok = True
        for role, rec in records.items():
            if rec is not None and not rec.model.base_digest:
                blocked_by.append(f"eval-{role}.json: model.base_digest missing")
                ok = False
        if candidate is not None and not candidate.model.adapter_digest:
            blocked_by.append("eval-candidate.json: model.adapter_digest missing")
            ok = False
        if baseline is not None and candidate is not None and baseline.model.base_digest != candidate.model.base_digest:
            blocked_by.append("model.base_digest differs between eval-baseline.json and eval-candidate.json")
            ok = False
        entries.append(CriterionResult(name="require_model_hash", metric="model.digest", threshold="required", passed=ok))
    if crit["require_samples"]:
        ok = not any("samples" in p for p in blocked_by)
        entries.append(CriterionResult(name="require_samples", metric="samples.digest", threshold="required", passed=ok))

    # Quality criteria.
    rule = crit["rule"]
    conf = float(crit["confidence"])
    alpha = 1 - conf  # two-sided; each interval's lower end is a one-sided test at alpha / 2
    level = f"{conf * 100:g}%"
    prim = _Compare(baseline, candidate, samples, primary, None, conf)
    short_primary = False
    if crit["primary_min"] is not None:
        t = float(crit["primary_min"])
        passed = prim.candidate is not None and (prim.candidate >= t if prim.higher else prim.candidate <= t)
        why = (f"{prim.name} {_num(prim.candidate)} {'≥' if passed else '<'} {t:g}" if prim.higher
               else f"{prim.name} {_num(prim.candidate)} {'≤' if passed else '>'} {t:g}")
        entries.append(prim.entry("primary_min", t, passed, reason=why))
        short_primary |= not passed
    else:
        entries.append(prim.entry("primary", None, prim.available, reason=f"{prim.name}: scores recorded"))
    # Superiority: the candidate must be better than its base, not just good.
    if prim.available:
        imp = prim.improvement()
        if rule == "interval":
            bound = prim.improvement_bound(alpha / 2)
            passed = bound is not None and bound > 0
            why = (f"{prim.name} {_pp(prim.delta)} pts over the base, {level} interval {_iv(prim)}"
                   + ("" if passed else " does not exclude 0")
                   + (f", McNemar p={prim.p_value:.3g}" if prim.p_value is not None else ""))
        else:
            passed = imp is not None and imp > 0
            why = f"{prim.name} {_pp(prim.delta)} pts over the base (point estimate)"
        entries.append(prim.entry("primary_superiority", 0.0, passed, reason=why, rule=rule))
        short_primary |= not passed

    # Regression suites and their skills: one family of non-inferiority tests.
    family: list[tuple[CriterionResult, _Compare, float]] = []
    failed_suites: list[str] = []

    def regression_test(name: str, cmp: _Compare, limit_pp: float) -> CriterionResult:
        margin = limit_pp / 100
        if cmp.higher and cmp.rate and cmp.baseline is not None and cmp.baseline <= margin + 1e-12:
            e = cmp.entry(name, limit_pp, False, uninformative=True,
                          reason=f"{cmp.name}: the baseline scores {cmp.baseline:.3f}, so a drop of more than "
                          f"{limit_pp:g} pts cannot show; this criterion proves nothing")
            entries.append(e)
            return e
        imp = cmp.improvement()
        if rule == "point" or cmp.centre is None:
            passed = imp is not None and -imp * 100 <= limit_pp + 1e-9
            e = cmp.entry(name, limit_pp, passed, rule="point",
                          reason=f"{cmp.name} {_pp(cmp.delta)} pts (point estimate) "
                          f"{'within' if passed else 'past'} the limit of -{limit_pp:g}")
            entries.append(e)
            return e
        e = cmp.entry(name, limit_pp, False, rule="interval", p_value=cmp.p_not_worse_than(margin),
                      mcnemar_p=cmp.p_value)
        entries.append(e)
        family.append((e, cmp, margin))
        return e

    if crit["breadth_drop_max_pp"] is not None:
        for name in regression:
            cmp = _Compare(baseline, candidate, samples, name, None, conf)
            regression_test(f"breadth_drop_max_pp:{name}", cmp, float(crit["breadth_drop_max_pp"]))
    by_skill = dict(crit["skill_drop_max_pp_by_skill"] or {})
    if crit["skill_drop_max_pp"] is not None or by_skill:
        for name in regression:
            skills = sorted({str(s.get("skill")) for role in ("baseline", "candidate")
                             for s in samples.get(role, {}).get(name, []) if s.get("skill") is not None})
            for skill in skills:
                limit = by_skill.get(f"{name}.{skill}", by_skill.get(skill, crit["skill_drop_max_pp"]))
                if limit is None:
                    continue
                cmp = _Compare(baseline, candidate, samples, name, None, conf, skill=skill)
                regression_test(f"skill_drop_max_pp:{name}.{skill}", cmp, float(limit))
    if family:
        ps = [e.p_value if e.p_value is not None else 1.0 for e, _, _ in family]
        levels = stats.holm_levels(ps, alpha / 2)
        rejected = stats.holm(ps, alpha / 2)
        stopped = False
        for (e, cmp, margin), lvl, ok in sorted(zip(family, levels, rejected), key=lambda x: x[1]):
            lo, _ = stats.interval_at(cmp.centre, cmp.se, lvl)
            holm_iv = [lo, cmp.centre + (cmp.centre - lo)] if cmp.higher else [-(cmp.centre + (cmp.centre - lo)), -lo]
            e.holm_alpha = lvl
            e.holm_interval = cmp.clip(holm_iv)
            e.passed = bool(ok)
            limit_pp = margin * 100
            held = "" if len(family) == 1 else f" (Holm, {len(family)} tests: level {1 - 2 * lvl:.4g})"
            if ok:
                e.reason = (f"{cmp.name} {_pp(cmp.delta)} pts, interval {_iv(cmp, e.holm_interval)}{held} "
                            f"stays above -{limit_pp:g}")
            elif not stopped and lo <= -margin:
                e.reason = (f"{cmp.name} {_pp(cmp.delta)} pts, interval {_iv(cmp, e.holm_interval)}{held} "
                            f"reaches below -{limit_pp:g}; non-inferiority not shown (p={e.p_value:.3g})")
            else:
                e.reason = (f"{cmp.name} {_pp(cmp.delta)} pts, interval {_iv(cmp, e.holm_interval)}{held}: not tested, "
                            "Holm stopped at an earlier test of the family")
            stopped |= not ok
    for e in entries:
        if e.name.startswith(("breadth_drop_max_pp:", "skill_drop_max_pp:")) and not e.passed:
            suite = e.metric.split(".")[0]
            if suite not in failed_suites:
                failed_suites.append(suite)

    for key, t in sorted(crit["suite_min"].items()):
        suite, metric = _split_key(key, candidate or baseline)
        cmp = _Compare(baseline, candidate, samples, suite, metric, conf)
        passed = cmp.candidate is not None and (cmp.candidate >= t if cmp.higher else cmp.candidate <= t)
        entries.append(cmp.entry(f"suite_min:{key}", float(t), passed,
                                 reason=f"{cmp.name} {_num(cmp.candidate)} against a bound of {float(t):g}"))
        short_primary |= (not passed) and suite == primary

    for key, t in sorted(crit["delta_min_pp"].items()):
        suite, metric = _split_key(key, candidate or baseline)
        cmp = _Compare(baseline, candidate, samples, suite, metric, conf)
        imp = cmp.improvement()
        if rule == "interval" and cmp.centre is not None:
            bound = cmp.improvement_bound(alpha / 2)
            passed = bound is not None and bound * 100 >= float(t) - 1e-9
            why = f"{cmp.name} {_pp(cmp.delta)} pts, interval {_iv(cmp)}: lower end against a gain of {float(t):g}"
        else:
            passed = imp is not None and imp * 100 >= float(t) - 1e-9
            why = f"{cmp.name} {_pp(cmp.delta)} pts (point estimate) against a gain of {float(t):g}"
        entries.append(cmp.entry(f"delta_min_pp:{key}", float(t), passed, reason=why))
        short_primary |= (not passed) and suite == primary

    # Hardware, checked against what training actually used.
    hw_failed = []
    if crit["max_vram_gb"] is not None or crit["device_tier"] is not None:
        if train is None:
            blocked_by.append("train.json: missing (needed for the hardware criteria)")
    if crit["max_vram_gb"] is not None and train is not None:
        t = float(crit["max_vram_gb"])
        peak = train.peak_vram_gb
        if peak is None and _device_kind(train.device) == "cpu":
            peak = 0.0  # CPU training uses no accelerator memory
        if peak is None:
            blocked_by.append(f"train.json: peak_vram_gb not recorded for device {train.device}")
        passed = peak is not None and peak <= t
        entries.append(CriterionResult(name="max_vram_gb", metric="train.peak_vram_gb", threshold=t, candidate=peak,
                                       passed=passed, reason=f"peak {_num(peak)} GB against {t:g} GB"))
        if not passed:
            hw_failed.append("max_vram_gb")
    if crit["device_tier"] is not None and train is not None:
        tier = str(crit["device_tier"]).lower()
        if tier not in TIERS:
            raise FactoryError(f"criteria.device_tier: unknown tier {tier!r}; known: {', '.join(sorted(TIERS))}")
        used = _device_kind(train.device)
        passed = TIERS.get(used, 99) <= TIERS[tier]
        entries.append(CriterionResult(name="device_tier", metric="train.device", threshold=tier, passed=passed,
                                       used=used, reason=f"trained on {used}, allowed up to {tier}"))
        if not passed:
            hw_failed.append("device_tier")

    # Outcome.
    policy = policy_of(crit, primary, regression)
    stamp = {"rule": rule, "confidence": conf, "policy": policy, "policy_digest": hashing.digest_json(policy)}
    summary = _summary(prim)
    if blocked_by:
        return Decision(
            decision="blocked",
            reason=f"evidence missing or inconsistent ({len(blocked_by)} problem{'s' if len(blocked_by) != 1 else ''}); {summary}",
            next_action="fix what blocked_by names and rebuild the eval stages",
            blocked_by=blocked_by,
            criteria=entries,
            **stamp,
        )
    imp = prim.improvement()
    worse = imp is not None and imp < 0 and prim.p_value is not None and prim.p_value < alpha
    if worse:
        return Decision(
            decision="reject",
            reason=f"the candidate is significantly worse than its base on {prim.name} "
            f"({_pp(prim.delta)} pts" + (f", McNemar p={prim.p_value:.3g}" if prim.p_value is not None else "")
            + f"); {summary}",
            next_action=_next_action(["primary"], failed_suites, hw_failed, train, train_log, rejected=True),
            criteria=entries,
            **stamp,
        )
    failed = [e for e in entries if not e.passed]
    if not failed:
        return Decision(decision="ship", reason=f"every criterion passed ({_rule_words(rule, conf)}); {summary}",
                        criteria=entries, **stamp)
    uninformative = [e for e in failed if getattr(e, "uninformative", False)]
    return Decision(
        decision="rework",
        reason=f"failed ({_rule_words(rule, conf)}): " + "; ".join(f"{e.name}: {getattr(e, 'reason', '')}" for e in failed),
        next_action=_next_action(["primary"] if short_primary else [],
                                 [s for s in failed_suites if not any(u.metric.startswith(s + ".") for u in uninformative)],
                                 hw_failed, train, train_log, uninformative=[u.metric.split(".")[0] for u in uninformative]),
        criteria=entries,
        **stamp,
    )


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _rule_words(rule: str, conf: float) -> str:
    return f"{conf * 100:g}% paired intervals" if rule == "interval" else "point estimates"


def _summary(prim: _Compare) -> str:
    if not prim.available:
        return f"{prim.name}: no scores"
    text = f"{prim.name} {prim.candidate:.3f} vs baseline {prim.baseline:.3f}"
    if prim.p_value is not None:
        text += f" (McNemar p={prim.p_value:.3g})"
    return text


# --- the policy ------------------------------------------------------------------

# factory.evidence reads what the gate decides on: a samples file that fails its digest blocks.
POLICY_MODULES = ("factory.gate", "factory.evidence", "factory.stats")


def resolve_criteria(criteria: dict[str, Any] | Any) -> dict[str, Any]:
    """The criteria with every default filled in, as the gate applies them."""
    if hasattr(criteria, "model_dump"):
        criteria = criteria.model_dump()
    return {**DEFAULT_CRITERIA, **{k: v for k, v in dict(criteria or {}).items() if v is not None}}


def gate_code() -> dict[str, str]:
    """Identity of the code that decides: the AST digest of each module of the gate."""
    from factory.stages import module_ast_digest

    return {m: module_ast_digest(m) for m in POLICY_MODULES}


def policy_of(criteria: dict[str, Any] | Any, primary: str, regression: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """What decided: the criteria as resolved, which suites they read, and the gate's code identity."""
    return {"criteria": resolve_criteria(criteria), "primary": primary, "regression": list(regression),
            "code": gate_code()}


def rederive(recorded: Decision, again: Decision) -> list[str]:
    """Mismatches between a recorded decision and the gate re-run on the same evidence, one line each."""
    problems: list[str] = []
    pol = getattr(recorded, "policy", None)
    dig = getattr(recorded, "policy_digest", None)
    if pol is None or dig is None:
        problems.append("decision.json: no policy_digest; the decision cannot be audited against a policy")
    elif hashing.digest_json(pol) != dig:
        problems.append("decision.json: policy_digest does not match the policy recorded beside it")
    else:
        new = getattr(again, "policy", {}) or {}
        if pol.get("criteria") != new.get("criteria") or pol.get("primary") != new.get("primary") \
                or pol.get("regression") != new.get("regression"):
            changed = sorted(k for k in {*(pol.get("criteria") or {}), *(new.get("criteria") or {})}
                             if (pol.get("criteria") or {}).get(k) != (new.get("criteria") or {}).get(k))
            problems.append("decision.json: decided under other criteria than config.json's"
                            + (f" ({', '.join('criteria.' + k for k in changed)})" if changed else ""))
        if pol.get("code") != new.get("code"):
            mods = sorted(m for m in {*(pol.get("code") or {}), *(new.get("code") or {})}
                          if (pol.get("code") or {}).get(m) != (new.get("code") or {}).get(m))
            problems.append(f"decision.json: decided by other gate code ({', '.join(mods)} changed since)")
    if again.decision != recorded.decision:
        problems.append(f"decision.json: says {recorded.decision}, but the evidence as it is now gives {again.decision}")
    return problems


def _next_action(
    primary_short: list[str],
    breadth_failed: list[str],
    hw_failed: list[str],
    train: TrainSummary | None,
    train_log: list[TrainLogLine] | None,
    rejected: bool = False,
    uninformative: list[str] = (),
) -> str:
    params = train.params if train is not None else {}
    actions = []
    for name in dict.fromkeys(uninformative):
        actions.append(f"{name} cannot show a regression from this base: use a base that scores on it (base.model) "
                       "or move it from evals.regression to evals.extra")
    if breadth_failed:
        replay = float(params.get("replay") or 0.0)
        target = min(0.5, max(0.25, replay * 2))
        actions.append(
            f"raise train.replay (now {replay:g}; try {target:g}): {', '.join(breadth_failed)} dropped past the limit"
        )
    if primary_short:
        falling = loss_still_falling(train_log)
        steps = params.get("steps") or (train.steps if train is not None else None)
        if rejected:
            actions.append(
                "check the training data against the eval rows (data.sources, data.contract) and lower train.lr"
                + (f" (now {params['lr']:g})" if params.get("lr") else "")
            )
        elif falling or falling is None:
            more = f" (now {steps}; try {int(steps) * 2})" if steps else ""
            why = "the training loss was still falling" if falling else "no train.log to tell whether it converged"
            actions.append(f"raise train.steps{more}: the primary suite fell short and {why}")
        else:
            actions.append(
                "the training loss had flattened: add or fix training data (data.sources), or raise train.lr "
                "or the LoRA rank (train.options.lora.r)"
            )
    if "max_vram_gb" in hw_failed:
        bs = params.get("batch_size")
        actions.append(f"lower train.batch_size{f' (now {bs})' if bs else ''} or set train.precision to bf16")
    if "device_tier" in hw_failed:
        actions.append("set train.device to a device within criteria.device_tier")
    if not actions:
        actions.append("see the failed criteria; no single recipe field is implicated by the evidence")
    return "; ".join(actions)


# --- the stage -----------------------------------------------------------------

def decision_from_stop(stop: dict[str, Any], criteria: Any, primary: str, regression: list[str]) -> Decision:
    """The decision of a build a guard stopped: its verdict's decision, reason, next action and blockers."""
    v = stop["verdict"]
    policy = policy_of(criteria, primary, regression)
    crit = policy["criteria"]
    guard = str(stop.get("stopped_by") or "a guard")
    verdict = v.get("decision") if v.get("decision") in ("ship", "rework", "reject", "blocked") else "blocked"
    checks = [c for c in v.get("checks") or [] if isinstance(c, dict)]
    entries = [CriterionResult(name=f"{guard}:{c.get('name', '?')}", metric=str(c.get("metric") or c.get("name") or "?"),
                               threshold=c.get("threshold") if isinstance(c.get("threshold"), (int, float, str)) else None,
                               passed=bool(c.get("passed")), reason=c.get("reason")) for c in checks]
    return Decision(
        decision=verdict,
        reason=str(v.get("reason") or f"{guard} did not pass"),
        next_action=v.get("next_action"),
        blocked_by=[str(b) for b in v.get("blocked_by") or []] or [guard],
        criteria=entries, rule=crit["rule"], confidence=float(crit["confidence"]), policy=policy,
        policy_digest=hashing.digest_json(policy), stopped_by=guard,
    )


def build_decision(ctx: Any) -> None:
    """Build function of the `decide` stage: read the evidence, decide, write decision.json."""
    cfg = ctx.config
    for name, directory in sorted(ctx.inputs.items()):
        stop = read_stop(directory) if directory is not None else None
        if stop is not None:
            decision = decision_from_stop(stop, cfg.get("criteria") or {}, cfg["primary"], list(cfg.get("regression") or []))
            write_record(Path(ctx.out) / "decision.json", decision)
            ctx.log(f"decide: {decision.decision}: {decision.reason}")
            return
    baseline, bs, p1 = read_eval(ctx.inputs["eval-baseline"], "baseline")
    candidate, cs, p2 = read_eval(ctx.inputs["eval-candidate"], "candidate")
    train, log, p3 = read_train(ctx.inputs.get("train"))
    decision = decide(
        baseline,
        candidate,
        {"baseline": bs, "candidate": cs},
        train,
        cfg.get("criteria") or {},
        cfg["primary"],
        list(cfg.get("regression") or []),
        train_log=log,
        problems=[*p1, *p2, *p3],
    )
    write_record(Path(ctx.out) / "decision.json", decision)
    ctx.log(f"decide: {decision.decision}: {decision.reason}")



# --- fail fast on power ----------------------------------------------------------

FIELD_OF_NEEDS = {"heldout": "data.heldout_fraction", "breadth": "breadth.heldout_fraction"}


def _baseline_rate(record: EvalRecord | None, suite: str, skill: str | None = None) -> tuple[int | None, float | None]:
    s = _suite(record, suite)
    if s is None or s.status != "ok":
        return None, None
    if skill is not None:
        sc = s.per_skill.get(skill)
        return (sc.n, sc.value) if sc is not None else (None, None)
    sc = s.scores.get(s.primary_metric)
    n = s.rows or (sc.n if sc is not None else 0)
    return n, (sc.value if sc is not None and _is_rate(sc) else None)


def _rows_needed(z: float, var: float, margin: float) -> int:
    import math

    return math.ceil(z * z * var / (margin * margin)) if margin > 0 else 0


def power_check(criteria: Any, primary: str, regression: list[str] | tuple[str, ...], baseline: EvalRecord | None,
                *, needs: dict[str, str] | None = None, fractions: dict[str, float] | None = None) -> dict[str, Any]:
    """Whether the held-out sets can resolve the margins the criteria declare, before anything trains.

    For each gated comparison, from its held-out size n and the baseline's rate p
    (0.5 where unknown), the half-width the gate's interval will have:
    h = z · sqrt(p(1 − p)/n) for a regression suite or skill (a paired
    difference whose two sides correlate at 0.5 has the variance of one rate),
    with z at Holm's strictest level for the family; and
    h = z · sqrt((p(1 − p) + t(1 − t))/n) for the primary's gain from p to
    primary_min t. A check fails when h is not below its margin (the limit, or
    t − p), or when the baseline is at or under a regression limit (a drop past
    it cannot show). Returns the verdict.json object (pass, decision, reason,
    next_action, blocked_by, checks). Pure: no model, no files.
    """
    crit = resolve_criteria(criteria)
    needs = dict(needs or {})
    fractions = dict(fractions or {})
    conf = float(crit["confidence"])
    one_sided = (1 - conf) / 2
    checks: list[dict[str, Any]] = []

    family: list[tuple[str, str, str | None, float]] = []  # (name, suite, skill, limit_pp)
    if crit["breadth_drop_max_pp"] is not None:
        family += [(f"breadth_drop_max_pp:{s}", s, None, float(crit["breadth_drop_max_pp"])) for s in regression]
    by_skill = dict(crit["skill_drop_max_pp_by_skill"] or {})
    if crit["skill_drop_max_pp"] is not None or by_skill:
        for s in regression:
            rec = _suite(baseline, s)
            for skill in sorted(rec.per_skill) if rec is not None else []:
                limit = by_skill.get(f"{s}.{skill}", by_skill.get(skill, crit["skill_drop_max_pp"]))
                if limit is not None:
                    family.append((f"skill_drop_max_pp:{s}.{skill}", s, skill, float(limit)))
    z_family = stats.z_quantile(1 - one_sided / max(1, len(family)))
    for name, suite, skill, limit_pp in family:
        n, p = _baseline_rate(baseline, suite, skill)
        margin = limit_pp / 100
        check: dict[str, Any] = {"name": name, "suite": suite, "skill": skill, "n": n, "baseline": p,
                                 "margin": margin, "z": z_family}
        if p is not None and p <= margin + 1e-12:
            check.update(passed=False, half_width=None, rows_needed=None,
                         reason=f"{suite}{'.' + skill if skill else ''}: the baseline scores {p:.3f}, so a drop of "
                         f"more than {limit_pp:g} pts cannot show")
        else:
            q = 0.5 if p is None else p
            half = z_family * (q * (1 - q) / n) ** 0.5 if n else float("inf")
            need = _rows_needed(z_family, q * (1 - q), margin)
            ok = half < margin
            check.update(passed=ok, half_width=half, rows_needed=need, assumed_rate=q,
                         reason=f"{suite}{'.' + skill if skill else ''}: ±{half * 100:.2f} pts on {n or 0} rows "
                         f"{'resolves' if ok else 'cannot resolve'} a limit of {limit_pp:g} pts"
                         + ("" if ok else f" (needs {need} rows)"))
        checks.append(check)
    if crit["primary_min"] is not None:
        t = float(crit["primary_min"])
        n, p = _baseline_rate(baseline, primary)
        q = 0.5 if p is None else p
        z = stats.z_quantile(1 - one_sided)
        margin = t - q
        check = {"name": "primary_superiority", "suite": primary, "skill": None, "n": n, "baseline": p,
                 "assumed_rate": q, "margin": margin, "z": z}
        if margin <= 0:
            check.update(passed=True, half_width=None, rows_needed=None,
                         reason=f"{primary}: the baseline ({q:.3f}) already reaches primary_min {t:g}; "
                         "no gain to size")
        else:
            var = q * (1 - q) + t * (1 - t)
            half = z * (var / n) ** 0.5 if n else float("inf")
            need = _rows_needed(z, var, margin)
            ok = half < margin
            check.update(passed=ok, half_width=half, rows_needed=need,
                         reason=f"{primary}: ±{half * 100:.2f} pts on {n or 0} rows "
                         f"{'resolves' if ok else 'cannot resolve'} a gain of {margin * 100:.1f} pts to {t:g}"
                         + ("" if ok else f" (needs {need} rows)"))
        checks.append(check)

    failed = [c for c in checks if not c["passed"]]
    actions: list[str] = []
    for suite in dict.fromkeys(c["suite"] for c in failed):
        mine = [c for c in failed if c["suite"] == suite]
        sized = [c for c in mine if c.get("rows_needed")]
        if sized:
            worst = max(sized, key=lambda c: c["rows_needed"] / max(1, c["n"] or 1))
            field = FIELD_OF_NEEDS.get(needs.get(suite, ""), None)
            frac = fractions.get(needs.get(suite, ""))
            have = worst["n"] or 0
            what = f"{worst['name']} needs {worst['rows_needed']} held-out rows (has {have})"
            if field and frac and have:
                target = min(0.5, frac * worst["rows_needed"] / have)
                target = float(f"{target + 0.005:.2f}") if target < 0.5 else 0.5
                hint = f"raise {field} from {frac:g} to {target:g}"
                if target >= 0.5 and frac * worst["rows_needed"] / have > 0.5:
                    hint += " and add rows to its sources"
                actions.append(f"{hint}: {what}")
            elif field:
                actions.append(f"raise {field} or add rows: {what}")
            else:
                actions.append(f"add held-out rows for {suite}: {what}")
        if any(c.get("rows_needed") is None and not c["passed"] for c in mine):
            actions.append(f"{suite} cannot show a regression from this base: use a base that scores on it "
                           "(base.model) or move it from evals.regression to evals.extra")
    if failed:
        reason = ("the held-out sets cannot resolve the declared margins: "
                  + "; ".join(c["reason"] for c in failed))
    else:
        reason = "every gated comparison can resolve its margin" if checks else "no criterion has a margin to size"
    return {"pass": not failed, "decision": "blocked", "reason": reason,
            "next_action": "; ".join(actions) if actions else None,
            "blocked_by": [f"power: {c['name']}: {c['reason']}" for c in failed], "checks": checks}


def build_power(ctx: Any) -> None:
    """Build function of the `power` stage: verdict.json from the baseline eval's sizes and rates."""
    import json

    cfg = ctx.config
    eb = ctx.inputs.get("eval-baseline")
    baseline = None
    if eb is not None:
        baseline, _, problems = read_eval(Path(eb), "baseline")
        if baseline is None:
            raise FactoryError(problems[0] if problems else f"{eb}: no eval-baseline.json")
    regression = list(cfg.get("regression") or [])
    needs = dict(cfg.get("needs") or {})
    registry = getattr(ctx, "registry", None)
    suites = getattr(getattr(registry, "suites", None), "items", None)
    for name in [cfg["primary"], *regression]:
        if name not in needs and isinstance(suites, dict) and name in suites:
            needs[name] = getattr(suites[name], "needs", "")
    fractions = dict(cfg.get("heldout_fraction") or {})
    recipe = getattr(ctx, "recipe", None)
    if recipe is not None and not fractions:
        for need, section in (("heldout", "data"), ("breadth", "breadth")):
            spec = getattr(recipe, section, None)
            if spec is not None:
                fractions[need] = float(spec.heldout_fraction)
    verdict = power_check(cfg.get("criteria") or {}, cfg["primary"], regression, baseline,
                          needs=needs, fractions=fractions)
    (Path(ctx.out) / "verdict.json").write_text(json.dumps(verdict, indent=2, sort_keys=True) + "\n")
    ctx.log(f"power: {'pass' if verdict['pass'] else 'blocked'}: {verdict['reason']}")


# --- criteria against the suites, at plan time -------------------------------------

def check_criteria(criteria: Any, suites: dict[str, Any], regression: list[str] | tuple[str, ...] | None = None) -> None:
    """Raise FactoryError naming `criteria.<field>` for a criterion that names an unknown suite, metric or skill.

    suites: name -> suite object (the recipe's suites, or every registered one).
    A metric is checked against the suite's `metrics` and a skill against its
    `skills` when the suite declares them; the suite's primary metric is always known.
    """
    crit = resolve_criteria(criteria)
    known = sorted(suites)

    def suite_of(field: str, key: str) -> tuple[str, str | None]:
        names = set(suites)
        if key in names:
            return key, None
        for name in sorted(names, key=len, reverse=True):
            if key.startswith(name + "."):
                return name, key[len(name) + 1:]
        raise FactoryError(f"criteria.{field}: {key!r} names no suite the recipe evaluates; known: {', '.join(known)}")

    for field in ("suite_min", "delta_min_pp"):
        for key in crit[field] or {}:
            suite, metric = suite_of(field, key)
            obj = suites[suite]
            declared = getattr(obj, "metrics", None)
            if metric is not None and declared is not None and metric not in declared \
                    and metric != getattr(obj, "primary_metric", None):
                raise FactoryError(f"criteria.{field}: {key!r}: suite {suite} has no metric {metric!r}; "
                                   f"known: {', '.join(sorted(declared))}")
    for key in crit["skill_drop_max_pp_by_skill"] or {}:
        regs = list(regression) if regression is not None else known
        suite = next((s for s in sorted(regs, key=len, reverse=True) if key.startswith(s + ".")), None)
        skill = key[len(suite) + 1:] if suite else key
        pool = [suite] if suite else [s for s in regs if s in suites]
        if suite is None and "." in key and key.split(".")[0] not in regs and key.split(".")[0] in suites:
            raise FactoryError(f"criteria.skill_drop_max_pp_by_skill: {key!r}: {key.split('.')[0]} is not a "
                               f"regression suite; regression: {', '.join(regs) or '(none)'}")
        declared = [set(getattr(suites[s], "skills")) for s in pool if getattr(suites.get(s), "skills", None) is not None]
        if declared and not any(skill in d for d in declared):
            raise FactoryError(f"criteria.skill_drop_max_pp_by_skill: {key!r}: no regression suite has a skill "
                               f"{skill!r}; known: {', '.join(sorted(set().union(*declared)))}")
    if not 0.5 < float(crit["confidence"]) < 1:
        raise FactoryError(f"criteria.confidence: {crit['confidence']} is outside (0.5, 1)")
    if crit["rule"] not in ("interval", "point"):
        raise FactoryError(f"criteria.rule: {crit['rule']!r}; expected interval or point")
