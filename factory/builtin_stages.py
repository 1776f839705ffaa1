"""The engine's own stage kinds, registered through the same hook a plugin uses.

`base` and `train` hand over to the recipe's model family; `eval`, `decide`,
`report` and `package` are the engine's evaluation, gate, report and
packaging. The `dataset` kind comes from a first-party plugin.
"""

import dataclasses

from factory.hookspecs import hookimpl
from factory.stages import BuildContext, StageKind

__version__ = "1"


def build_base(ctx: BuildContext) -> None:
    # The key covers family, versions and model id; the family sees the base config it resolved.
    ctx.extra["family"].build_base(dataclasses.replace(ctx, config=ctx.config["base"]))


def build_train(ctx: BuildContext) -> None:
    ctx.extra["family"].trainer(ctx.config["method"])(ctx)


def build_eval(ctx: BuildContext) -> None:
    from factory.evaluate import build_eval as run

    run(ctx)


def build_decide(ctx: BuildContext) -> None:
    # A check upstream that failed leaves a stop.json in an input; the gate then writes that check's
    # decision, with its own numbers, its policy digest and the guard that stopped the build.
    from factory.gate import build_decision

    build_decision(ctx)


def build_power(ctx: BuildContext) -> None:
    from factory.gate import build_power as run

    run(ctx)


def build_promote(ctx: BuildContext) -> None:
    from factory.promote import build_promote as run

    run(ctx)


def build_report(ctx: BuildContext) -> None:
    from factory.report import build_report as run

    run(ctx)


def build_package(ctx: BuildContext) -> None:
    from factory.specialists import build_package as run

    run(ctx)


# Each kind's key covers its own wrapper and what that wrapper imports (factory.stages.code_closure),
# so editing one kind's line does not rebuild the others.
@hookimpl
def register_stage_kinds(register):
    register(StageKind("base", build_base,
                       description="build or load the base model (the family decides)"))
    register(StageKind("train", build_train,
                       description="train the candidate with the recipe's method"))
    register(StageKind("eval", build_eval,
                       description="run every eval suite on one model"))
    register(StageKind("decide", build_decide,
                       description="judge the candidate against the baseline and the criteria", handles_stop=True))
    register(StageKind("power", build_power,
                       description="check before training that the held-out sets can resolve the criteria's margins"))
    register(StageKind("report", build_report,
                       description="write report.md and report.html", handles_stop=True))
    register(StageKind("promote", build_promote,
                       description="check a training step's checkpoint against its promotion criteria"))
    register(StageKind("package", build_package,
                       description="write artifact.json and the packaged specialist"))


# After a run: the engine's own run_finished handlers. Publishing goes first, so that every other
# handler sees the published specialist; the index refresh goes last, so that it reads what they wrote.
@hookimpl(tryfirst=True, specname="run_finished")
def publish_shipped(run):
    """Publish a shipped run's specialist to specialists/<id>/ (before other handlers see the run)."""
    if run.decision == "ship" and (run.path / "specialist").is_dir():
        from factory.specialists import publish_specialist

        publish_specialist(run.path, run.path.parent.parent)  # runs/<id> lives in the project root


@hookimpl(trylast=True, specname="run_finished")
def refresh_index(run):
    """Take the run (and any complete run the index lacks) into runs/index.duckdb.

    The index is derived: a build never fails because of it. What this refresh leaves out,
    the next build's refresh or `factory sql` / `factory runs` takes in (they compare the run
    directories with the indexed ids before they answer), so the messages below are true.
    """
    import sys

    try:
        from factory import index

        res = index.refresh(run.path.parent, only=[run.id])
    except Exception as e:  # noqa: BLE001 - the index is derived; one line, and the build goes on
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"factory: {run.id} not in the run index yet ({why}); the next build or `factory sql` takes it in",
              file=sys.stderr)
        return
    if res.get("queued"):
        print(f"factory: the run index is busy; {run.id} is taken in by the next build or `factory sql`",
              file=sys.stderr)
