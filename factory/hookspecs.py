"""The hooks a factory plugin can implement. One line of doc each; the plugin guide has the detail."""

import pluggy

hookspec = pluggy.HookspecMarker("factory")
hookimpl = pluggy.HookimplMarker("factory")


@hookspec
def register_model_families(register):
    """Register model families: call register(family) for each (see factory.interfaces.ModelFamily)."""


@hookspec
def register_eval_suites(register):
    """Register eval suites: call register(suite) for each (see factory.interfaces.EvalSuite)."""


@hookspec
def register_dataset_sources(register):
    """Register dataset sources: call register(source) for each (see factory.interfaces.DatasetSource)."""


@hookspec
def register_stage_kinds(register):
    """Register stage kinds: call register(kind) for each (see factory.stages.StageKind)."""


@hookspec
def run_finished(run):
    """Called once a run directory is complete (again when a build adds to it); run is a factory.runs.RunInfo."""
