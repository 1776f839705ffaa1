"""The `report` stage: report.md and a self-contained report.html from a run's records.

Both say the decision first, then every criterion (baseline, candidate,
threshold, delta with its interval, pass), per-skill deltas of the recipe's
regression suites, the rates of suites that say lower is better, the training
summary, and the worst failing samples with expected vs output. Each table is
built once (`Table` of `Cell`s, from the evidence `factory.evidence` reads) and
rendered to Markdown and to HTML; Markdown clips long cells, HTML shows them
whole. The HTML page adds three plots drawn here as inline SVG (training loss,
scores with intervals, per-skill deltas); it has no network references, so it
can be mailed or archived as one file.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory import stats
from factory.evidence import STAGE_DIRS, Evidence, gather, read_run
from factory.records import Score, TrainLogLine

WORST = 10  # failing samples shown


# --- numbers as text -------------------------------------------------------------------

def _unit(score: Score | None) -> str:
    return (score.model_extra or {}).get("unit", "rate") if score is not None else "rate"


def fmt(value: float | None, unit: str = "rate") -> str:
    if value is None:
        return "–"
    if unit == "rate":
        return f"{100 * value:.1f}%"
    return f"{value:.4g}"


def fmt_delta(delta: float | None, interval: list[float] | None, unit: str = "rate") -> str:
    if delta is None:
        return "–"
    if unit == "rate":
        text = f"{100 * delta:+.1f} pp"
        if interval:
            text += f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"
        return text
    text = f"{delta:+.4g}"
    if interval:
        text += f" [{interval[0]:+.4g}, {interval[1]:+.4g}]"
    return text


def _metric_unit(ev: Evidence, metric: str) -> str:
    for rec in (ev.candidate, ev.baseline):
        if rec is None:
            continue
        for s in rec.suites:
            if metric.startswith(s.suite + "."):
                return _unit(s.scores.get(metric[len(s.suite) + 1 :]))
    return "rate" if not metric.startswith("train.") else "value"


def _threshold(c: Any) -> str:
    t = c.threshold
    if t is None:
        return "–"
    if isinstance(t, str):
        return t
    if c.name.startswith("breadth_drop_max_pp"):
        return f"drop ≤ {t:g} pp"
    if c.name.startswith("delta_min_pp"):
        return f"≥ {t:+g} pp"
    if c.name == "max_vram_gb":
        return f"≤ {t:g} GB"
    return f"≥ {fmt(t)}" if 0 <= t <= 1 else f"{t:g}"


# --- derived tables ----------------------------------------------------------------------

def criteria_rows(ev: Evidence) -> list[dict[str, str]]:
    rows = []
    for c in ev.decision.criteria if ev.decision else []:
        unit = _metric_unit(ev, c.metric)
        rows.append({
            "criterion": c.name,
            "metric": c.metric,
            "baseline": fmt(c.baseline, unit) if c.baseline is not None else "–",
            "candidate": fmt(c.candidate, unit) if c.candidate is not None else "–",
            "threshold": _threshold(c),
            "delta": fmt_delta(c.delta, c.interval, unit),
            "p": f"{c.p_value:.3g}" if c.p_value is not None else "–",
            "pass": "yes" if c.passed else "**no**",
        })
    return rows


def regression_suites(ev: Evidence) -> list[str]:
    """The suites the recipe declares as regression suites: from the config, else those its decision's
    regression criteria name (`breadth_drop_max_pp:<suite>`)."""
    declared = ev.settings.get("regression")
    if declared:
        return list(declared)
    crit = ev.decision.criteria if ev.decision is not None else []
    return sorted({c.name.split(":", 1)[1] for c in crit if c.name.startswith("breadth_drop_max_pp:")})


def lower_is_better_suites(ev: Evidence) -> list[str]:
    """Suites beyond the primary and the regression suites with a rate that says lower is better (risk rates)."""
    skip = {_primary(ev), *regression_suites(ev)}
    out = []
    for s in (ev.candidate.suites if ev.candidate is not None else []):
        if s.suite not in skip and s.status == "ok" and any(
                (sc.model_extra or {}).get("higher_is_better", True) is False for sc in s.scores.values()):
            out.append(s.suite)
    return out


def _title(suite: str) -> str:
    return suite[:1].upper() + suite[1:]


def skill_deltas(ev: Evidence, suite: str) -> list[dict[str, Any]]:
    """Per skill, worst delta first: baseline, candidate, delta and the gate's paired interval (from the samples)."""
    b, c = ev.suite("baseline", suite), ev.suite("candidate", suite)
    if b is None or c is None:
        return []
    bs = {s["id"]: s for s in ev.samples["baseline"].get(suite, [])}
    groups: dict[str, tuple[list[float], list[float]]] = {}
    for s in ev.samples["candidate"].get(suite, []):
        if s["id"] in bs and s.get("skill") is not None:
            x, y = groups.setdefault(s["skill"], ([], []))
            x.append(float(bool(bs[s["id"]]["correct"])))
            y.append(float(bool(s["correct"])))
    out = []
    for skill in sorted(set(b.per_skill) | set(c.per_skill)):
        bv = b.per_skill.get(skill)
        cv = c.per_skill.get(skill)
        row = {"skill": skill, "baseline": bv.value if bv else None, "candidate": cv.value if cv else None,
               "delta": (cv.value - bv.value) if bv and cv else None, "interval": None}
        if skill in groups:
            conf = float((ev.decision.confidence if ev.decision is not None else None) or 0.95)
            _, centre, se = stats.paired_difference(*groups[skill])
            lo, hi = stats.interval_at(centre, se, (1 - conf) / 2)
            row["interval"] = [max(-1.0, lo), min(1.0, hi)]
        out.append(row)
    out.sort(key=lambda r: (r["delta"] is None, r["delta"] if r["delta"] is not None else 0.0, r["skill"]))
    return out


def worst_samples(ev: Evidence, suite: str, k: int = WORST) -> list[dict[str, Any]]:
    """Failing candidate samples, regressions first (the base got them right), then fewest right fields."""
    base = {s["id"]: s for s in ev.samples["baseline"].get(suite, [])}
    failing = [s for s in ev.samples["candidate"].get(suite, []) if not s.get("correct")]

    def key(s: dict) -> tuple:
        regressed = bool(base.get(s["id"], {}).get("correct"))
        fields = s.get("fields") or {}
        return (not regressed, sum(1 for v in fields.values() if v), s["id"])

    out = []
    for s in sorted(failing, key=key)[:k]:
        out.append({**s, "regressed": bool(base.get(s["id"], {}).get("correct"))})
    return out


def _primary(ev: Evidence) -> str | None:
    p = ev.settings.get("primary")
    if p:
        return p
    if ev.decision:
        for c in ev.decision.criteria:
            if c.name in ("primary_min", "primary"):
                return c.metric.rsplit(".", 1)[0] if "." in c.metric else c.metric
    names = ev.suite_names()
    return names[0] if names else None


# --- tables: built once, rendered to Markdown and to HTML ----------------------------------------

@dataclass(frozen=True)
class Cell:
    """One table cell. Markdown clips it to `clip` characters; HTML shows it whole."""

    text: str
    code: bool = False  # a literal: `text` in Markdown, <code> in HTML
    alarm: bool = False  # a failing verdict: bold in Markdown, marked red in HTML
    clip: int | None = None


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]


def _cells(*values: Any) -> list[Cell]:
    return [v if isinstance(v, Cell) else Cell(str(v)) for v in values]


def _clip(text: str, n: int = 160) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def criteria_table(ev: Evidence) -> Table:
    keys = ["criterion", "metric", "baseline", "candidate", "threshold", "delta", "p"]
    return Table(["criterion", "metric", "baseline", "candidate", "threshold", "delta [95% CI]", "McNemar p", "pass"],
                 [_cells(*[r[k] for k in keys], Cell("yes") if r["pass"] == "yes" else Cell("no", alarm=True))
                  for r in criteria_rows(ev)])


def scores_table(ev: Evidence) -> Table:
    rows = []
    for name in ev.suite_names():
        b, c = ev.suite("baseline", name), ev.suite("candidate", name)
        if (c and c.status != "ok") or (b and b.status != "ok"):
            err = (c.error if c and c.status != "ok" else b.error) or "failed"
            rows.append(_cells(name, "–", "failed", "failed", Cell(err, clip=160)))
            continue
        for m in (c or b).scores:
            bs, cs = b.scores.get(m) if b else None, c.scores.get(m) if c else None
            unit = _unit(cs or bs)
            ci = f"[{fmt(cs.ci_low, unit)}, {fmt(cs.ci_high, unit)}]" if cs and cs.ci_low is not None else ""
            rows.append(_cells(name, m, fmt(bs.value if bs else None, unit), fmt(cs.value if cs else None, unit), ci))
    return Table(["suite", "metric", "baseline", "candidate", "candidate 95% CI"], rows)


def skills_table(skills: list[dict[str, Any]]) -> Table:
    return Table(["skill", "baseline", "candidate", "delta [95% CI]"],
                 [_cells(s["skill"], fmt(s["baseline"]), fmt(s["candidate"]), fmt_delta(s["delta"], s["interval"]))
                  for s in skills])


def rates_table(ev: Evidence, suite: str) -> Table:
    """A lower-is-better suite's rates, baseline beside candidate."""
    b, c = ev.suite("baseline", suite), ev.suite("candidate", suite)
    rows = []
    for m, sc in c.scores.items():
        bs = b.scores.get(m) if b and b.status == "ok" else None
        better = "higher" if (sc.model_extra or {}).get("higher_is_better", True) else "lower"
        u = _unit(sc)  # a loss is a number, not a percentage
        ci = f"[{fmt(sc.ci_low, u)}, {fmt(sc.ci_high, u)}]" if sc.ci_low is not None else "–"
        rows.append(_cells(m, fmt(bs.value if bs else None, u), fmt(sc.value, u), ci, better))
    return Table(["metric", "baseline", "candidate", "candidate 95% CI", "better"], rows)


def training_table(ev: Evidence) -> Table | None:
    t = ev.train
    if t is None:
        return None
    rows = [["method", t.method], ["steps", t.steps], ["final loss", f"{t.final_loss:.4f}"],
            ["best held-out loss", f"{t.best_heldout_loss:.4f}" if t.best_heldout_loss is not None else "–"],
            *_timing_rows(t), ["device", t.device], ["processes", t.processes]]
    if t.peak_vram_gb is not None:
        rows.append(["peak VRAM", f"{t.peak_vram_gb:.2f} GB"])
    rows += [[k, t.params[k]] for k in ("lr", "batch_size", "replay", "seed") if k in t.params]
    return Table(["", ""], [_cells(*r) for r in rows])


def worst_table(worst: list[dict[str, Any]]) -> Table:
    return Table(["id", "prompt", "expected", "output", "base had it right"],
                 [_cells(w["id"], Cell(w["prompt"], clip=80), Cell(w["expected"], code=True, clip=100),
                         Cell(w["output"], code=True, clip=100), "yes" if w["regressed"] else "no") for w in worst])


def worst_suites(ev: Evidence) -> list[str]:
    """The suites whose worst failing samples the report shows: the primary, then the regression suites."""
    return [s for s in [_primary(ev), *regression_suites(ev)] if s]


# --- markdown ------------------------------------------------------------------------------

def _md_cell(c: Cell) -> str:
    text = _clip(c.text, c.clip) if c.clip else c.text
    text = f"`{text}`" if c.code else f"**{text}**" if c.alarm else text
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(t: Table) -> list[str]:
    lines = ["| " + " | ".join(t.headers) + " |", "|" + "|".join("---" for _ in t.headers) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in t.rows]
    return lines


def render_markdown(ev: Evidence) -> str:
    cfg = ev.settings
    title = cfg.get("recipe") or "run"
    L: list[str] = []
    d = ev.decision
    L.append(f"# {title}: {d.decision.upper() if d else 'NO DECISION'}")
    L.append("")
    if d:
        L.append(f"**Decision: {d.decision}.** {d.reason}")
        if d.next_action:
            L.append("")
            L.append(f"**Next action:** {d.next_action}")
        if d.blocked_by:
            L.append("")
            L.append("**Blocked by:**")
            L += [f"- {b}" for b in d.blocked_by]
    L.append("")
    if cfg.get("goal"):
        L.append(f"Goal: {cfg['goal']}  ")
    if cfg.get("owner"):
        L.append(f"Owner: {cfg['owner']}  ")
    if ev.candidate:
        L.append(f"Base digest: `{ev.candidate.model.base_digest}`  ")
        L.append(f"Adapter digest: `{ev.candidate.model.adapter_digest}`")
    L.append("")

    L.append("## Criteria")
    L.append("")
    crit = criteria_table(ev)
    L += markdown_table(crit) if crit.rows else ["No decision record."]
    L.append("")

    L.append("## Scores")
    L.append("")
    L += markdown_table(scores_table(ev))
    L.append("")

    for reg in regression_suites(ev):
        skills = skill_deltas(ev, reg)
        if not skills:
            continue
        L.append(f"## {_title(reg)} by skill")
        L.append("")
        L += markdown_table(skills_table(skills))
        L.append("")

    for risk in lower_is_better_suites(ev):
        L.append(f"## {_title(risk)}")
        L.append("")
        L += markdown_table(rates_table(ev, risk))
        L.append("")

    L.append("## Training")
    L.append("")
    train = training_table(ev)
    L += markdown_table(train) if train is not None else ["No training summary."]
    L.append("")

    if ev.dataset:
        L.append("## Data")
        L.append("")
        L.append(_data_line(ev))
        L.append("")

    L.append("## Worst failing samples")
    L.append("")
    for suite in worst_suites(ev):
        worst = worst_samples(ev, suite)
        if not worst:
            continue
        L.append(f"### {suite}")
        L.append("")
        L += markdown_table(worst_table(worst))
        L.append("")
    if ev.problems:
        L.append("## Problems reading the evidence")
        L.append("")
        L += [f"- {p}" for p in ev.problems]
        L.append("")
    return "\n".join(L).rstrip() + "\n"


def _data_line(ev: Evidence) -> str:
    c = ev.dataset.counts
    return (f"{c.train_rows} train rows, {c.heldout_rows} held-out rows, {c.dropped_rows} dropped"
            + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(c.dropped_by_reason.items())) + ")"
               if c.dropped_by_reason else "") + ".")


# --- SVG plots -------------------------------------------------------------------------------

W, H, PAD = 560, 220, 44


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def svg_loss(log: list[TrainLogLine]) -> str:
    """Training loss (line) and held-out loss (dots) against step."""
    if not log:
        return ""
    steps = [p.step for p in log]
    vals = [p.loss for p in log] + [p.heldout_loss for p in log if p.heldout_loss is not None]
    x0, x1 = min(steps), max(steps) or 1
    y0, y1 = min(vals), max(vals)
    if y1 == y0:
        y1 = y0 + 1
    if x1 == x0:
        x1 = x0 + 1

    def X(s: float) -> float:
        return PAD + (s - x0) / (x1 - x0) * (W - 2 * PAD)

    def Y(v: float) -> float:
        return H - PAD + 10 - (v - y0) / (y1 - y0) * (H - 2 * PAD)

    pts = " ".join(f"{X(p.step):.1f},{Y(p.loss):.1f}" for p in log)
    dots = "".join(f'<circle cx="{X(p.step):.1f}" cy="{Y(p.heldout_loss):.1f}" r="3" class="ho"/>'
                   for p in log if p.heldout_loss is not None)
    return (
        f'<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="training loss">'
        f'<line x1="{PAD}" y1="{H - PAD + 10}" x2="{W - PAD}" y2="{H - PAD + 10}" class="axis"/>'
        f'<line x1="{PAD}" y1="{PAD - 10}" x2="{PAD}" y2="{H - PAD + 10}" class="axis"/>'
        f'<polyline points="{pts}" class="line"/>{dots}'
        f'<text x="{PAD}" y="{PAD - 16}" class="lab">loss {y1:.3g}</text>'
        f'<text x="{PAD + 4}" y="{H - PAD + 6}" class="lab">{y0:.3g}</text>'
        f'<text x="{PAD}" y="{H - 12}" class="lab">step {x0}</text>'
        f'<text x="{W - PAD}" y="{H - 12}" class="lab" text-anchor="end">{x1}</text>'
        f'<text x="{W - PAD}" y="{PAD - 16}" class="lab" text-anchor="end">— train  ● held-out</text></svg>'
    )


def svg_scores(items: list[tuple[str, Score | None, Score | None]]) -> str:
    """Rates with 95% intervals, baseline and candidate side by side, on a 0–100% axis."""
    items = [i for i in items if i[1] is not None or i[2] is not None]
    if not items:
        return ""
    row_h = 34
    h = PAD + row_h * len(items) + 10
    left, right = 170, W - 20

    def X(v: float) -> float:
        return left + max(0.0, min(1.0, v)) * (right - left)

    parts = [f'<svg width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img" aria-label="scores">']
    for tick in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f'<line x1="{X(tick):.1f}" y1="{PAD - 14}" x2="{X(tick):.1f}" y2="{h - 10}" class="grid"/>'
                     f'<text x="{X(tick):.1f}" y="{PAD - 18}" class="lab" text-anchor="middle">{int(tick * 100)}%</text>')
    for i, (label, b, c) in enumerate(items):
        y = PAD + i * row_h + 8
        parts.append(f'<text x="{left - 8}" y="{y + 6}" class="lab" text-anchor="end">{_e(label)}</text>')
        for off, sc, cls in ((-6, b, "base"), (6, c, "cand")):
            if sc is None:
                continue
            if sc.ci_low is not None and sc.ci_high is not None:
                parts.append(f'<line x1="{X(sc.ci_low):.1f}" y1="{y + off}" x2="{X(sc.ci_high):.1f}" y2="{y + off}" class="{cls}"/>')
            parts.append(f'<circle cx="{X(sc.value):.1f}" cy="{y + off}" r="4" class="{cls}"><title>{_e(label)} {cls}: {fmt(sc.value)}</title></circle>')
    parts.append(f'<text x="{W - 20}" y="{h - 2}" class="lab" text-anchor="end">○ baseline (upper)  ● candidate (lower), 95% CI</text></svg>')
    return "".join(parts)


def svg_skill_deltas(skills: list[dict[str, Any]], suite: str = "regression") -> str:
    """Per-skill breadth delta in points, bars around zero, with paired-bootstrap intervals."""
    skills = [s for s in skills if s["delta"] is not None]
    if not skills:
        return ""
    row_h = 26
    h = PAD + row_h * len(skills)
    left, right = 140, W - 50
    span = max([abs(s["delta"]) for s in skills] + [abs(x) for s in skills if s["interval"] for x in s["interval"]] + [0.05])
    mid = (left + right) / 2

    def X(v: float) -> float:
        return mid + v / span * (right - left) / 2

    parts = [f'<svg width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img" aria-label="{html.escape(suite)} deltas by skill">',
             f'<line x1="{mid}" y1="{PAD - 14}" x2="{mid}" y2="{h - 4}" class="axis"/>',
             f'<text x="{left}" y="{PAD - 18}" class="lab">{-span * 100:+.0f} pp</text>',
             f'<text x="{right}" y="{PAD - 18}" class="lab" text-anchor="end">{span * 100:+.0f} pp</text>']
    for i, s in enumerate(skills):
        y = PAD + i * row_h
        x = X(s["delta"])
        cls = "neg" if s["delta"] < 0 else "pos"
        parts.append(f'<text x="{left - 8}" y="{y + 12}" class="lab" text-anchor="end">{_e(s["skill"])}</text>')
        parts.append(f'<rect x="{min(x, mid):.1f}" y="{y + 2}" width="{abs(x - mid):.1f}" height="14" class="{cls}">'
                     f'<title>{_e(s["skill"])}: {fmt_delta(s["delta"], s["interval"])}</title></rect>')
        if s["interval"]:
            lo, hi = s["interval"]
            parts.append(f'<line x1="{X(lo):.1f}" y1="{y + 9}" x2="{X(hi):.1f}" y2="{y + 9}" class="ci"/>')
        parts.append(f'<text x="{W - 4}" y="{y + 12}" class="lab" text-anchor="end">{100 * s["delta"]:+.1f}</text>')
    parts.append(f'<text x="{mid}" y="{PAD - 18}" class="lab" text-anchor="middle">0</text></svg>')
    return "".join(parts)


# --- HTML ------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} table{border-collapse:collapse;margin:.5em 0 1.2em} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3} code{background:#f6f6f6;padding:0 3px;word-break:break-all} .no{color:#b00020;font-weight:600}
.badge{display:inline-block;padding:3px 12px;border-radius:4px;color:#fff;font-weight:700;text-transform:uppercase}
.ship{background:#1b7f3b}.rework{background:#b26a00}.reject{background:#b00020}.blocked{background:#555}
svg{display:block;margin:.4em 0 1.2em;max-width:100%} .axis{stroke:#444} .grid{stroke:#ddd}
.line{fill:none;stroke:#1f5fbf;stroke-width:1.6} .ho{fill:#d2691e} .lab{font-size:11px;fill:#444}
circle.base{fill:#fff;stroke:#777;stroke-width:1.5} line.base{stroke:#999;stroke-width:2}
circle.cand{fill:#1f5fbf} line.cand{stroke:#1f5fbf;stroke-width:2} rect.pos{fill:#2e9d57} rect.neg{fill:#c8443a} .ci{stroke:#222}
"""


def _html_cell(c: Cell) -> str:
    text = _e(c.text)
    return f"<code>{text}</code>" if c.code else f'<span class="no">{text}</span>' if c.alarm else text


def html_table(t: Table) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in r) + "</tr>" for r in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(ev: Evidence) -> str:
    cfg = ev.settings
    d = ev.decision
    title = cfg.get("recipe") or "run"
    out = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}: "
           f"{_e(d.decision if d else 'no decision')}</title><style>{CSS}</style></head><body>"]
    out.append(f"<h1>{_e(title)}</h1>")
    if d:
        out.append(f'<p><span class="badge {_e(d.decision)}">{_e(d.decision)}</span> {_e(d.reason)}</p>')
        if d.next_action:
            out.append(f"<p><b>Next action:</b> {_e(d.next_action)}</p>")
        if d.blocked_by:
            out.append("<p><b>Blocked by:</b></p><ul>" + "".join(f"<li>{_e(b)}</li>" for b in d.blocked_by) + "</ul>")
    meta = [(k, cfg[k]) for k in ("goal", "owner") if cfg.get(k)]
    if ev.candidate:
        meta += [("base digest", ev.candidate.model.base_digest), ("adapter digest", ev.candidate.model.adapter_digest)]
    if meta:
        out.append(html_table(Table(["", ""], [_cells(k, v) for k, v in meta])))

    out.append("<h2>Criteria</h2>")
    out.append(html_table(criteria_table(ev)))

    out.append("<h2>Scores</h2>")
    rates = set(lower_is_better_suites(ev))
    items = []
    for name in ev.suite_names():
        b, c = ev.suite("baseline", name), ev.suite("candidate", name)
        for m in ((c or b).scores if (c or b) else {}):
            bs, cs = (b.scores.get(m) if b else None), (c.scores.get(m) if c else None)
            if _unit(cs or bs) == "rate" and (m == (c or b).primary_metric or name in rates):
                items.append((f"{name} {m}", bs, cs))
    out.append(svg_scores(items))
    out.append(html_table(scores_table(ev)))

    for reg in regression_suites(ev):
        skills = skill_deltas(ev, reg)
        if not skills:
            continue
        out.append(f"<h2>{_e(_title(reg))} by skill</h2>")
        out.append(svg_skill_deltas(skills, reg))
        out.append(html_table(skills_table(skills)))

    for risk in lower_is_better_suites(ev):
        out.append(f"<h2>{_e(_title(risk))}</h2>")
        out.append(html_table(rates_table(ev, risk)))

    out.append("<h2>Training</h2>")
    train = training_table(ev)
    if train is not None:
        out.append(svg_loss(ev.log))
        out.append(html_table(train))
    else:
        out.append("<p>No training summary.</p>")

    if ev.dataset:
        out.append(f"<h2>Data</h2><p>{_e(_data_line(ev))}</p>")

    out.append("<h2>Worst failing samples</h2>")
    for suite in worst_suites(ev):
        worst = worst_samples(ev, suite)
        if worst:
            out.append(f"<h3>{_e(suite)}</h3>")
            out.append(html_table(worst_table(worst)))
    if ev.problems:
        out.append("<h2>Problems reading the evidence</h2><ul>" + "".join(f"<li>{_e(p)}</li>" for p in ev.problems) + "</ul>")
    out.append("</body></html>\n")
    return "".join(out)


# --- the stage ------------------------------------------------------------------------------

def build_report(ctx: Any) -> None:
    """Build function of the `report` stage: report.md and report.html into ctx.out."""
    ev = gather({k: ctx.inputs.get(k) for k in STAGE_DIRS}, dict(ctx.config or {}))
    out = Path(ctx.out)
    (out / "report.md").write_text(render_markdown(ev))
    (out / "report.html").write_text(render_html(ev))


def report_run(run_dir: Path) -> tuple[str, str]:
    """(markdown, html) for a run directory, from its own files."""
    ev = read_run(run_dir)
    return render_markdown(ev), render_html(ev)


def _timing_rows(t) -> list[list[str]]:
    """Time and throughput, for older runs whose train.json still held them (the report is content only)."""
    rows = []
    if t.seconds is not None:
        rows.append(["time", f"{t.seconds:.1f} s"])
    if t.tokens_per_s is not None:
        rows.append(["tokens/s", f"{t.tokens_per_s:,.0f}"])
    return rows
