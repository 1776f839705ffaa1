"""The gate: acceptance criteria and paired evals of baseline and candidate -> ship, rework, reject or blocked.

The comparison is paired: both models scored the same held-out rows, so the
gate matches samples by id, runs McNemar's exact test on per-sample correctness
of the primary suite, and gives every delta a paired-bootstrap 95% interval.

- blocked: evidence is missing or inconsistent (a suite failed, a samples file
  is missing or does not match its digest, model digests missing or different
  bases, baseline and candidate scored different rows); `blocked_by` names each.
- reject: the candidate is significantly worse than its base on the primary
  suite (McNemar p < 0.05 and a negative delta).
- ship: every criterion passes.
- rework: anything else; `next_action` names the recipe field to change, from
  the evidence (breadth dropped: raise train.replay; primary short while the
  training loss was still falling: raise train.steps).

Deltas and intervals are in the metric's own units (a rate delta of 0.05 is
5 points); thresholds are in the units the recipe writes them in.
`decide()` is pure, so the gate can be tested on hand-made records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from factory import hashing, stats
from factory.errors import FactoryError
from factory.records import (
    CriterionResult,
    Decision,
    EvalRecord,
    SampleRecord,
    SuiteResult,
    TrainLogLine,
    TrainSummary,
    read_jsonl,
    read_record,
    write_record,
)

ALPHA = 0.05
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
}
# Device tiers in increasing capability; a criterion allows its tier and every one below it.
TIERS = {"cpu": 0, "mps": 1, "xpu": 2, "cuda": 2, "gpu": 2}

Samples = dict[str, dict[str, list[dict[str, Any]]]]  # role -> suite -> sample dicts


# --- evidence: samples files ---------------------------------------------------

def load_samples(record: EvalRecord, root: Path, record_name: str | None = None) -> tuple[dict[str, list[dict]], list[str]]:
    """Read every suite's samples file under root and check it against the record's digest.

    Returns (suite -> sample dicts, problems). A file that is missing, unreadable,
    or whose bytes no longer match the digest in the record is a problem naming it.
    """
    name = record_name or f"eval-{record.role}.json"
    out: dict[str, list[dict]] = {}
    problems: list[str] = []
    for s in record.suites:
        if s.status != "ok":
            continue
        if s.samples is None:
            problems.append(f"{name}: suite {s.suite}: no samples file recorded")
            continue
        path = Path(root) / s.samples.path
        if not path.resolve().is_relative_to(Path(root).resolve()):  # a link that leads out of the run
            problems.append(f"{s.samples.path}: leads outside {root} (named by {name} for suite {s.suite})")
            continue
        if not path.is_file():
            problems.append(f"{s.samples.path}: missing (named by {name} for suite {s.suite})")
            continue
        actual = hashing.hash_file(path)  # no stat cache: an edit within the same mtime tick must still show
        if actual != s.samples.digest:
            problems.append(
                f"{s.samples.path}: digest {actual[:12]} does not match {name} ({s.samples.digest[:12]}); "
                "the file changed after the eval"
            )
            continue
        try:
            rows = [r.model_dump() for r in read_jsonl(path, SampleRecord)]
        except FactoryError as e:
            problems.append(str(e))
            continue
        if len(rows) != s.rows:
            problems.append(f"{s.samples.path}: {len(rows)} samples but {name} says {s.rows} rows for suite {s.suite}")
        out[s.suite] = rows
    return out, problems


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
    """Baseline vs candidate for one suite and metric: values, delta, paired interval, McNemar."""

    def __init__(self, baseline: EvalRecord | None, candidate: EvalRecord | None, samples: Samples, suite: str, metric: str | None):
        self.suite = suite
        bs, cs = _suite(baseline, suite), _suite(candidate, suite)
        primary_metric = (cs or bs).primary_metric if (cs or bs) else "exact_match"
        self.metric = metric or primary_metric
        self.name = f"{suite}.{self.metric}"
        b, c = _score(bs, self.metric), _score(cs, self.metric)
        self.higher = _higher_is_better(c, b)
        self.baseline = b.value if b is not None else None
        self.candidate = c.value if c is not None else None
        self.delta = self.candidate - self.baseline if None not in (self.baseline, self.candidate) else None
        self.interval: list[float] | None = None
        self.p_value: float | None = None
        self.discordant: tuple[int, int] | None = None
        pairs = _paired(
            samples.get("baseline", {}).get(suite), samples.get("candidate", {}).get(suite), self.metric, primary_metric
        )
        if pairs is not None:
            bv, cv, w, bc, cc = pairs
            _, lo, hi = stats.paired_bootstrap(bv, cv, weights=w, seed=SEED)
            self.interval = [lo, hi]
            self.discordant = stats.discordant(bc, cc)
            self.p_value = stats.mcnemar_exact(*self.discordant)

    @property
    def available(self) -> bool:
        return self.baseline is not None and self.candidate is not None

    def improvement(self) -> float | None:
        """Delta in the better direction: positive means the candidate is better."""
        if self.delta is None:
            return None
        return self.delta if self.higher else -self.delta

    def entry(self, name: str, threshold: Any, passed: bool, **extra: Any) -> CriterionResult:
        return CriterionResult(
            name=name,
            metric=self.name,
            threshold=threshold,
            baseline=self.baseline,
            candidate=self.candidate,
            delta=self.delta,
            interval=self.interval,
            p_value=self.p_value,
            passed=passed,
            **extra,
        )


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
    if hasattr(criteria, "model_dump"):
        criteria = criteria.model_dump()
    crit = {**DEFAULT_CRITERIA, **{k: v for k, v in dict(criteria or {}).items() if v is not None}}
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
    prim = _Compare(baseline, candidate, samples, primary, None)
    short_primary = False
    if crit["primary_min"] is not None:
        t = float(crit["primary_min"])
        passed = prim.candidate is not None and (prim.candidate >= t if prim.higher else prim.candidate <= t)
        entries.append(prim.entry("primary_min", t, passed))
        short_primary |= not passed
    else:
        entries.append(prim.entry("primary", None, prim.available))

    breadth_failed = []
    if crit["breadth_drop_max_pp"] is not None:
        t = float(crit["breadth_drop_max_pp"])
        for name in regression:
            cmp = _Compare(baseline, candidate, samples, name, None)
            imp = cmp.improvement()
            passed = imp is not None and -imp * 100 <= t + 1e-9
            entries.append(cmp.entry(f"breadth_drop_max_pp:{name}", t, passed))
            if not passed:
                breadth_failed.append(name)

    for key, t in sorted(crit["suite_min"].items()):
        suite, metric = _split_key(key, candidate or baseline)
        cmp = _Compare(baseline, candidate, samples, suite, metric)
        passed = cmp.candidate is not None and (cmp.candidate >= t if cmp.higher else cmp.candidate <= t)
        entries.append(cmp.entry(f"suite_min:{key}", float(t), passed))
        short_primary |= (not passed) and suite == primary

    for key, t in sorted(crit["delta_min_pp"].items()):
        suite, metric = _split_key(key, candidate or baseline)
        cmp = _Compare(baseline, candidate, samples, suite, metric)
        imp = cmp.improvement()
        passed = imp is not None and imp * 100 >= float(t) - 1e-9
        entries.append(cmp.entry(f"delta_min_pp:{key}", float(t), passed))
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
        entries.append(CriterionResult(name="max_vram_gb", metric="train.peak_vram_gb", threshold=t, candidate=peak, passed=passed))
        if not passed:
            hw_failed.append("max_vram_gb")
    if crit["device_tier"] is not None and train is not None:
        tier = str(crit["device_tier"]).lower()
        if tier not in TIERS:
            raise FactoryError(f"criteria.device_tier: unknown tier {tier!r}; known: {', '.join(sorted(TIERS))}")
        used = _device_kind(train.device)
        passed = TIERS.get(used, 99) <= TIERS[tier]
        entries.append(CriterionResult(name="device_tier", metric="train.device", threshold=tier, passed=passed, used=used))
        if not passed:
            hw_failed.append("device_tier")

    # Outcome.
    summary = _summary(prim)
    if blocked_by:
        return Decision(
            decision="blocked",
            reason=f"evidence missing or inconsistent ({len(blocked_by)} problem{'s' if len(blocked_by) != 1 else ''}); {summary}",
            next_action="fix what blocked_by names and rebuild the eval stages",
            blocked_by=blocked_by,
            criteria=entries,
        )
    imp = prim.improvement()
    if prim.p_value is not None and prim.p_value < ALPHA and imp is not None and imp < 0:
        return Decision(
            decision="reject",
            reason=f"the candidate is significantly worse than its base on {prim.name} "
            f"(McNemar p={prim.p_value:.3g}); {summary}",
            next_action=_next_action(["primary"], breadth_failed, hw_failed, train, train_log, rejected=True),
            criteria=entries,
        )
    failed = [e.name for e in entries if not e.passed]
    if not failed:
        return Decision(decision="ship", reason=f"every criterion passed; {summary}", criteria=entries)
    return Decision(
        decision="rework",
        reason=f"short of {', '.join(failed)}; not significantly worse than the base; {summary}",
        next_action=_next_action(["primary"] if short_primary else [], breadth_failed, hw_failed, train, train_log),
        criteria=entries,
    )


def _summary(prim: _Compare) -> str:
    if not prim.available:
        return f"{prim.name}: no scores"
    text = f"{prim.name} {prim.candidate:.3f} vs baseline {prim.baseline:.3f}"
    if prim.p_value is not None:
        text += f" (McNemar p={prim.p_value:.3g})"
    return text


def _next_action(
    primary_short: list[str],
    breadth_failed: list[str],
    hw_failed: list[str],
    train: TrainSummary | None,
    train_log: list[TrainLogLine] | None,
    rejected: bool = False,
) -> str:
    params = train.params if train is not None else {}
    actions = []
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

def _find(directory: Path, name: str) -> Path:
    """A file in a stage's output directory (or the directory itself when given the file)."""
    directory = Path(directory)
    return directory if directory.is_file() else directory / name


def read_train(train_dir: Path | None) -> tuple[TrainSummary | None, list[TrainLogLine] | None, list[str]]:
    problems: list[str] = []
    if train_dir is None:
        return None, None, problems
    train = log = None
    p = _find(train_dir, "train.json")
    if p.is_file():
        try:
            train = read_record(p, TrainSummary)
        except FactoryError as e:
            problems.append(str(e))
    lp = Path(train_dir) / "train.log"
    if lp.is_file():
        try:
            log = read_jsonl(lp, TrainLogLine)
        except FactoryError as e:
            problems.append(str(e))
    return train, log, problems


def read_eval(eval_dir: Path, role: str) -> tuple[EvalRecord | None, dict[str, list[dict]], list[str]]:
    path = Path(eval_dir) / f"eval-{role}.json"
    if not path.is_file():
        return None, {}, [f"eval-{role}.json: missing"]
    try:
        rec = read_record(path, EvalRecord)
    except FactoryError as e:
        return None, {}, [str(e)]
    samples, problems = load_samples(rec, Path(eval_dir))
    return rec, samples, problems


def build_decision(ctx: Any) -> None:
    """Build function of the `decide` stage: read the evidence, decide, write decision.json."""
    cfg = ctx.config
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

