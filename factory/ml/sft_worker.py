"""Entry point of one training process under torchrun: `python -m factory.ml.sft_worker launch.json`.

The parent (`factory.ml.sft._launch_torchrun`) writes launch.json: the stage's
config, inputs, output and work directories, and how to load the model (the
family's name, or a `module:function` loader). Each process loads the model
onto its own device and runs the same trainer; rank 0 writes the outputs.
"""

from __future__ import annotations

import json
import os
import sys
from importlib import import_module
from pathlib import Path


def main(argv: list[str]) -> int:
    from factory.errors import FactoryError
    from factory.ml.sft import train_sft_lora
    from factory.stages import BuildContext

    from factory.ml.sft import die_with_parent, watch_builder

    # Die with the build: torchrun (the parent) may itself be killed without passing a signal on.
    die_with_parent()
    builder = os.environ.get("FACTORY_BUILDER_PID")
    if builder and builder.isdigit():
        watch_builder(int(builder))
    spec = json.loads(Path(argv[0]).read_text())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = str(spec["config"].get("device") or "auto")
    if device in ("auto", "cuda"):
        import torch

        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    ctx = BuildContext(
        recipe=None, stage=spec["stage"], kind=spec["kind"], key=spec["key"], config=spec["config"],
        inputs={k: Path(v) for k, v in spec["inputs"].items()}, out=Path(spec["out"]), root=Path(spec["root"]),
        registry=None, work=Path(spec["work"]), input_digests=spec.get("input_digests", {}),
    )
    settings = {"device": device, "train": True}
    base = ctx.inputs["base"]
    try:
        if spec.get("loader"):
            mod, _, fn = spec["loader"].partition(":")
            lm = getattr(import_module(mod), fn)(base, settings)
        else:
            from factory.plugins import registries

            from factory.ml.sft import init_adapter

            lm = registries().families.get(spec["family"]).load(base, init_adapter(ctx), settings)
        train_sft_lora(ctx, lm)
    except FactoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
