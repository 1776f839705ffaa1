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
from factory.stages import Input, Stage, code_identity, module_ast_digest, stage_key
from factory.store import Store


class NotBuilt(Exception):
    """An upstream stage is not in the store yet, so this key cannot be known."""


def numerics_versions() -> dict[str, str | None]:
    """Versions of the libraries whose upgrades change numbers: part of model stages' keys."""
    from importlib import metadata

    out = {}
    for pkg in ("torch", "transformers", "peft", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# The engine's own model code, which decides what a trained adapter or an eval record holds.
_ENGINE_MODULES = {
    "train": ("factory.ml.sft", "factory.ml.sft_worker", "factory.ml.lora", "factory.ml.text"),
    "eval": ("factory.ml.generate", "factory.ml.text"),
}


def _module_of(obj: Any) -> str:
    return obj.__module__ if callable(obj) and hasattr(obj, "__module__") else type(obj).__module__


class Plan:
    def __init__(self, recipe: Recipe, root: Path, regs: Any, store: Store):
        self.recipe = recipe
        self.root = Path(root)
        self.regs = regs
        self.store = store
        self.family = self._field("base.family", regs.families.get, recipe.base.family)
        self._keys: dict[str, str] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self.stages: dict[str, Stage] = {}
        self._libs = numerics_versions()
        self._build()

    # --- the graph ---------------------------------------------------------

    def _field(self, field: str, fn, *args):
        """Call fn; a FactoryError it raises is re-raised naming the recipe file and field."""
        try:
            return fn(*args)
        except FactoryError as e:
            path = self.recipe.path
            where = os.path.relpath(path, self.root) if path else self.recipe.name
            raise FactoryError(f"{where}: {field}: {e}" if field else f"{where}: {e}") from None

    def _code(self, kind: str, *modules: str, libs: bool = False) -> dict[str, Any]:
        sk = self.regs.stages.get(kind)
        info = self.regs.plugin_of("stage", kind)
        ident = code_identity(sk, info.name if info else "", info.version if info else "")
        extra = sorted({m for m in modules if m})
        if extra:
            ident["modules"] = {m: module_ast_digest(m) for m in extra}
        if libs:  # model stages: library upgrades change numbers
            ident["libs"] = self._libs
        return ident

    def _plugin(self, kind: str, name: str) -> dict[str, str]:
        info = self.regs.plugin_of(kind, name)
        return {"plugin": info.name if info else "", "version": info.version if info else ""}

    def _data_stage(self, name: str, spec: DataSpec) -> Stage:  # name is also the recipe section
        sources, inputs, modules = [], {}, []
        recipes_dir = (self.recipe.path or self.root / "recipes").parent
        for i, src in enumerate(spec.sources):
            plugin = self._field(f"{name}.sources.{i}.kind", self.regs.sources.get, src.kind)
            modules.append(_module_of(plugin))
            path = None
            if src.path is not None:
                path = os.path.relpath((recipes_dir / src.path).resolve(), self.root.resolve())
            sources.append({"kind": src.kind, "path": path, "options": src.options,
                            "version": getattr(plugin, "version", "0")})
            resolved = {"kind": src.kind, "path": path, "options": src.options}
            for j, f in enumerate(plugin.files(resolved, self.root)):
                inputs[f"source{i}.{j}"] = Input(path=Path(f))
        config = {"sources": sources, "contract": spec.contract,
                  "heldout_fraction": spec.heldout_fraction, "options": spec.options}
        return Stage(name, "dataset", config, inputs, self._code("dataset", *modules),
                     run_files=(name == "dataset"))

    def _build(self) -> None:
        r = self.recipe
        fam_mod = _module_of(self.family)
        fam = {"family": r.base.family, **self._plugin("family", r.base.family)}
        add = self.stages.__setitem__

        add("breadth", self._data_stage("breadth", r.breadth))
        add("dataset", self._data_stage("dataset", r.data))
        base_cfg = {**fam, "model": r.base.model,
                    "base": self._field("", self.family.resolve_base,
                                        {"model": r.base.model, "options": r.base.options}, self.root)}
        add("base", Stage("base", "base", base_cfg, {"breadth": Input(stage="breadth")},
                          self._code("base", fam_mod, libs=True), run_files=False))
        trainer = self._field("train.method", self.family.trainer, r.train.method)
        train_mods = [fam_mod, _module_of(trainer), *getattr(self.family, "code_modules", ()),
                      *_ENGINE_MODULES["train"]]
        add("train", Stage("train", "train", {}, {
            "base": Input(stage="base"),
            "train": Input(stage="dataset", file="train.jsonl"),
            "heldout": Input(stage="dataset", file="heldout.jsonl"),
            "replay": Input(stage="breadth", file="train.jsonl"),
        }, self._code("train", *train_mods, libs=True)))

        suites = [self._field("evals", self.regs.suites.get, s) for s in r.evals.suites()]
        eval_mods = [fam_mod, *(_module_of(s) for s in suites), *getattr(self.family, "code_modules", ()),
                     *(m for s in suites for m in getattr(s, "code_modules", ())), *_ENGINE_MODULES["eval"]]
        device = "cuda" if cuda_available() else "cpu"
        for role in ("baseline", "candidate"):
            cfg = {
                "role": role, **fam,
                "suites": [{"name": s.name, "version": s.version} for s in suites],
                "settings": {"batch_size": r.evals.batch_size, "max_new_tokens": r.evals.max_new_tokens,
                             "limit": r.evals.limit},
                "load": {"device": device},
            }
            inputs = {"base": Input(stage="base"),
                      "heldout": Input(stage="dataset", file="heldout.jsonl"),
                      "breadth": Input(stage="breadth", file="heldout.jsonl")}
            if role == "candidate":
                inputs["adapter"] = Input(stage="train")
            add(f"eval-{role}", Stage(f"eval-{role}", "eval", cfg, inputs, self._code("eval", *eval_mods, libs=True)))

        add("decide", Stage("decide", "decide", {
            "primary": r.evals.primary, "regression": r.evals.regression,
            "criteria": r.criteria.model_dump(mode="json"),
        }, {"eval-baseline": Input(stage="eval-baseline"), "eval-candidate": Input(stage="eval-candidate"),
            "train": Input(stage="train")}, self._code("decide")))
        meta = {"recipe": r.name, "goal": r.goal, "owner": r.owner, "base_model": r.base.model,
                "family": r.base.family, "method": r.train.method}
        add("report", Stage("report", "report", dict(meta), {
            "decide": Input(stage="decide"), "eval-baseline": Input(stage="eval-baseline"),
            "eval-candidate": Input(stage="eval-candidate"), "train": Input(stage="train"),
            "dataset": Input(stage="dataset"),
        }, self._code("report")))
        if r.package:
            add("package", Stage("package", "package", {**meta, "force": False}, {
                "decide": Input(stage="decide"), "train": Input(stage="train"), "base": Input(stage="base"),
                "dataset": Input(stage="dataset"), "eval-baseline": Input(stage="eval-baseline"),
                "eval-candidate": Input(stage="eval-candidate"),
            }, self._code("package")))

    # --- lazily resolved config and keys ------------------------------------

    def config(self, name: str) -> dict[str, Any]:
        if name in self._configs:
            return self._configs[name]
        stage = self.stages[name]
        cfg = stage.config
        if name == "train":
            cfg = self._train_config()
        self._configs[name] = cfg
        return cfg

    def _train_config(self) -> dict[str, Any]:
        t = self.recipe.train
        ds = json.loads(self._upstream_file("dataset", "dataset.json").read_text())
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
        return {"kind": stage.kind, "config": self.config(name), "code": stage.code,
                "inputs": self.input_digests(name)}

    def key(self, name: str) -> str:
        if name not in self._keys:
            stage = self.stages[name]
            self._keys[name] = stage_key(
                Stage(stage.name, stage.kind, self.config(name), stage.inputs, stage.code),
                self.input_digests(name),
            )
        return self._keys[name]

    def forget(self) -> None:
        """Drop memoized keys (after a build changed the store)."""
        self._keys.clear()
        self._configs.clear()

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
