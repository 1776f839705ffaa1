"""Where a stage's build runs: in this process, or as a Ray task on a cluster.

With `executor = "ray"` (pyproject.toml [tool.factory], factory.toml, or
FACTORY_EXECUTOR=ray) the heavy stages (kinds base, train and eval) run as Ray
tasks that reserve the resources the recipe asks for (`train.resources`,
`evals.resources`: num_cpus, num_gpus). doit stays the front door: it decides
what is stale and runs independent stages at once (`doit -n 4`), each one
waiting here on its task. Inputs and outputs travel through the store: the task
reads its inputs from the store's trees and writes into a build directory under
cache/tmp/, which this process then publishes, so the project directory (or at
least cache/) must be on a filesystem every node mounts at the same path.

Ray is an optional extra (`pip install -e ".[ray]"`), imported only here. The
cluster is `ray_address` (setting) or FACTORY_RAY_ADDRESS, else "auto" (a
cluster already started on this machine with `ray start --head`).
Task arguments and results are plain strings and JSON-able dicts.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from factory.errors import FactoryError

HEAVY_KINDS = ("base", "train", "eval")
_PASSED_ENV = ("FACTORY_LOAD_PLUGINS", "FACTORY_PROGRESS", "PYTHONPATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_ray_ready = False


def wanted(settings: dict[str, Any], kind: str) -> bool:
    executor = settings.get("executor") or "local"
    if executor not in ("local", "ray"):
        raise FactoryError(f"executor {executor!r}: choose local or ray (pyproject.toml [tool.factory] or FACTORY_EXECUTOR)")
    return executor == "ray" and kind in HEAVY_KINDS


def resources(recipe: Any, kind: str, stage: str = "") -> dict[str, float]:
    spec = None
    if kind == "train":
        steps = recipe.steps()  # one train section, or a list of steps whose stages are train-<name>
        step = next((st for st in steps if f"train-{getattr(st, 'name', '')}" == stage), steps[-1])
        spec = step.resources
    elif kind == "eval":
        spec = recipe.evals.resources
    if spec is None:
        return {"num_cpus": 1, "num_gpus": 0}
    return {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus}


def _init(settings: dict[str, Any]) -> Any:
    global _ray_ready
    try:
        import ray
    except ImportError:
        raise FactoryError('executor "ray" needs Ray: pip install -e ".[ray]"') from None
    if not _ray_ready:
        address = os.environ.get("FACTORY_RAY_ADDRESS") or settings.get("ray_address") or "auto"
        env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        extra = {}
        if address.split(":")[0] in ("127.0.0.1", "localhost"):  # a cluster on loopback: be reachable there too
            extra["_node_ip_address"] = "127.0.0.1"
        try:
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True,
                     logging_level="ERROR", configure_logging=True, include_dashboard=False, **extra)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise FactoryError(f"executor ray: no cluster at {address} ({type(e).__name__}); "
                               "start one with `ray start --head` or set FACTORY_RAY_ADDRESS") from None
        _ray_ready = True
    return ray


def build_on_cluster(build: Callable[..., dict[str, Any]], settings: dict[str, Any], root: str, recipe: str,
                     stage: str, out: str, work: str, res: dict[str, float]) -> dict[str, Any]:
    """Run one stage's build as a Ray task: `build(root, recipe, stage, out, work)` (the engine's
    `remote_build`) on a worker; returns the build's facts (plus the node it ran on)."""
    ray = _init(settings)
    task = ray.remote(build).options(num_cpus=res["num_cpus"], num_gpus=res["num_gpus"], max_retries=0)
    try:
        return ray.get(task.remote(root, recipe, stage, out, work))
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if getattr(e, "cause", None) is not None else e
        if isinstance(cause, FactoryError):
            raise FactoryError(str(cause)) from None
        raise RuntimeError(f"stage {stage} failed on the cluster: {type(cause).__name__}: {cause}") from None

