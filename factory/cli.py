"""The `factory` command: everything that is not a build (builds go through `doit recipe:<name>`).

Each subcommand imports what it needs when it runs, so `factory --help`,
`factory sql` and `factory why` never pay for torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from factory.errors import FactoryError


def _root() -> Path:
    from factory.project import find_root

    return find_root()


def cmd_plugins(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from factory import plugins

    regs = plugins.registries()
    table = Table("plugin", "version", "from", "registered")
    for p in regs.plugins:
        what = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(p.registered.items())) or "-"
        table.add_row(p.name, p.version, p.source, f"[red]failed: {p.error}[/red]" if p.error else what)
    Console().print(table)
    return 1 if regs.errors else 0


def cmd_why(args) -> int:
    from factory.why import explain

    target = args.target.split(":", 1)[1] if args.target.startswith("recipe:") else args.target
    for line in explain(_root(), target):
        print(line)
    return 0


def cmd_gc(args) -> int:
    from factory.engine import Session

    s = Session(_root())
    keep: set[str] = set()
    runs = s.root / "runs"
    if runs.is_dir():
        import json

        for m in runs.glob("*/run_manifest.json"):
            try:
                keep.update(json.loads(m.read_text()).get("files", {}).values())
            except (OSError, ValueError):
                continue
    removed = s.store.gc(keep_digests=keep, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb}: {removed['tmp']} temporary build dirs, {removed['objects']} objects "
          f"({removed['bytes'] / 1e6:.1f} MB), {removed['trees']} stale trees")
    return 0


def cmd_check(args) -> int:
    from factory.engine import Session
    from factory.recipe import recipe_files

    s = Session(_root())
    paths = [Path(p) for p in args.recipes] or recipe_files(s.root)
    bad = 0
    for p in paths:
        try:
            s.plans.pop(p.stem, None)
            s.recipes.pop(p.stem, None)
            if p.parent.resolve() != (s.root / "recipes").resolve():
                from factory.recipe import load_recipe

                load_recipe(p, s.root)
            else:
                s.plan(p.stem)
            print(f"{p}: ok")
        except FactoryError as e:
            print(f"factory: error: {e}", file=sys.stderr)
            bad += 1
    return 1 if bad else 0


def cmd_schemas(args) -> int:
    from factory.records import export_schemas

    for p in export_schemas(Path(args.dest)):
        print(p)
    return 0


def cmd_run(args) -> int:
    from factory.runs import resolve_run

    run_dir = resolve_run(_root(), args.run)
    if args.action == "render":
        from factory.validate import cli_render

        return cli_render(str(run_dir))
    from factory.validate import cli_validate

    return cli_validate(str(run_dir))


def cmd_runs(args) -> int:
    from factory.index import cli_runs

    return cli_runs(_root(), limit=args.limit)


def cmd_sql(args) -> int:
    from factory.index import cli_sql

    return cli_sql(_root(), args.query, fmt=args.format)


def cmd_compare(args) -> int:
    from factory.compare import cli_compare

    return cli_compare(_root(), args.runs)


def cmd_package(args) -> int:
    from factory.specialists import cli_package

    if not args.run and not args.best:
        raise FactoryError("package: name a run, or --best <recipe>")
    return cli_package(_root(), args.run, args.best, args.force)


def cmd_verify(args) -> int:
    from factory.specialists import cli_verify

    return cli_verify(args.path)


def cmd_eval(args) -> int:
    from factory.evalcmd import cli_eval

    return cli_eval(_root(), args)


def cmd_serve(args) -> int:
    from factory.web import serve

    return serve(_root(), host=args.host, port=args.port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="factory",
        description="Build, judge, query and package specialist models. Builds run with `doit recipe:<name>`.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("plugins", help="list plugins, their versions and what they registered")
    s.set_defaults(fn=cmd_plugins)
    s = sub.add_parser("why", help="explain which stages of a recipe are stale, and why")
    s.add_argument("target", help="recipe:<name> or <name>")
    s.set_defaults(fn=cmd_why)
    s = sub.add_parser("check", help="validate recipes (all of recipes/ by default)")
    s.add_argument("recipes", nargs="*")
    s.set_defaults(fn=cmd_check)
    cache = sub.add_parser("cache", help="manage the content-addressed store")
    csub = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    s = csub.add_parser("gc", help="remove build litter and objects nothing references")
    s.add_argument("--dry-run", action="store_true")
    s.set_defaults(fn=cmd_gc)
    run = sub.add_parser("run", help="look at one run directory")
    run.add_argument("action", choices=["render", "validate"])
    run.add_argument("run", help="run directory, run id, or a unique part of one")
    run.set_defaults(fn=cmd_run)
    s = sub.add_parser("runs", help="list runs, newest first, with decision and primary score")
    s.add_argument("--limit", type=int, default=20)
    s.set_defaults(fn=cmd_runs)
    s = sub.add_parser("sql", help="query the run index with SQL (no query: interactive shell)")
    s.add_argument("query", nargs="?")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.set_defaults(fn=cmd_sql)
    s = sub.add_parser("compare", help="compare runs side by side: config, stage keys, criteria, flipped samples")
    s.add_argument("runs", nargs="+")
    s.set_defaults(fn=cmd_compare)
    s = sub.add_parser("package", help="package a shipped run as a specialist under specialists/")
    s.add_argument("run", nargs="?")
    s.add_argument("--best", metavar="RECIPE", help="the best shipped run of a recipe, chosen through the index")
    s.add_argument("--force", action="store_true", help="package a run that did not ship (the card says so)")
    s.set_defaults(fn=cmd_package)
    s = sub.add_parser("verify", help="recheck every digest of a packaged specialist")
    s.add_argument("path")
    s.set_defaults(fn=cmd_verify)
    s = sub.add_parser("eval", help="run eval suites on a local model directory (optionally with an adapter)")
    s.add_argument("model", help="a transformers model directory")
    s.add_argument("--adapter", help="a LoRA adapter directory (or a train output holding adapter/)")
    s.add_argument("--suite", action="append", help="a benchmark file, or [NAME=]SUITE[:OPTION=VALUE,...]; repeatable")
    s.add_argument("--rows", help="JSONL rows (prompt, answer) for suites that read held-out rows")
    s.add_argument("--limit", type=int, help="score only the first N rows of each suite")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--max-new-tokens", type=int, default=96)
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.set_defaults(fn=cmd_eval)
    s = sub.add_parser("serve", help="browse runs in a local web app over the index (read-only)")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    s.set_defaults(fn=cmd_serve)
    s = sub.add_parser("schemas", help="export the JSON Schema of every run file")
    s.add_argument("dest", nargs="?", default="docs/schemas")
    s.set_defaults(fn=cmd_schemas)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not getattr(args, "fn", None):
        p.print_help()
        return 0
    try:
        return int(args.fn(args) or 0)
    except FactoryError as e:
        print(f"factory: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
