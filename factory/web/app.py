"""The pages of the run browser: runs, run, compare, samples, SQL, and a run's files.

Every handler is a plain function (Starlette runs it in a worker thread) that
opens the index read-only, asks what the page needs and closes it again. Run
names and file paths from the URL are checked against the index and the run
directory; anything else is a 404.
"""

from __future__ import annotations

import csv
import io
import json
import math
import mimetypes
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from factory.web import charts
from factory.web.cookbook import examples
from factory.web.data import IndexUnavailable, QueryError, Reader

PAGE_ROWS = 500
SQL_ROWS = 1000
SAMPLE_ROWS = 200
FLIP_ROWS = 100
DECISIONS = ("ship", "rework", "reject", "blocked")
RUN_SORTS = {"created": "created", "recipe": "recipe", "decision": "decision", "primary": "primary_candidate",
             "breadth": "breadth_delta_pp", "lr": "lr", "steps": "steps", "run": "run_id"}


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _pct(v: Any) -> str:
    return "" if v is None else f"{v * 100:.1f}%"


def _pp(v: Any) -> str:
    return "" if v is None else f"{v:+.1f} pp"


def _env() -> Environment:
    env = Environment(loader=PackageLoader("factory.web", "templates"), autoescape=select_autoescape(["html"]))
    env.filters.update(fmt=_fmt, pct=_pct, pp=_pp)
    return env


def _is_rate(*vals: Any) -> bool:
    return all(v is None or 0.0 <= v <= 1.0 for v in vals)


class Pages:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.env = _env()

    # --- plumbing

    def render(self, name: str, status: int = 200, **ctx) -> HTMLResponse:
        ctx.setdefault("index_path", str(self.runs_dir / "index.duckdb"))
        ctx.setdefault("pending", (self.runs_dir / ".index-pending").exists())
        return HTMLResponse(self.env.get_template(name).render(**ctx), status_code=status)

    def unavailable(self, e: IndexUnavailable) -> HTMLResponse:
        return self.render("unavailable.html", status=503, title="index unavailable", message=str(e), hint=e.hint)

    def reader(self) -> Reader:
        return Reader(self.runs_dir)

    # --- runs

    def runs(self, request: Request) -> Response:
        p = request.query_params
        where, params = [], []
        if p.get("recipe"):
            where.append("recipe = ?")
            params.append(p["recipe"])
        if p.get("decision"):
            where.append("decision = ?")
            params.append(p["decision"])
        if p.get("q"):
            where.append("(run_id ILIKE ? OR reason ILIKE ?)")
            params += [f"%{p['q']}%"] * 2
        for field, col, op in (("min_primary", "primary_candidate", ">="), ("min_breadth", "breadth_delta_pp", ">=")):
            if p.get(field):
                try:
                    params.append(float(p[field]))
                except ValueError:
                    return self.render("error.html", 400, title="bad filter",
                                       message=f"{field}: {p[field]!r} is not a number")
                where.append(f"{col} {op} ?")
        for field, op in (("since", ">="), ("until", "<=")):
            if p.get(field):
                where.append(f"created::DATE {op} TRY_CAST(? AS DATE)")
                params.append(p[field])
        sort = p.get("sort", "created")
        if sort not in RUN_SORTS:
            sort = "created"
        desc = p.get("dir", "desc" if sort in ("created", "primary", "breadth") else "asc") == "desc"
        limit = min(max(int(p["limit"]), 1), 5000) if p.get("limit", "").isdigit() else PAGE_ROWS
        offset = int(p["offset"]) if p.get("offset", "").isdigit() else 0
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        try:
            with self.reader() as r:
                total = r.scalar(f"SELECT count(*) FROM run_summary{cond}", params)
                rows = r.rows(
                    "SELECT run_id, recipe, created, method, lr, steps, replay, primary_suite, primary_baseline, "
                    f"primary_candidate, breadth_delta_pp, decision, reason FROM run_summary{cond} "
                    f"ORDER BY {RUN_SORTS[sort]} {'DESC' if desc else 'ASC'} NULLS LAST, run_id "
                    "LIMIT ? OFFSET ?", params + [limit, offset])
                recipes = [x[0] for x in r.table("SELECT DISTINCT recipe FROM runs WHERE recipe IS NOT NULL "
                                                 "ORDER BY recipe")[1]]
                counts = dict(r.table(f"SELECT decision, count(*) FROM run_summary{cond} GROUP BY decision",
                                      params)[1])
        except IndexUnavailable as e:
            return self.unavailable(e)
        args = {k: v for k, v in p.items() if k not in ("sort", "dir", "offset")}
        return self.render("runs.html", title="runs", rows=rows, total=total, recipes=recipes,
                           decisions=DECISIONS, counts=counts, f=p, sort=sort, desc=desc, args=args,
                           offset=offset, limit=limit)

    # --- one run

    def _run_row(self, r: Reader, run_id: str) -> dict[str, Any]:
        rows = r.rows("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if not rows:
            raise HTTPException(404, f"no run {run_id!r} in the index")
        return rows[0]

    def _paired(self, r: Reader, a: str, role_a: str, b: str, role_b: str) -> dict[str, dict[str, Any]]:
        """suite -> rate of a, rate of b, b - a in points and its 95% interval (normal, over the paired samples)."""
        rows = r.rows(
            "SELECT x.suite, count(*) AS n, avg(x.correct::INT) AS a, avg(y.correct::INT) AS b, "
            "avg(y.correct::INT - x.correct::INT) AS d, stddev_samp(y.correct::INT - x.correct::INT) AS sd "
            "FROM eval_samples x JOIN eval_samples y ON y.suite = x.suite AND y.sample_id = x.sample_id "
            "AND y.run_id = ? AND y.role = ? "
            "WHERE x.run_id = ? AND x.role = ? AND x.correct IS NOT NULL AND y.correct IS NOT NULL "
            # the suites the gate pairs on correctness: the reference run's primary and regression suites
            "AND (x.suite IN (SELECT primary_suite FROM runs WHERE run_id = ?) "
            "OR list_contains((SELECT regression_suites FROM runs WHERE run_id = ?), x.suite)) "
            "GROUP BY x.suite ORDER BY x.suite", [b, role_b, a, role_a, a, a])
        out = {}
        for row in rows:
            half = 1.96 * (row["sd"] or 0.0) / math.sqrt(row["n"]) if row["n"] > 1 else None
            d = row["d"] * 100
            out[row["suite"]] = {"n": row["n"], "a": row["a"], "b": row["b"], "d": d,
                                 "lo": None if half is None else d - half * 100,
                                 "hi": None if half is None else d + half * 100}
        return out

    def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            with self.reader() as r:
                run = self._run_row(r, run_id)
                criteria = r.rows("SELECT * FROM criteria WHERE run_id = ? ORDER BY passed, name", [run_id])
                evals = self._merge_status(r, run_id)
                skills = r.rows("SELECT suite, skill, max(value) FILTER (WHERE role = 'baseline') AS baseline, "
                                "max(value) FILTER (WHERE role = 'candidate') AS candidate, max(n) AS n "
                                "FROM eval_skills WHERE run_id = ? GROUP BY ALL ORDER BY suite, skill", [run_id])
                log = r.rows("SELECT step, loss, heldout_loss FROM train_log WHERE run_id = ? ORDER BY step", [run_id])
                stages = r.rows("SELECT stage, kind, stage_key, status, seconds, host, error, started "
                                "FROM stages WHERE run_id = ? ORDER BY started, stage", [run_id])
                worst = r.rows(
                    "SELECT c.suite, c.sample_id, c.skill, c.expected, c.output, b.correct AS baseline_correct "
                    "FROM eval_samples c LEFT JOIN eval_samples b ON b.run_id = c.run_id AND b.role = 'baseline' "
                    "AND b.suite = c.suite AND b.sample_id = c.sample_id "
                    "WHERE c.run_id = ? AND c.role = 'candidate' AND NOT c.correct "
                    "ORDER BY b.correct DESC NULLS LAST, c.suite, c.sample_id LIMIT 25", [run_id])
                paired = self._paired(r, run_id, "baseline", run_id, "candidate")
        except IndexUnavailable as e:
            return self.unavailable(e)
        by_suite: dict[str, list] = {}
        for s in skills:
            by_suite.setdefault(s["suite"], []).append((s["skill"], s["baseline"], s["candidate"]))
        skill_charts = [(suite, charts.skill_bars(v, title=f"{suite}: per skill")) for suite, v in by_suite.items()]
        curve = charts.line_chart(
            [("train loss", [(x["step"], x["loss"]) for x in log]),
             ("held-out loss", [(x["step"], x["heldout_loss"]) for x in log if x["heldout_loss"] is not None])],
            title="training loss")
        delta_chart = charts.interval_chart(
            [(s, v["d"], v["lo"], v["hi"]) for s, v in paired.items()], title="candidate vs baseline, points")
        risk = [dict(e, metrics=_metrics(e["scores"])) for e in evals if "risk" in e["suite"] or "probe" in e["suite"]]
        return self.render("run.html", title=run_id, run=run, criteria=criteria, evals=evals, risk=risk,
                           skill_charts=skill_charts, curve=curve, delta_chart=delta_chart, paired=paired,
                           stages=stages, worst=worst, files=self._files(Path(run["path"] or "")),
                           is_rate=_is_rate, params=json.loads(run["train_params"]) if run["train_params"] else {})

    def _merge_status(self, r: Reader, run_id: str) -> list[dict[str, Any]]:
        return r.rows(
            "SELECT suite, any_value(metric) AS metric, "
            "max(score) FILTER (WHERE role = 'baseline') AS baseline, "
            "max(score) FILTER (WHERE role = 'candidate') AS candidate, "
            "max(ci_low) FILTER (WHERE role = 'candidate') AS ci_low, "
            "max(ci_high) FILTER (WHERE role = 'candidate') AS ci_high, max(n) AS n, "
            "string_agg(CASE WHEN status <> 'ok' THEN role || ': ' || status || coalesce(' (' || error || ')', '') END,"
            " '; ') AS problems, any_value(scores) FILTER (WHERE role = 'candidate') AS scores "
            "FROM evals WHERE run_id = ? GROUP BY suite ORDER BY suite", [run_id])

    def _files(self, run_dir: Path) -> list[tuple[str, int]]:
        if not run_dir.is_dir():
            return []
        out = []
        for p in sorted(run_dir.rglob("*")):
            if p.is_file() and not p.is_symlink():
                out.append((p.relative_to(run_dir).as_posix(), p.stat().st_size))
            if len(out) >= 300:
                break
        return out

    def file(self, request: Request) -> Response:
        run_id, rel = request.path_params["run_id"], request.path_params["path"]
        if "/" in run_id or ".." in run_id or ".." in Path(rel).parts or rel.startswith("/"):
            raise HTTPException(404)
        try:
            with self.reader() as r:
                path = r.scalar("SELECT path FROM runs WHERE run_id = ?", [run_id])
        except IndexUnavailable as e:
            return self.unavailable(e)
        if not path:
            raise HTTPException(404)
        run_dir = Path(path).resolve()
        target = (run_dir / rel).resolve()
        if not target.is_relative_to(run_dir) or not target.is_file():
            raise HTTPException(404)
        kind, _ = mimetypes.guess_type(target.name)
        text = target.suffix in (".json", ".jsonl", ".log", ".md", ".txt", ".yaml", ".yml") or kind == "text/plain"
        if target.suffix == ".html":
            return FileResponse(target, media_type="text/html")
        return FileResponse(target, media_type="text/plain; charset=utf-8" if text else "application/octet-stream")

    # --- compare

    def compare(self, request: Request) -> Response:
        from factory.compare import config_differences, show, stage_key_differences
        from factory.evidence import read_run

        ids = [x for x in request.query_params.getlist("run") if x]
        if len(ids) < 2:
            try:
                with self.reader() as r:
                    recent = r.rows("SELECT run_id, recipe, decision FROM runs ORDER BY created DESC LIMIT 200")
            except IndexUnavailable as e:
                return self.unavailable(e)
            return self.render("compare_pick.html", title="compare", recent=recent, chosen=ids)
        suite_f, dir_f, text_f = (request.query_params.get(k, "") for k in ("suite", "direction", "q"))
        try:
            with self.reader() as r:
                runs = [self._run_row(r, i) for i in ids]
                criteria = r.rows("SELECT * FROM criteria WHERE run_id IN (SELECT unnest(?))", [ids])
                logs = {i: r.rows("SELECT step, loss FROM train_log WHERE run_id = ? ORDER BY step", [i]) for i in ids}
                scores = r.rows("SELECT run_id, suite, role, score, ci_low, ci_high, n FROM evals "
                                "WHERE run_id IN (SELECT unnest(?)) ORDER BY suite", [ids])
                paired = {i: self._paired(r, ids[0], "candidate", i, "candidate") for i in ids[1:]}
                flips, flip_counts = [], {}
                for other in ids[1:]:
                    cond, params = "", [other, ids[0]]
                    if suite_f:
                        cond += " AND a.suite = ?"
                        params.append(suite_f)
                    if dir_f == "fixed":
                        cond += " AND b.correct AND NOT a.correct"
                    elif dir_f == "broke":
                        cond += " AND a.correct AND NOT b.correct"
                    if text_f:
                        cond += " AND (a.sample_id ILIKE ? OR a.expected ILIKE ? OR a.output ILIKE ? OR b.output ILIKE ?)"
                        params += [f"%{text_f}%"] * 4
                    base = ("FROM eval_samples a JOIN eval_samples b ON b.suite = a.suite AND b.sample_id = a.sample_id "
                            "AND b.role = 'candidate' AND b.run_id = ? "
                            "WHERE a.run_id = ? AND a.role = 'candidate' AND a.correct <> b.correct" + cond)
                    flip_counts[other] = r.table(f"SELECT a.suite, count(*) {base} GROUP BY a.suite ORDER BY a.suite",
                                                 params)[1]
                    flips += [dict(x, other=other) for x in r.rows(
                        "SELECT a.suite, a.sample_id, a.skill, a.expected, a.output AS output_a, b.output AS output_b, "
                        f"a.correct AS a_correct, b.correct AS b_correct {base} "
                        f"ORDER BY a.suite, a.sample_id LIMIT {FLIP_ROWS}", params)]
        except IndexUnavailable as e:
            return self.unavailable(e)
        evidence = [read_run(Path(x["path"] or ""), samples=False) for x in runs]
        configs = [ev.config_values() for ev in evidence]
        key_diff, shared = stage_key_differences([ev.stage_keys for ev in evidence])
        crit: dict[tuple[str, str], dict[str, dict]] = {}
        for c in criteria:
            crit.setdefault((c["name"], c["metric"]), {})[c["run_id"]] = c
        suites: dict[str, dict[str, dict[str, Any]]] = {}
        for s in scores:
            suites.setdefault(s["suite"], {}).setdefault(s["run_id"], {})[s["role"]] = s
        curves = charts.line_chart([(i, [(x["step"], x["loss"]) for x in logs[i]]) for i in ids],
                                   title="training loss, overlaid")
        delta_rows = [(f"{s} ({i[-8:]})", v["d"], v["lo"], v["hi"]) for i in ids[1:] for s, v in paired[i].items()]
        delta_chart = charts.interval_chart(delta_rows, title=f"candidate scores vs {ids[0]}, points")
        suite_names = sorted({s for i in ids[1:] for s, _ in flip_counts[i]} | set(paired.get(ids[1], {})))
        return self.render("compare.html", title="compare", ids=ids, runs=runs, config=config_differences(configs),
                           key_diff=key_diff, shared=shared, crit=crit, suites=suites, paired=paired, curves=curves,
                           delta_chart=delta_chart, flips=flips, flip_counts=flip_counts, suite_f=suite_f,
                           dir_f=dir_f, text_f=text_f, suite_names=suite_names, flip_rows=FLIP_ROWS, show=show)

    # --- samples

    def samples(self, request: Request) -> Response:
        p = request.query_params
        where, params = [], []
        for field in ("suite", "skill", "role", "run_id"):
            if p.get(field):
                where.append(f"s.{field} = ?")
                params.append(p[field])
        if p.get("recipe"):
            where.append("r.recipe = ?")
            params.append(p["recipe"])
        if p.get("verdict") in ("correct", "wrong"):
            where.append("s.correct" if p["verdict"] == "correct" else "NOT s.correct")
        if p.get("q"):
            where.append("(s.sample_id ILIKE ? OR s.expected ILIKE ? OR s.output ILIKE ?)")
            params += [f"%{p['q']}%"] * 3
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        rows, total = [], None
        try:
            with self.reader() as r:
                suites = [x[0] for x in r.table("SELECT DISTINCT suite FROM evals ORDER BY suite")[1]]
                recipes = [x[0] for x in r.table("SELECT DISTINCT recipe FROM runs ORDER BY recipe")[1]]
                if where:
                    src = "FROM eval_samples s JOIN runs r USING (run_id)"
                    total = r.scalar(f"SELECT count(*) {src}{cond}", params)
                    rows = r.rows(f"SELECT s.run_id, r.recipe, s.suite, s.role, s.sample_id, s.skill, s.expected, "
                                  f"s.output, s.correct {src}{cond} ORDER BY r.created DESC, s.run_id, s.suite, "
                                  f"s.sample_id, s.role LIMIT {SAMPLE_ROWS}", params)
        except IndexUnavailable as e:
            return self.unavailable(e)
        return self.render("samples.html", title="samples", rows=rows, total=total, f=p, suites=suites,
                           recipes=recipes, limit=SAMPLE_ROWS)

    # --- SQL

    def sql(self, request: Request) -> Response:
        q = request.query_params.get("q", "").strip()
        cols, rows, error, truncated = [], [], None, False
        if q:
            try:
                with self.reader() as r:
                    cols, rows, truncated = r.user_query(q, SQL_ROWS)
            except IndexUnavailable as e:
                return self.unavailable(e)
            except QueryError as e:
                error = str(e)
        return self.render("sql.html", title="SQL", q=q, cols=cols, rows=rows, error=error, truncated=truncated,
                           limit=SQL_ROWS, examples=examples(), status=400 if error else 200)

    def sql_csv(self, request: Request) -> Response:
        q = request.query_params.get("q", "").strip()
        try:
            with self.reader() as r:
                cols, rows, _ = r.user_query(q, None)
        except IndexUnavailable as e:
            return Response(f"{e}: {e.hint}\n", status_code=503, media_type="text/plain")
        except QueryError as e:
            return Response(f"error: {e}\n", status_code=400, media_type="text/plain")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        w.writerows(["" if v is None else v for v in row] for row in rows)
        return Response(buf.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="query.csv"'})


def _metrics(scores: str | None) -> list[tuple[str, Any, Any, Any]]:
    """(metric, value, ci_low, ci_high) from an evals row's scores JSON."""
    try:
        data = json.loads(scores) if scores else {}
    except ValueError:
        return []
    return [(k, v.get("value"), v.get("ci_low"), v.get("ci_high")) for k, v in sorted(data.items())
            if isinstance(v, dict)]


def create_app(root: Path) -> Starlette:
    """The ASGI app over `<root>/runs/index.duckdb`."""
    pages = Pages(root)

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return pages.render("error.html", status=exc.status_code, title=str(exc.status_code),
                            message=exc.detail if exc.status_code == 404 else str(exc.detail))

    routes = [
        Route("/", pages.runs, name="runs"),
        Route("/runs/{run_id}", pages.run, name="run"),
        Route("/runs/{run_id}/files/{path:path}", pages.file, name="file"),
        Route("/compare", pages.compare, name="compare"),
        Route("/samples", pages.samples, name="samples"),
        Route("/sql", pages.sql, name="sql"),
        Route("/sql.csv", pages.sql_csv, name="sql_csv"),
        Mount("/static", app=StaticFiles(packages=[("factory.web", "static")]), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})
