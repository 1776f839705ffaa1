"""`factory reproduce <run>`: rebuild a run from its own directory in a clean store, stage by stage.

The run directory keeps the recipe file as built (`recipe.yaml`) and in
config.json every stage's resolved config, key and output digest. The rebuild
runs in a temporary project whose recipes/ holds that recipe file beside a copy
of the project's source files (its data), with an empty store and no remote
cache, so nothing is reused; then each stage's key and output digest are
compared with the run's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from factory.errors import FactoryError


def reproduce(root: Path, run_dir: Path, keep: bool = False, log=lambda message: None) -> list[dict[str, Any]]:
    """Rows of (stage, recorded key/digest, rebuilt key/digest, verdict) for every stage of the run."""
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.is_file():
        raise FactoryError(f"{run_dir}: no recipe.yaml (runs made before factory kept the recipe cannot be reproduced)")
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise FactoryError(f"{run_dir / 'config.json'}: unreadable ({e})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("stage_keys"), dict):
        raise FactoryError(f"{run_dir / 'config.json'}: field stage_keys missing")
    recipe = cfg.get("recipe") or run_dir.name[11:].rsplit("-", 1)[0]
    recorded_out = cfg.get("stage_outputs") or {}

    tmp = Path(tempfile.mkdtemp(prefix=f"reproduce-{recipe}-"))
    saved = {k: os.environ.get(k) for k in ("FACTORY_REMOTE", "FACTORY_INVOCATION", "FACTORY_EXECUTOR")}
    try:
        top = str(root / "recipes")
        shutil.copytree(root / "recipes", tmp / "recipes",  # the data, not today's recipe files
                        ignore=lambda d, names: [n for n in names if d == top and n.endswith((".yaml", ".yml"))])
        shutil.copyfile(recipe_file, tmp / "recipes" / f"{recipe}.yaml")
        os.environ["FACTORY_REMOTE"] = ""  # a clean store: nothing pulled, everything built here
        os.environ.pop("FACTORY_INVOCATION", None)
        os.environ.pop("FACTORY_EXECUTOR", None)
        from factory.engine import Session

        s = Session(tmp)
        plan = s.plan(recipe)
        rows = []
        for stage in plan.order():
            status = s.run_stage(recipe, stage)
            key = plan.key(stage)
            digest = s.store.manifest(key)["output_digest"]
            want_key, want_out = cfg["stage_keys"].get(stage), recorded_out.get(stage)
            if want_out is not None:
                verdict = "identical" if digest == want_out else "different"
            else:
                verdict = "identical key" if key == want_key else "different key"
            rows.append({"stage": stage, "status": status, "key": key, "recorded_key": want_key,
                         "output_digest": digest, "recorded_output_digest": want_out, "verdict": verdict})
            log(f"  {stage:<16} {verdict:<10} key {'same' if key == want_key else 'changed':<8} "
                f"output {digest[:12]} (run: {(want_out or '-')[:12]})")
        return rows
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        from factory import hashing

        hashing.use_cache(None)
        if keep:
            log(f"the rebuilt project is kept in {tmp}")
        else:
            from factory.store import _force_rmtree

            _force_rmtree(tmp)
