"""The report stage: decision first, every criterion, per-skill breadth, training, worst samples; HTML self-contained."""

from __future__ import annotations

import re
from types import SimpleNamespace

from factory.report import build_report
from test_validate import make_run


def _build(tmp_path, **kw):
    run = make_run(tmp_path, **kw)
    out = tmp_path / "out"
    out.mkdir()
    ctx = SimpleNamespace(
        config={"recipe": "pace-planner", "goal": "plan runs", "owner": "team"},
        inputs={k: run for k in ("decide", "eval-baseline", "eval-candidate", "train", "dataset")},
        out=out, log=lambda m: None,
    )
    build_report(ctx)
    return (out / "report.md").read_text(), (out / "report.html").read_text()


def test_markdown_report_content(tmp_path):
    md, _ = _build(tmp_path, cand_right=82, breadth_right=150)
    lines = md.splitlines()
    assert lines[0] == "# pace-planner: REWORK"
    assert lines[2].startswith("**Decision: rework.**")
    assert md.index("Decision") < md.index("## Criteria") < md.index("## Training")
    crit = [l for l in lines if l.startswith("| primary_min")][0]
    assert "5.0%" in crit and "82.0%" in crit and "≥ 95.0%" in crit and "+77.0 pp [" in crit and "**no**" in crit
    assert [l for l in lines if l.startswith("| breadth_drop_max_pp:breadth")][0].count("-15.0 pp") == 1
    assert "## Breadth by skill" in md and re.search(r"^\| copy \|", md, re.M)
    assert "train.replay" in md
    assert "| steps | 300 |" in md and "tokens/s" in md
    # Worst failing samples: expected vs output, for the primary suite.
    assert "## Worst failing samples" in md and "### json-action" in md
    assert "`oops`" in md and '`{"action":"list","args":{}}`' in md


def test_html_report_is_self_contained_with_plots(tmp_path):
    _, page = _build(tmp_path)
    assert page.startswith("<!doctype html>")
    assert 'class="badge ship"' in page
    assert page.count("<svg") == 3  # loss curve, scores with intervals, per-skill breadth deltas
    assert "<polyline" in page and "<rect" in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    assert "oops" in page  # worst failing samples shown with expected vs output


def test_report_escapes_model_output(tmp_path):
    run = make_run(tmp_path)
    p = run / "samples/candidate/json-action.jsonl"
    from factory.evidence import gather
    from factory.report import render_html

    ev = gather({k: run for k in ("decide", "eval-baseline", "eval-candidate", "train", "dataset")})
    ev.samples["candidate"]["json-action"][-1]["output"] = "<script>alert(1)</script>"
    page = render_html(ev)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert p.exists()


def test_each_table_is_built_once_and_rendered_to_both_formats(tmp_path):
    from factory.evidence import read_run
    from factory.report import (
        criteria_table, html_table, markdown_table, report_run, scores_table, skill_deltas, skills_table,
        training_table, worst_samples, worst_table,
    )

    run = make_run(tmp_path, cand_right=82, breadth_right=150)
    ev = read_run(run)
    md, page = report_run(run)
    tables = [criteria_table(ev), scores_table(ev), training_table(ev), skills_table(skill_deltas(ev, "breadth")),
              worst_table(worst_samples(ev, "json-action"))]
    assert all(t.rows for t in tables)
    for t in tables:
        assert "\n".join(markdown_table(t)) in md
        assert html_table(t) in page


def test_cells_render_the_same_content_in_markdown_and_html():
    from factory.report import Cell, Table, html_table, markdown_table

    long = "x" * 100 + " <b>|"
    t = Table(["a", "b"], [[Cell(long, code=True, clip=80), Cell("no", alarm=True)], [Cell("p|q"), Cell("two\nlines")]])
    md = markdown_table(t)
    assert md[:2] == ["| a | b |", "|---|---|"]
    assert md[2] == f"| `{'x' * 79}…` | **no** |"
    assert md[3] == "| p\\|q | two lines |"
    page = html_table(t)
    assert f"<td><code>{'x' * 100} &lt;b&gt;|</code></td>" in page  # whole, escaped
    assert '<td><span class="no">no</span></td>' in page and "<td>p|q</td>" in page


def test_lower_is_better_table_shows_a_loss_as_a_number_and_a_rate_as_a_percentage():
    from factory.records import Score
    from factory.report import markdown_table, rates_table

    def suite(loss, rate):
        return SimpleNamespace(status="ok", scores={
            "loss": Score(value=loss, ci_low=loss - 0.1, ci_high=loss + 0.1, n=10, higher_is_better=False, unit="nats"),
            "spill_rate": Score(value=rate, ci_low=0.0, ci_high=0.3, n=10, higher_is_better=False)})
    runs = {"baseline": suite(4.303, 0.2), "candidate": suite(3.25, 0.1)}
    ev = SimpleNamespace(suite=lambda which, name: runs[which])
    md = "\n".join(markdown_table(rates_table(ev, "perplexity")))
    loss = [l for l in md.splitlines() if l.startswith("| loss")][0]
    assert "4.303" in loss and "3.25" in loss and "[3.15, 3.35]" in loss and "%" not in loss
    assert "| spill_rate | 20.0% | 10.0% | [0.0%, 30.0%] | lower |" in md
