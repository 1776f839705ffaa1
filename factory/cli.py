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


def cmd_cache(args) -> int:
    from factory.cachecmd import main_args

    return main_args(args)


def cmd_pin(args) -> int:
    from factory.cachecmd import cli_pin

    return cli_pin(_root(), args.run, remove=args.remove)


def cmd_reproduce(args) -> int:
    from factory.reproduce import reproduce
    from factory.runs import resolve_run

    run_dir = resolve_run(_root(), args.run)
    print(f"reproducing {run_dir.name} in a clean store")
    rows = reproduce(_root(), run_dir, keep=args.keep, log=print)
    same = sum(r["verdict"].startswith("identical") for r in rows)
    print(f"{same} of {len(rows)} stages identical")
    return 0 if same == len(rows) else 1


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
        from factory.runcmd import cli_render

        return cli_render(str(run_dir))
    from factory.runcmd import cli_validate

    return cli_validate(str(run_dir))


def cmd_runs(args) -> int:
    from factory.indexcmd import cli_runs

    return cli_runs(_root(), limit=args.limit)


def cmd_sql(args) -> int:
    from factory.indexcmd import cli_sql

    return cli_sql(_root(), args.query, fmt=args.format)


def cmd_index(args) -> int:
    from factory.indexcmd import cli_index

    runs_dir = Path(args.runs_dir) if args.runs_dir else _root() / "runs"
    return cli_index(runs_dir, args.runs, deep=args.deep, rebuild=args.rebuild)


def cmd_compare(args) -> int:
    from factory.comparecmd import cli_compare

    return cli_compare(_root(), args.runs)


def cmd_package(args) -> int:
    from factory.packagecmd import cli_package

    if not args.run and not args.best:
        raise FactoryError("package: name a run, or --best <recipe>")
    return cli_package(_root(), args.run, args.best, args.force, args.sign_key, args.sigstore)


def cmd_verify(args) -> int:
    from factory.packagecmd import cli_verify

    return cli_verify(args.path, args.key)


def cmd_eval(args) -> int:
    from factory.evalcmd import cli_eval

    return cli_eval(_root(), args)


def cmd_import(args) -> int:
    from factory.imports import cli_import

    return cli_import(_root(), args.tool, args.path, model=args.model)


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
    s = csub.add_parser("gc", help="remove build litter and unreferenced objects; evict old stages by last use")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--older-than", metavar="AGE", help="evict stages unused for longer (30d, 12h)")
    s.add_argument("--max-size", metavar="SIZE", help="evict least recently used stages until the store fits (20G)")
    s.set_defaults(fn=cmd_cache)
    s = csub.add_parser("verify", help="re-hash every object; remove damaged ones and the stages that need them")
    s.add_argument("--dry-run", action="store_true", help="report only")
    s.set_defaults(fn=cmd_cache)
    for action, text in (("push", "upload stages to the remote cache"), ("pull", "download stages from it"),
                         ("status", "which stages are local, which remote")):
        s = csub.add_parser(action, help=text + " (a recipe's stages, or all)")
        s.add_argument("recipe", nargs="?")
        s.set_defaults(fn=cmd_cache)
    s = sub.add_parser("reproduce", help="rebuild a run from its directory in a clean store; compare every stage")
    s.add_argument("run")
    s.add_argument("--keep", action="store_true", help="keep the rebuilt project (its path is printed)")
    s.set_defaults(fn=cmd_reproduce)
    s = sub.add_parser("pin", help="keep a run's stage outputs through `factory cache gc`")
    s.add_argument("run")
    s.add_argument("--remove", action="store_true", help="unpin")
    s.set_defaults(fn=cmd_pin)
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
    s = sub.add_parser("index", help="bring the run index up to date now (builds and queries do it themselves)")
    s.add_argument("runs", nargs="*", help="only look at these run directories (and any the index lacks)")
    s.add_argument("--runs-dir", metavar="DIR", help="the runs directory (default: the project's runs/)")
    s.add_argument("--deep", action="store_true", help="check the stat of every file, not only the directory")
    s.add_argument("--rebuild", action="store_true", help="throw the index away and build it again")
    s.set_defaults(fn=cmd_index)
    s = sub.add_parser("compare", help="compare runs side by side: config, stage keys, criteria, flipped samples")
    s.add_argument("runs", nargs="+")
    s.set_defaults(fn=cmd_compare)
    s = sub.add_parser("package", help="package a shipped run as a specialist under specialists/")
    s.add_argument("run", nargs="?")
    s.add_argument("--best", metavar="RECIPE", help="the best shipped run of a recipe, chosen through the index")
    s.add_argument("--force", action="store_true", help="package a run that did not ship (the card says so)")
    s.add_argument("--sign-key", metavar="PEM", help="sign with this EC private key (default: $FACTORY_SIGNING_KEY)")
    s.add_argument("--sigstore", action="store_true", help="sign with sigstore (needs a network and an identity)")
    s.set_defaults(fn=cmd_package)
    s = sub.add_parser("verify", help="check the signature and every file of a packaged specialist")
    s.add_argument("path")
    s.add_argument("--key", metavar="PEM", help="the signer's public key you trust (default: the package's signer.pub)")
    s.set_defaults(fn=cmd_verify)
    s = sub.add_parser("eval", help="run eval suites on a model directory (optionally with an adapter), a run or a specialist")
    s.add_argument("model", help="a transformers model directory, a run (its directory, id or recipe: the newest) "
                                 "or a packaged specialist (specialists/<id>)")
    s.add_argument("--adapter", help="with a model directory: a LoRA adapter directory (or a train output holding adapter/)")
    s.add_argument("--suite", action="append", help="a benchmark file, or [NAME=]SUITE[:OPTION=VALUE,...]; repeatable")
    s.add_argument("--rows", help="JSONL rows (prompt, answer) for suites that read held-out rows")
    s.add_argument("--limit", type=int, help="score only the first N rows of each suite")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--max-new-tokens", type=int, default=96)
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.set_defaults(fn=cmd_eval)
    s = sub.add_parser("import", help="bring per-sample results of lm-eval or Inspect into the index as a run")
    s.add_argument("tool", choices=["lm-eval", "inspect"])
    s.add_argument("path", help="lm-eval: its --output_path directory (or a results_*.json); inspect: a .eval or .json log")
    s.add_argument("--model", help="the local model directory the results are of, when the tool's own record names "
                   "another path (its digest joins the run with factory's runs of the same model)")
    s.set_defaults(fn=cmd_import)
    s = sub.add_parser("serve", help="browse runs in a local web app over the index (read-only)")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    s.set_defaults(fn=cmd_serve)
    s = sub.add_parser("schemas", help="export the JSON Schema of every run file")
    s.add_argument("dest", nargs="?", default="docs/schemas")
    s.set_defaults(fn=cmd_schemas)
    return p


def install_interrupt_hook(prog: str) -> None:
    """Make a Ctrl-C that reaches the top of `prog` (doit, which we do not wrap) end in one line and exit 130.

    The interrupt still unwinds every `finally` on its way up (build directories removed, store
    locks released); only the traceback at the top is replaced.
    """
    previous = sys.excepthook

    def hook(kind, value, tb):
        if not issubclass(kind, KeyboardInterrupt):
            return previous(kind, value, tb)
        import atexit
        import os

        print(f"{prog}: interrupted", file=sys.stderr)
        atexit._run_exitfuncs()  # what a normal exit would still do (doit's and factory's own savers)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)

    sys.excepthook = hook


def _quiet_stdout() -> None:
    """After a closed pipe (`factory why ... | head`): send what is left to /dev/null, so Python's own
    flush at exit does not print a BrokenPipeError."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Every failure ends in one line on stderr and a non-zero exit; FACTORY_DEBUG=1 adds the traceback
    of an unexpected error."""
    import os

    p = parser()
    args = p.parse_args(argv)
    if not getattr(args, "fn", None):
        p.print_help()
        return 0
    try:
        rc = int(args.fn(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return rc
    except FactoryError as e:
        print(f"factory: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("factory: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # as a process killed by SIGPIPE would
    except RecursionError:
        print(f"factory {args.command}: error: input nested too deeply", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"factory {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line, not a traceback; FACTORY_DEBUG shows it
        if os.environ.get("FACTORY_DEBUG"):
            raise
        print(f"factory {args.command}: error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(FACTORY_DEBUG=1 shows where)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
