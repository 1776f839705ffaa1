"""Charts as server-rendered SVG: loss curves, score changes with their intervals, per-skill bars.

Plain strings, no JavaScript and nothing fetched: the page works offline, a
test can read the numbers in it, and a browser prints it as it shows it.
"""

from __future__ import annotations

import math
from html import escape

COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"]
BASELINE = "#9ca3af"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + step * 1e-9:
        out.append(round(v, 10))
        v += step
    return out


def _num(v: float) -> str:
    return f"{v:.4g}"


def line_chart(series: list[tuple[str, list[tuple[float, float]]]], x_label: str = "step", y_label: str = "loss",
               width: int = 680, height: int = 260, title: str = "") -> str:
    """One line per (label, [(x, y), ...]); a shared axis, a legend when there is more than one line."""
    pts = [(x, y) for _, s in series for x, y in s if y is not None and math.isfinite(y)]
    if not pts:
        return f'<svg class="chart" role="img" width="{width}" height="40"><text x="8" y="24">no {escape(y_label)} logged</text></svg>'
    left, right, top, bottom = 56, 16, 28 if title else 12, 40
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    w, h = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - x0) / (x1 - x0) * w

    def sy(y):
        return top + (1 - (y - y0) / (y1 - y0)) * h

    out = [f'<svg class="chart" role="img" aria-label="{escape(title or y_label)}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">']
    if title:
        out.append(f'<text x="{left}" y="16" class="title">{escape(title)}</text>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_num(t)}</text>')
    for t in _ticks(x0, x1, 6):
        out.append(f'<text x="{sx(t):.1f}" y="{top + h + 16}" text-anchor="middle">{_num(t)}</text>')
    out.append(f'<line x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" class="axis"/>')
    out.append(f'<text x="{left + w / 2}" y="{height - 6}" text-anchor="middle" class="label">{escape(x_label)}</text>')
    out.append(f'<text x="12" y="{top + h / 2}" text-anchor="middle" class="label" '
               f'transform="rotate(-90 12 {top + h / 2})">{escape(y_label)}</text>')
    for i, (label, s) in enumerate(series):
        good = [(x, y) for x, y in s if y is not None and math.isfinite(y)]
        if not good:
            continue
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{path}">'
                   f'<title>{escape(label)}</title></polyline>')
        if len(good) <= 30:  # a sparse series (held-out loss every few hundred steps) shows its points
            out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in good)
    if len(series) > 1:
        for i, (label, _) in enumerate(series):
            y = top + 4 + i * 15
            out.append(f'<rect x="{left + w - 230}" y="{y}" width="10" height="10" fill="{COLORS[i % len(COLORS)]}"/>'
                       f'<text x="{left + w - 215}" y="{y + 9}" class="legend">{escape(label[:40])}</text>')
    out.append("</svg>")
    return "".join(out)


def interval_chart(rows: list[tuple[str, float | None, float | None, float | None]], unit: str = "pp",
                   width: int = 680, title: str = "") -> str:
    """A dot per (label, change, low, high) with its interval as a bar, around a zero line."""
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        return ""
    label_w, right, row_h = 230, 70, 26
    top = 26 if title else 8
    height = top + row_h * len(rows) + 24
    vals = [v for _, d, lo, hi in rows for v in (d, lo, hi) if v is not None] + [0.0]
    lo_all, hi_all = min(vals), max(vals)
    span = max(hi_all - lo_all, 1e-9)
    lo_all, hi_all = lo_all - span * 0.08, hi_all + span * 0.08
    w = width - label_w - right

    def sx(v):
        return label_w + (v - lo_all) / (hi_all - lo_all) * w

    out = [f'<svg class="chart" role="img" aria-label="{escape(title or "changes")}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">']
    if title:
        out.append(f'<text x="8" y="16" class="title">{escape(title)}</text>')
    out.append(f'<line x1="{sx(0):.1f}" x2="{sx(0):.1f}" y1="{top}" y2="{top + row_h * len(rows)}" class="zero"/>')
    for t in _ticks(lo_all, hi_all, 6):
        out.append(f'<text x="{sx(t):.1f}" y="{top + row_h * len(rows) + 16}" text-anchor="middle">{_num(t)}</text>')
    for i, (label, d, lo, hi) in enumerate(rows):
        y = top + i * row_h + row_h / 2
        color = "#059669" if d >= 0 else "#dc2626"
        out.append(f'<text x="{label_w - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(label[:34])}</text>')
        if lo is not None and hi is not None:
            out.append(f'<line x1="{sx(lo):.1f}" x2="{sx(hi):.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" '
                       f'stroke-width="3" stroke-opacity="0.45"/>')
        text = f"{d:+.1f} {unit}" if unit else f"{d:+.4g}"
        out.append(f'<circle cx="{sx(d):.1f}" cy="{y:.1f}" r="4.5" fill="{color}"><title>{escape(label)}: {text}'
                   + (f" [{lo:+.1f}, {hi:+.1f}]" if lo is not None and hi is not None else "") + "</title></circle>")
        out.append(f'<text x="{label_w + w + 6}" y="{y + 4:.1f}" class="value">{text}</text>')
    out.append("</svg>")
    return "".join(out)


def skill_bars(skills: list[tuple[str, float | None, float | None]], width: int = 680, title: str = "",
               names: tuple[str, str] = ("baseline", "candidate")) -> str:
    """Two bars per skill (baseline grey, candidate blue) on a 0-100 % scale."""
    if not skills:
        return ""
    label_w, right, bar_h, gap = 130, 60, 9, 8
    top = 40 if title else 22
    height = top + len(skills) * (2 * bar_h + gap) + 8
    w = width - label_w - right
    out = [f'<svg class="chart" role="img" aria-label="{escape(title or "skills")}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">']
    if title:
        out.append(f'<text x="8" y="16" class="title">{escape(title)}</text>')
    ly = top - 14
    out.append(f'<rect x="{label_w}" y="{ly}" width="10" height="9" fill="{BASELINE}"/>'
               f'<text x="{label_w + 14}" y="{ly + 8}" class="legend">{escape(names[0])}</text>'
               f'<rect x="{label_w + 100}" y="{ly}" width="10" height="9" fill="{COLORS[0]}"/>'
               f'<text x="{label_w + 114}" y="{ly + 8}" class="legend">{escape(names[1])}</text>')
    for i, (skill, b, c) in enumerate(skills):
        y = top + i * (2 * bar_h + gap)
        out.append(f'<text x="{label_w - 8}" y="{y + bar_h + 3}" text-anchor="end">{escape(str(skill)[:18])}</text>')
        for j, (v, color) in enumerate(((b, BASELINE), (c, COLORS[0]))):
            if v is None:
                continue
            out.append(f'<rect x="{label_w}" y="{y + j * bar_h}" width="{max(v, 0) * w:.1f}" height="{bar_h - 1}" '
                       f'fill="{color}"><title>{escape(str(skill))} {names[j]}: {v * 100:.1f}%</title></rect>')
        if c is not None:
            out.append(f'<text x="{label_w + w + 6}" y="{y + bar_h + 3}" class="value">{c * 100:.0f}%</text>')
    out.append("</svg>")
    return "".join(out)
