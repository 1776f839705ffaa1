"""The `merge-lora` stage kind: fold a trained adapter into its base, and prove the fold is faithful.

A recipe places it in its graph:

    stages:
      merged:
        kind: merge-lora
        inputs: {base: base, adapter: train, rows: "dataset:heldout.jsonl"}
        options: {check_rows: 64, suites: [json-action]}

The build loads base + adapter with the recipe's family, computes the logits of `check_rows`
held-out prompts, merges (`merge_and_unload`), computes them again and records the largest
difference; more than `atol` fails the stage. The merged model is written as a transformers
checkpoint (`model/`, safetensors) that loads without peft, and the suites named in `suites`
are run on the merged model, their scores in `merge.json` beside the check.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from factory.errors import FactoryError
from factory.hookspecs import hookimpl
from factory.stages import StageKind

__version__ = "1.0"


class MergeOptions(BaseModel):
    """Options of a placed `merge-lora` stage (recipe: stages.<name>.options)."""

    model_config = ConfigDict(extra="forbid")

    check_rows: int = Field(32, ge=1, le=4096, description="held-out prompts whose logits are compared before and after")
    atol: float = Field(1e-3, gt=0, le=1, description="largest logit difference the merge may introduce")
    suites: list[str] = Field(default_factory=list, max_length=16, description="eval suites run on the merged model")


def build_merge(ctx: Any) -> None:
    import torch

    from factory.evaluate import adapter_dir_of, run_suite
    from factory.ml.sft import collate
    from factory.ml.text import encode_examples
    from factory.records import read_rows

    opts = MergeOptions.model_validate(ctx.config.get("options") or {})
    family = ctx.registry.families.get(ctx.config["family"])
    suites = [ctx.registry.suites.get(s) for s in opts.suites]
    base, adapter = Path(ctx.inputs["base"]), adapter_dir_of(Path(ctx.inputs["adapter"]))
    if adapter is None or not (adapter / "adapter_config.json").is_file():
        raise FactoryError(f"stage {ctx.stage}: input adapter holds no adapter_config.json")
    rows = read_rows(ctx.inputs["rows"])[: opts.check_rows]
    if not rows:
        raise FactoryError(f"stage {ctx.stage}: input rows holds no rows to check the merge on")
    lm = family.load(base, adapter, {"device": "cpu"})
    exs = encode_examples(lm, rows, int(lm.max_length))
    ids, mask, _ = collate(exs, int(lm.pad_token_id), "cpu")
    with torch.no_grad():
        before = lm.model(input_ids=ids, attention_mask=mask).logits
        merged = lm.model.merge_and_unload()
        merged.eval()
        after = merged(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    diff = float((before - after).abs()[keep].max())
    agree = float((before.argmax(-1) == after.argmax(-1))[keep].float().mean())
    ctx.log(f"merge: largest logit difference {diff:.2e} over {len(rows)} prompts; greedy tokens agree {agree:.4f}")
    if diff > opts.atol:
        raise FactoryError(f"stages.{ctx.stage}.options.atol: the merged model's logits differ by {diff:.2e} "
                           f"(> {opts.atol:g}) from base + adapter")
    out = Path(ctx.out) / "model"
    merged.save_pretrained(str(out), safe_serialization=True)
    lm.tokenizer.save_pretrained(str(out))
    if (base / "base.json").is_file():
        shutil.copyfile(base / "base.json", out / "base.json")
    scores: dict[str, Any] = {}
    if suites:
        mlm = family.load(out, None, {"device": "cpu"})
        data = {"heldout": read_rows(ctx.inputs["rows"])}
        for suite in suites:
            rows_for = data.get(suite.needs) or []
            result = run_suite(suite, mlm, rows_for, {"batch_size": 64, "max_new_tokens": 96}, "merged", Path(ctx.out))
            scores[suite.name] = {"status": result.status, "error": result.error,
                                  **{k: v.value for k, v in result.scores.items()}}
    summary = {"max_abs_logit_diff": diff, "greedy_agreement": agree, "rows": len(rows), "atol": opts.atol,
               "suites": scores, "model": "model/"}
    (Path(ctx.out) / "merge.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


@hookimpl
def register_stage_kinds(register):
    register(StageKind("merge-lora", build_merge, options=MergeOptions, inputs=("base", "adapter", "rows"),
                       description="fold a LoRA adapter into its base, check the logits, save and score the merged model"))
