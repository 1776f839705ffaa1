"""A plugin of small stages that only write files, so the engine can be tested without torch.

It registers a family `fake`, a dataset source `lines`, suites `fake-primary` and
`fake-breadth`, and every stage kind of the pipeline. Each build appends a line
to <root>/builds.log; FAKE_SLEEP=<stage>:<seconds> makes that stage slow.
"""

import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from factory.hookspecs import hookimpl
from factory.stages import StageKind

__version__ = "1"


def _log(ctx):
    with open(ctx.root / "builds.log", "a") as f:
        f.write(f"{ctx.stage} {ctx.key[:12]}\n")
    spec = os.environ.get("FAKE_SLEEP", "")
    if spec:
        stage, secs = spec.split(":")
        if stage == ctx.stage:
            # write part of the output first: a kill now must not publish it
            (ctx.out / "partial.txt").write_text("half")
            time.sleep(float(secs))


def _w(ctx, name, obj):
    p = ctx.out / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, sort_keys=True, indent=1) + "\n")


class Lines:
    name = "lines"
    version = "1"

    def files(self, spec, root):
        return [root / spec["path"]] if spec.get("path") else []

    def read(self, spec, root):
        if spec.get("path"):
            for i, line in enumerate((root / spec["path"]).read_text().splitlines()):
                yield {"id": str(i), "prompt": line, "answer": line[::-1]}
        else:
            for i in range(int(spec["options"].get("rows", 10))):
                yield {"id": f"b{i}", "prompt": f"p{i}", "answer": f"a{i}", "skill": "copy"}


def build_dataset(ctx):
    _log(ctx)
    rows = []
    for spec in ctx.config["sources"]:
        rows.extend(Lines().read(spec, ctx.root))
    held = [r for r in rows if int(r["id"].lstrip("b")) % 5 == 0]
    train = [r for r in rows if r not in held]
    (ctx.out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (ctx.out / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    _w(ctx, "dataset.json", {"counts": {"train_rows": len(train), "heldout_rows": len(held)}})


class Fake:
    name = "fake"
    version = "1"

    def resolve_base(self, spec, root):
        return {"size": spec["options"].get("size", 1)}

    def build_base(self, ctx):
        _log(ctx)
        _w(ctx, "base.json", ctx.config)
        ctx.facts["seconds"] = time.perf_counter() % 1

    def default_train_params(self, ctx):
        return {"steps": 10, "lr": 0.1, "rows": ctx.train_rows, "precision": "bf16"}

    def trainer(self, method):
        if method not in ("sft-lora", "dpo-lora"):
            from factory.errors import FactoryError

            raise FactoryError(f"train.method: the fake family has no method {method!r}; its methods: sft-lora, dpo-lora")
        return train

    def load(self, base_dir, adapter_dir, settings):
        raise NotImplementedError


def train(ctx):
    _log(ctx)
    _w(ctx, "adapter/adapter.json", {"lr": ctx.config["lr"], "steps": ctx.config["steps"],
                                     "precision": ctx.config["precision"]})
    _w(ctx, "train.json", {"steps": ctx.config["steps"]})
    (ctx.out / "train.log").write_text(json.dumps({"step": 1, "loss": 1.0, "lr": ctx.config["lr"]}) + "\n")
    ctx.facts["seconds"] = time.perf_counter() % 1  # a measurement: differs on every execution


class Suite:
    version = "1"
    needs = "heldout"
    primary_metric = "exact_match"

    def __init__(self, name):
        self.name = name

    def evaluate(self, lm, rows, settings):
        raise NotImplementedError


def build_eval(ctx):
    _log(ctx)
    role = ctx.config["role"]
    score = 0.5 if role == "baseline" else 0.9
    _w(ctx, f"eval-{role}.json", {"role": role, "score": score})


def build_promote(ctx):
    """A step's checkpoint 'scores' steps / 1000 on every criterion: a recipe's steps decide the verdict."""
    _log(ctx)
    steps = json.loads((ctx.inputs["adapter"] / "adapter" / "adapter.json").read_text())["steps"]
    checks = [{"criterion": c, "min": m, "value": steps / 1000, "passed": steps / 1000 >= m}
              for c, m in sorted(ctx.config["promote"].items())]
    failed = [c for c in checks if not c["passed"]]
    step = ctx.config["step"]
    _w(ctx, "verdict.json", {
        "pass": not failed, "decision": "rework" if failed else "promote", "step": step,
        "reason": f"step {step} not promoted: {failed[0]['criterion']}" if failed else f"step {step} promoted",
        "next_action": f"raise {ctx.config['field']}.steps" if failed else None,
        "blocked_by": [f"promote.{step}.{c['criterion']}" for c in failed], "checks": checks})


def build_power(ctx):
    """The power check passes unless the recipe's criteria ask for `primary_min: 1.0` (a bar no set can prove)."""
    _log(ctx)
    ok = (ctx.config["criteria"].get("primary_min") or 0) < 1.0
    _w(ctx, "verdict.json", {"pass": ok, "decision": "blocked", "checks": [], "blocked_by": [] if ok else ["power.primary_min"],
                             "reason": "held-out sets resolve the margins" if ok else "held-out set too small",
                             "next_action": None if ok else "raise data.heldout_fraction"})


class CountOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = "rows"


def build_count(ctx):
    """A placeable kind: counts the lines of its `rows` input."""
    _log(ctx)
    opts = CountOptions.model_validate(ctx.config["options"])
    n = len(Path(ctx.inputs["rows"]).read_text().splitlines())
    _w(ctx, "count.json", {opts.label: n})


def build_decide(ctx):
    _log(ctx)
    for d in ctx.inputs.values():
        stop = Path(d) / "stop.json"
        if Path(d).is_dir() and stop.exists():
            v = json.loads(stop.read_text())["verdict"]
            _w(ctx, "decision.json", {"decision": v["decision"], "reason": v["reason"],
                                      "next_action": v["next_action"], "blocked_by": v["blocked_by"]})
            return
    cand = json.loads((ctx.inputs["eval-candidate"] / "eval-candidate.json").read_text())["score"]
    ok = cand >= (ctx.config["criteria"]["primary_min"] or 0)
    _w(ctx, "decision.json", {"decision": "ship" if ok else "rework", "reason": f"primary {cand}"})


def build_report(ctx):
    _log(ctx)
    (ctx.out / "report.md").write_text(f"# {ctx.config['recipe']}\n")


def build_package(ctx):
    _log(ctx)
    _w(ctx, "artifact.json", {"shipped": True})


@hookimpl
def register_model_families(register):
    register(Fake())


@hookimpl
def register_dataset_sources(register):
    register(Lines())


@hookimpl
def register_eval_suites(register):
    register(Suite("fake-primary"))
    register(Suite("fake-breadth"))


@hookimpl
def register_stage_kinds(register):
    for name, fn in [("dataset", build_dataset), ("base", Fake().build_base), ("train", train),
                     ("eval", build_eval), ("promote", build_promote), ("power", build_power),
                     ("package", build_package)]:
        register(StageKind(name, fn))
    register(StageKind("decide", build_decide, handles_stop=True))
    register(StageKind("report", build_report, handles_stop=True))
    register(StageKind("count-rows", build_count, options=CountOptions, inputs=("rows",)))
