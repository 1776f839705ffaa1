"""Plan: a recipe resolved into stages, their inputs and (lazily) their keys.

    breadth ──┬─► base ─┬─► train ─► eval-candidate ─┐
    dataset ──┼─────────┴──────────► eval-baseline ───┴─► decide ─► report ─► package

A stage's key needs the digests of its inputs, and an upstream stage's output
is only known once it is built, so keys are computed on demand, in order, and
memoized. Each stage names exactly what it reads: the baseline eval reads the
held-out file, not the whole dataset, so rows added to the train split alone
do not re-run it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from factory import hashing
from factory.errors import FactoryError
from factory.fastpath import cuda_available
from factory.interfaces import TrainDefaultsContext
from factory.recipe import DataSpec, Recipe
from factory.stages import numerics_versions, Input, Stage, code_identity, stage_key
from factory.store import Store

# Training settings a step's own fields (and base.family) decide: the train config takes them from
# there, after the method's options, so the same key under train.options would be ignored.
STEP_FIELDS = ("method", "seed", "processes", "device", "precision", "family")


class NotBuilt(Exception):
    """An upstream stage is not in the store yet, so this key cannot be known."""


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _optional(module: str, name: str) -> Any:
    """A function another module may provide (a plan-time check), or None."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _module_of(obj: Any) -> str:
    """A plugin object's code root: its class's module (a suite, a source)."""
    return obj.__module__ if callable(obj) and hasattr(obj, "__module__") else type(obj).__module__


def _entry(obj: Any, name: str) -> list[Any]:
    fn = getattr(obj, name, None)
    return [fn] if callable(fn) else []


class Plan:
    """A recipe expanded into a table of stages (name, kind, config, inputs), in build order.

    `expand` turns the recipe into rows; the default graph of a one-step recipe is

        breadth, dataset, base, train, eval-baseline, eval-candidate, decide, report, package

    and a recipe adds rows by declaring more: `datasets` (one dataset stage each), a list of
    training steps (`train-<step>` stages, each starting from the previous one, with an optional
    `promote-<step>` check that guards what follows), and `stages` (registered kinds it places).
    """

    def __init__(self, recipe: Recipe, root: Path, regs: Any, store: Store):
        self.recipe = recipe
        self.root = Path(root)
        self.regs = regs
        self.store = store
        self.family = self._field("base.family", regs.families.get, recipe.base.family)
        self._keys: dict[str, str] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._stops: dict[str, dict[str, Any] | None] = {}
        self._via_guard: dict[str, bool] = {}
        self.stages: dict[str, Stage] = {}
        self.steps: dict[str, Any] = {}  # train stage name -> the recipe's TrainStep
        self.final_train = "train"
        self._libs = numerics_versions()
        self.breadth = recipe.breadth if recipe.breadth is not None else self._default_data("breadth")
        for stage in self.expand():
            if stage.name in self.stages:
                raise self._error(f"stages.{stage.name}", f"stage {stage.name!r} is defined twice")
            self.stages[stage.name] = stage

    # --- errors ----------------------------------------------------------------

    def _where(self) -> str:
        path = self.recipe.path
        return os.path.relpath(path, self.root) if path else self.recipe.name

    def _error(self, field: str, msg: str) -> FactoryError:
        return FactoryError(f"{self._where()}: {field}: {msg}" if field else f"{self._where()}: {msg}")

    def _field(self, field: str, fn, *args):
        """Call fn; a FactoryError it raises is re-raised naming the recipe file and field."""
        try:
            return fn(*args)
        except FactoryError as e:
            msg = str(e)
            head, sep, rest = msg.partition(": ")
            if field and sep and head.split(".")[0] == field.split(".")[0]:
                if head.split(".")[-1] == field.split(".")[-1]:  # "train.method: ..." of step 2: train.1.method
                    msg = rest
                else:  # names its own, more precise field
                    raise FactoryError(f"{self._where()}: {msg}") from None
            raise self._error(field, msg) from None

    def _options(self, model: Any, data: Any, field: str) -> dict[str, Any]:
        """Options a plugin owns, validated by its model at plan time (no model: taken as they are)."""
        if model is None:
            return dict(data or {})
        from factory import options

        options.validate(model, data, field, self._where())
        return dict(data or {})

    def _default_data(self, section: str) -> DataSpec:
        """A data section the recipe leaves out: the one registered dataset source that declares itself
        its default (`default_for = {section: settings}`), alone, with its default options."""
        offers = {name: src.default_for[section] for name, src in self.regs.sources.items.items()
                  if section in (getattr(src, "default_for", None) or {})}
        if len(offers) != 1:
            what = (f"the dataset sources {', '.join(sorted(offers))} each declare themselves its default"
                    if offers else "no registered dataset source declares itself its default")
            raise self._error(section, f"the recipe has no {section} section and {what}; "
                                       f"give one ({section}: {{sources: [{{kind: ...}}]}})")
        (name, settings), = offers.items()
        from factory import options

        return options.validate(DataSpec, {**settings, "sources": [{"kind": name}]}, section,
                                f"{self._where()}: the default of dataset source {name}")

    # --- the table ---------------------------------------------------------------

    def _code(self, kind: str, *roots: Any, libs: bool = False) -> dict[str, Any]:
        """Code identity of a stage: what its kind's build reaches, and what the plugin objects it
        hands over to reach (see factory.stages.code_closure).

        The model family's code is found through its entry points, not its whole module: the base
        stage counts `family.build_base`, a train stage the function `family.trainer(method)`
        returns, the eval and promote stages `family.load` (with each suite's module), so editing a
        family's training defaults does not rebuild its base. Defaults reach the key as config.
        """
        sk = self._field(f"stages.{kind}", self.regs.stages.get, kind)
        info = self.regs.plugin_of("stage", kind)
        ident = code_identity(sk, info.name if info else "", info.version if info else "", roots)
        if libs:  # model stages: library upgrades change numbers
            ident["libs"] = self._libs
        return ident

    def _plugin(self, kind: str, name: str) -> dict[str, str]:
        info = self.regs.plugin_of(kind, name)
        return {"plugin": info.name if info else "", "version": info.version if info else ""}

    def _data_stage(self, name: str, field: str, spec: DataSpec, run_files: bool = False) -> Stage:
        sources, inputs, modules = [], {}, []
        recipes_dir = (self.recipe.path or self.root / "recipes").parent
        for i, src in enumerate(spec.sources):
            plugin = self._field(f"{field}.sources.{i}.kind", self.regs.sources.get, src.kind)
            modules.append(_module_of(plugin))
            own = {k: v for k, v in src.options.items() if k != "split"}  # split is the dataset stage's
            self._options(getattr(plugin, "Options", None), own, f"{field}.sources.{i}.options")
            path = None
            if src.path is not None:
                path = os.path.relpath((recipes_dir / src.path).resolve(), self.root.resolve())
            sources.append({"kind": src.kind, "path": path, "options": src.options,
                            "version": getattr(plugin, "version", "0")})
            resolved = {"kind": src.kind, "path": path, "options": src.options}
            files = self._field(f"{field}.sources.{i}", plugin.files, resolved, self.root)
            check = getattr(plugin, "check", None)
            if check is not None:  # cheap checks of the source's files (empty, not JSON, not UTF-8, ...)
                self._field(f"{field}.sources.{i}.path", check, resolved, self.root)
            for j, f in enumerate(files):
                inputs[f"source{i}.{j}"] = Input(path=Path(f))
        config = {"sources": sources, "contract": spec.contract,
                  "heldout_fraction": spec.heldout_fraction, "options": spec.options}
        kind = self._field(f"{field}", self.regs.stages.get, "dataset")
        if getattr(kind, "options", None) is not None:
            self._options(kind.options, config, field)
        return Stage(name, "dataset", config, inputs, self._code("dataset", *modules), run_files=run_files)

    def _data_input(self, section: str) -> str:
        return {"data": "dataset", "breadth": "breadth"}.get(section, f"dataset-{section}")

    def expand(self) -> list[Stage]:
        """The recipe as a table of stages, in an order in which each row's inputs come first."""
        r = self.recipe
        fam = {"family": r.base.family, **self._plugin("family", r.base.family)}
        rows: list[Stage] = [
            self._data_stage("breadth", "breadth", self.breadth),
            self._data_stage("dataset", "data", r.data, run_files=True),
            *(self._data_stage(f"dataset-{n}", f"datasets.{n}", d) for n, d in r.datasets.items()),
        ]
        # recipe_dir: a family that reads files resolves relative paths from the recipe's directory,
        # as the data sources do.
        recipe_dir = r.path.parent if r.path is not None else self.root / "recipes"
        base_cfg = {**fam, "model": r.base.model,
                    "base": self._field("", self.family.resolve_base,
                                        {"model": r.base.model, "options": r.base.options,
                                         "recipe_dir": str(recipe_dir)}, self.root)}
        rows.append(Stage("base", "base", base_cfg, {"breadth": Input(stage="breadth")},
                          self._code("base", *_entry(self.family, "build_base"), libs=True), run_files=False))

        suites = self._suites()
        eval_cfg = self._eval_settings(fam, suites)
        eval_mods = [*_entry(self.family, "load"), *(_module_of(s) for _, s, _ in suites)]
        eval_inputs = {"base": Input(stage="base"),
                       "heldout": Input(stage="dataset", file="heldout.jsonl"),
                       "breadth": Input(stage="breadth", file="heldout.jsonl")}
        for name, suite, opts in suites:
            files = getattr(suite, "files", None)
            for j, f in enumerate(files(opts, self.root) if files else ()):
                eval_inputs[f"suite.{name}.{j}"] = Input(path=Path(f))

        check_criteria = _optional("factory.gate", "check_criteria")
        if check_criteria is not None:
            self._field("criteria", check_criteria, r.criteria, {n: s for n, s, _ in suites}, r.evals.regression)

        # The baseline is evaluated first: a `power` check (when that kind is registered) reads its sizes
        # and rates and guards the first training step, so a held-out set too small to resolve the
        # criteria stops the build before anything trains.
        rows.append(Stage("eval-baseline", "eval", {**eval_cfg, "role": "baseline"}, dict(eval_inputs),
                          self._code("eval", *eval_mods, libs=True)))
        guard: list[str] = []
        if "power" in self.regs.stages.names():
            rows.append(Stage("power", "power", {
                "primary": r.evals.primary, "regression": r.evals.regression,
                "criteria": r.criteria.model_dump(mode="json"),
                "needs": {n: getattr(s, "needs", "") for n, s, _ in suites},
                "heldout_fraction": {"heldout": r.data.heldout_fraction, "breadth": self.breadth.heldout_fraction},
            }, {"eval-baseline": Input(stage="eval-baseline")}, self._code("power"), run_prefix="power/"))
            guard = ["power"]

        # Training steps: each starts from the previous step's weights; a promote-<step> check on a
        # step's checkpoint guards the next step (or, after the last, the candidate's evaluation).
        steps = r.steps()
        prev: str | None = None
        check_processes = _optional("factory.ml.threads", "check_processes")
        for i, step in enumerate(steps):
            field = f"train.{i}" if r.multi_step else "train"
            name = "train" if not r.multi_step else f"train-{step.name}"
            trainer = self._field(f"{field}.method", self.family.trainer, step.method)
            self._check_step(step, field)
            if check_processes is not None:
                self._field(f"{field}.processes", check_processes, step.processes, step.device)
            data = self._data_input(step.data)
            inputs = {"base": Input(stage="base"),
                      "train": Input(stage=data, file="train.jsonl"),
                      "heldout": Input(stage=data, file="heldout.jsonl"),
                      "replay": Input(stage="breadth", file="train.jsonl")}
            if prev is not None:
                inputs["init"] = Input(stage=prev)
            train_mods = [trainer, *_entry(self.family, "trainer"), *_entry(self.family, "load")]
            rows.append(Stage(name, "train", {}, inputs, self._code("train", *train_mods, libs=True),
                              guards=list(guard), run_prefix=f"steps/{step.name}/" if r.multi_step else "",
                              step=step.name))
            self.steps[name] = step
            guard = []
            if step.promote:
                pname = f"promote-{step.name}"
                names = sorted({c.split(".", 1)[0] for c in step.promote})
                cfg = {**eval_cfg, "role": "candidate", "step": step.name, "field": field, "promote": dict(step.promote),
                       "suites": [e for e in eval_cfg["suites"] if e["name"] in names]}
                rows.append(Stage(pname, "promote", cfg, {**eval_inputs, "adapter": Input(stage=name)},
                                  self._code("promote", *eval_mods, libs=True),
                                  run_prefix=f"steps/{step.name}/", step=step.name))
                guard = [pname]
            prev = name
        self.final_train = prev or "train"

        rows.append(Stage("eval-candidate", "eval", {**eval_cfg, "role": "candidate"},
                          {**eval_inputs, "adapter": Input(stage=self.final_train)},
                          self._code("eval", *eval_mods, libs=True), guards=guard))

        rows.append(Stage("decide", "decide", {
            "primary": r.evals.primary, "regression": r.evals.regression,
            "criteria": r.criteria.model_dump(mode="json"),
        }, {"eval-baseline": Input(stage="eval-baseline"), "eval-candidate": Input(stage="eval-candidate"),
            "train": Input(stage=self.final_train)}, self._code("decide")))
        final = steps[-1]
        meta = {"recipe": r.name, "goal": r.goal, "owner": r.owner, "base_model": r.base.model,
                "family": r.base.family, "method": final.method}
        report_inputs = {
            "decide": Input(stage="decide"), "eval-baseline": Input(stage="eval-baseline"),
            "eval-candidate": Input(stage="eval-candidate"), "train": Input(stage=self.final_train),
            "dataset": Input(stage="dataset"),
        }
        rows.append(Stage("report", "report", {**meta, "primary": r.evals.primary, "regression": r.evals.regression},
                          report_inputs, self._code("report")))
        if r.package:
            rows.append(Stage("package", "package", {**meta, "force": False}, {
                "decide": Input(stage="decide"), "train": Input(stage=self.final_train), "base": Input(stage="base"),
                "dataset": Input(stage="dataset"), "eval-baseline": Input(stage="eval-baseline"),
                "eval-candidate": Input(stage="eval-candidate"),
            }, self._code("package")))
        rows.extend(self._placed({row.name for row in rows}))
        return rows

    def _suites(self) -> list[tuple[str, Any, dict[str, Any]]]:
        """(instance name, suite object, options) for every suite the recipe evaluates."""
        r = self.recipe
        out = []
        for name in r.evals.suites():
            d = r.evals.define.get(name)
            field = f"evals.define.{name}" if d else "evals"
            suite = self._field(f"{field}.suite" if d else field, self.regs.suites.get, d.suite if d else name)
            opts = self._options(getattr(suite, "Options", None), d.options if d else {}, f"{field}.options")
            out.append((name, suite, opts))
        for name in r.evals.define:
            if name not in r.evals.suites():
                raise self._error(f"evals.define.{name}", "defined but not used: name it in primary, regression or extra")
        return out

    def _eval_settings(self, fam: dict[str, Any], suites: list[tuple[str, Any, dict[str, Any]]]) -> dict[str, Any]:
        r = self.recipe
        entries = []
        for name, suite, opts in suites:
            e: dict[str, Any] = {"name": name, "version": suite.version}
            if name in r.evals.define:  # only instances carry these, so plain suites keep their keys
                e.update({"suite": suite.name, "options": opts})
            entries.append(e)
        return {
            "role": "", **fam, "suites": entries,
            "settings": {"batch_size": r.evals.batch_size, "max_new_tokens": r.evals.max_new_tokens,
                         "limit": r.evals.limit},
            "load": {"device": "cuda" if cuda_available() else "cpu"},
        }

    def _check_step(self, step: Any, field: str) -> None:
        """Plan-time checks of one training step: device, and the method's own options."""
        if step.device == "cuda" and not cuda_available():
            raise self._error(f"{field}.device", "cuda asked for, but this machine has no CUDA device")
        clash = sorted(set(step.options) & set(STEP_FIELDS))  # _train_config sets these last
        if clash:
            key = clash[0]
            where = "base.family" if key == "family" else f"{field}.{key}"
            raise self._error(f"{field}.options.{key}", f"is set by {where}, not in options (it would be ignored)")
        model_of = getattr(self.family, "train_options", None)
        model = model_of(step.method) if model_of is not None else None
        if model is None:
            return
        intent = {k: v for k, v in (("steps", step.steps), ("lr", step.lr), ("batch_size", step.batch_size),
                                    ("replay", step.replay)) if v is not None}
        from factory import options

        options.validate(model, _deep_merge(intent, step.options), field + ".options", self._where())

    def _placed(self, taken: set[str]) -> list[Stage]:
        """Stages of registered kinds that the recipe places in its graph (`stages:`)."""
        out: list[Stage] = []
        known = set(taken)
        for name, spec in self.recipe.stages.items():
            field = f"stages.{name}"
            if name in known:
                raise self._error(field, f"the name {name!r} is taken by a stage of the recipe's graph")
            kind = self._field(f"{field}.kind", self.regs.stages.get, spec.kind)
            if not getattr(kind, "inputs", ()):
                placeable = sorted(n for n in self.regs.stages.names() if getattr(self.regs.stages.get(n), "inputs", ()))
                raise self._error(f"{field}.kind", f"stage kind {spec.kind!r} is part of every graph and cannot be "
                                  f"placed; kinds a recipe can place: {', '.join(placeable) or 'none'}")
            config = {"options": self._options_dump(kind.options, spec.options, f"{field}.options"),
                      "family": self.recipe.base.family,
                      **self._plugin("family", self.recipe.base.family)}
            inputs: dict[str, Input] = {}
            for iname, ref in spec.inputs.items():
                stage, _, file = ref.partition(":")
                if stage not in known:
                    raise self._error(f"{field}.inputs.{iname}", f"no stage {stage!r} before this one; "
                                      f"known: {', '.join(sorted(known))}")
                inputs[iname] = Input(stage=stage, file=file or None)
            missing = [i for i in kind.inputs if i not in inputs]
            if missing:
                raise self._error(f"{field}.inputs", f"kind {spec.kind} needs inputs {', '.join(missing)}")
            out.append(Stage(name, spec.kind, config, inputs, self._code(spec.kind, libs=True),
                             run_prefix=f"stages/{name}/"))
            known.add(name)
        return out

    def _options_dump(self, model: Any, data: Any, field: str) -> dict[str, Any]:
        if model is None:
            return dict(data or {})
        from factory import options

        return options.dump(model, data, field, self._where())

    # --- lazily resolved config and keys ------------------------------------

    def config(self, name: str) -> dict[str, Any]:
        if name in self._configs:
            return self._configs[name]
        stage = self.stages[name]
        cfg = stage.config
        if stage.kind == "train":
            cfg = self._train_config(name)
        self._configs[name] = cfg
        return cfg

    def _train_config(self, name: str) -> dict[str, Any]:
        t = self.steps[name]
        data = self.stages[name].inputs["train"].stage
        ds = json.loads(self._upstream_file(data, "dataset.json").read_text())
        counts = ds.get("counts", {})
        intent = {k: v for k, v in (("steps", t.steps), ("lr", t.lr), ("batch_size", t.batch_size),
                                    ("replay", t.replay)) if v is not None}
        intent = _deep_merge(intent, t.options)
        device = t.device if t.device != "auto" else ("cuda" if cuda_available() else "cpu")
        ctx = TrainDefaultsContext(method=t.method, train_rows=int(counts.get("train_rows", 0)),
                                   heldout_rows=int(counts.get("heldout_rows", 0)), device=device,
                                   processes=t.processes, intent=intent)
        defaults = self.family.default_train_params(ctx) or {}
        cfg = _deep_merge(defaults, intent)
        # A recipe's explicit precision wins; "auto" takes the family's choice (resolved at plan time, so
        # the key names the arithmetic) and, without one, the trainer's: bf16 on CUDA that has it.
        precision = t.precision if t.precision != "auto" else defaults.get("precision", "auto")
        cfg.update({"method": t.method, "seed": t.seed, "processes": t.processes, "device": device,
                    "precision": precision, "family": self.recipe.base.family})
        return cfg

    # --- guards: a failed check stops what follows --------------------------------

    def _outputs(self, stage: str) -> dict[str, Any]:
        man = self.store.manifest(self.key(stage))
        if man is None:
            raise NotBuilt(stage)
        return man

    def _read_output(self, stage: str, rel: str) -> dict[str, Any]:
        return json.loads(self.store.file(self.key(stage), rel).read_text())

    def stop_of(self, name: str) -> dict[str, Any] | None:
        """Why this stage must not build, or None: a failed guard, or an input that was itself stopped.

        The answer is a stop record, `{"stage", "stopped_by", "verdict"}`, which the engine publishes
        as the stage's stop.json instead of building it (unless the kind handles stops itself).
        """
        if name in self._stops:
            return self._stops[name]
        st = self.stages[name]
        stop, via_guard = None, False
        for g in st.guards:
            outs = self._outputs(g)["outputs"]
            if "stop.json" in outs:
                stop = self._read_output(g, "stop.json")
            elif "verdict.json" in outs:
                verdict = self._read_output(g, "verdict.json")
                if not verdict.get("pass", False):
                    stop = {"stopped_by": g, "verdict": verdict}
            else:
                raise FactoryError(f"guard {g} of stage {name} wrote no verdict.json")
            if stop is not None:
                via_guard = True
                break
        if stop is None:
            for inp in st.inputs.values():
                if inp.stage is not None and "stop.json" in self._outputs(inp.stage)["outputs"]:
                    stop = self._read_output(inp.stage, "stop.json")
                    break
        if stop is not None:
            stop = {"stage": name, "stopped_by": stop["stopped_by"], "verdict": stop["verdict"]}
        self._stops[name] = stop
        self._via_guard[name] = via_guard
        return stop

    def _guard_material(self, name: str) -> dict[str, Any] | None:
        """What a failing guard adds to the key (a passing one adds nothing, so its threshold is free)."""
        if not self.stages[name].guards:
            return None
        stop = self.stop_of(name)
        if stop is None or not self._via_guard.get(name):
            return None  # stopped through an input: that input's digest already says so
        return {"stopped_by": stop["stopped_by"], "verdict": hashing.digest_json(stop["verdict"])}

    def _upstream_file(self, stage: str, rel: str) -> Path:
        key = self.key(stage)
        man = self.store.manifest(key)
        if man is None:
            raise NotBuilt(stage)
        return self.store.file(key, rel)

    def input_digests(self, name: str) -> dict[str, str]:
        out = {}
        for iname, inp in self.stages[name].inputs.items():
            if inp.path is not None:
                p = inp.path if inp.path.is_absolute() else self.root / inp.path
                out[iname] = hashing.digest_path(p)
                continue
            man = self.store.manifest(self.key(inp.stage))
            if man is None:
                raise NotBuilt(inp.stage)
            if inp.file is None:
                out[iname] = man["output_digest"]
            else:
                if inp.file not in man["outputs"]:
                    raise FactoryError(f"stage {inp.stage} did not write {inp.file}, which {name} reads")
                out[iname] = man["outputs"][inp.file]["digest"]
        return out

    def material(self, name: str) -> dict[str, Any]:
        """Everything the stage's key is a digest of (kept in its manifest for `factory why`)."""
        stage = self.stages[name]
        out = {"kind": stage.kind, "config": self.config(name), "code": stage.code,
               "inputs": self.input_digests(name)}
        guard = self._guard_material(name)
        if guard is not None:
            out["stopped"] = guard
        return out

    def key(self, name: str) -> str:
        if name not in self._keys:
            stage = self.stages[name]
            config = self.config(name)
            guard = self._guard_material(name)
            if guard is not None:  # the stage is stopped: its key says by what, so a pass builds anew
                config = {**config, "__stopped__": guard}
            self._keys[name] = stage_key(
                Stage(stage.name, stage.kind, config, stage.inputs, stage.code),
                self.input_digests(name),
            )
        return self._keys[name]

    def forget(self) -> None:
        """Drop memoized keys (after a build changed the store)."""
        self._keys.clear()
        self._configs.clear()
        self._stops.clear()

    def order(self) -> list[str]:
        return list(self.stages)

    def input_paths(self, name: str) -> dict[str, Path]:
        """Materialized inputs of a stage: directories of hardlinks, or single files."""
        out = {}
        for iname, inp in self.stages[name].inputs.items():
            if inp.path is not None:
                out[iname] = inp.path if inp.path.is_absolute() else self.root / inp.path
                continue
            key = self.key(inp.stage)
            tree = self.store.tree(key)
            out[iname] = tree / inp.file if inp.file else tree
        return out
