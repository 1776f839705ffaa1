"""The `hf` model family: any local directory holding a transformers causal LM.

A recipe names the directory (relative to the project root, or absolute):

    base: {family: hf, model: models/Qwen2.5-0.5B-Instruct, options: {dtype: auto}}

The base stage copies nothing: it writes `base.json` with the model's tree
digest (weights, config, tokenizer, chat template), and loading verifies that
the directory still has that digest, so an edited checkpoint cannot pass for
the one a run was built on. Everything is offline (no hub calls), and remote
code runs only when the recipe sets `trust_remote_code: true`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from factory.errors import FactoryError
from factory.hookspecs import hookimpl
from factory.interfaces import LoadedModel, TrainDefaultsContext

__version__ = "1.0"

METHODS = ("sft-lora", "dpo-lora")
PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


class HFBaseOptions(BaseModel):
    """Options of an `hf` base (recipe: base.options)."""

    model_config = ConfigDict(extra="forbid")

    trust_remote_code: bool = Field(False, description="run Python code shipped with the checkpoint")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto: bfloat16 on CUDA, float32 on CPU")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    chat_template: bool | None = Field(
        None, description="render prompts with the tokenizer's chat template; null: when it has one")
    template: str = Field(PLAIN_TEMPLATE, description="plain prompt template (used without a chat template); must hold {prompt}")
    system_prompt: str | None = Field(None, description="system message for chat templates")
    max_length: int = Field(2048, ge=16, description="longest sequence used (capped by the model's positions)")


def parse_options(options: dict[str, Any] | None) -> HFBaseOptions:
    from factory import options as opt

    opts = opt.validate(HFBaseOptions, options, "base.options")
    if "{prompt}" not in opts.template:
        raise FactoryError("base.options.template: must contain {prompt}")
    return opts


def cuda_present() -> bool:
    """Whether a CUDA device is there, without importing torch (cheap enough for planning)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


def resolve_device_dtype(device: str, dtype: str) -> tuple[str, str]:
    if device == "auto":
        device = "cuda" if cuda_present() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return device, dtype


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _model_dir(model: str, root: Path) -> Path:
    p = Path(model).expanduser()
    return p if p.is_absolute() else Path(root) / p


class HFFamily:
    """Model family `hf`: a local transformers checkpoint, trained with the shared SFT-LoRA trainer."""

    name = "hf"
    version = __version__

    def resolve_base(self, spec: dict[str, Any], root: Path) -> dict[str, Any]:
        from factory import hashing

        model = str(spec.get("model") or "")
        if not model:
            raise FactoryError("base.model: the hf family needs a local model directory")
        path = _model_dir(model, root)
        if not (path / "config.json").is_file():
            raise FactoryError(f"base.model: {path} is not a transformers model directory (no config.json); "
                               "the hf family loads local directories only, never the hub")
        opts = parse_options(spec.get("options"))
        device, dtype = resolve_device_dtype(opts.device, opts.dtype)
        return {
            "model": model,
            "path": str(path.resolve()),
            "digest": hashing.digest_tree(path),
            "trust_remote_code": opts.trust_remote_code,
            "dtype": dtype,
            "device": device,
            "options": opts.model_dump(),
        }

    def build_base(self, ctx: Any) -> None:
        base = ctx.config.get("base", ctx.config)
        meta = {k: base[k] for k in ("model", "digest", "trust_remote_code", "dtype", "options")}
        # The absolute path only for an absolute model: a project moved elsewhere keeps its base.json,
        # so nothing downstream rebuilds; load() finds relative models again and checks the digest.
        if Path(base["model"]).expanduser().is_absolute():
            meta["path"] = base["path"]
        meta["family"] = self.name
        (Path(ctx.out) / "base.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    def default_train_params(self, ctx: TrainDefaultsContext) -> dict[str, Any]:
        if ctx.method not in METHODS:
            raise self._unknown_method(ctx.method)
        gpu = ctx.device.startswith("cuda")
        batch = 16 if gpu else 8
        if ctx.method == "dpo-lora":
            steps = max(50, min(1000, -(-max(ctx.train_rows, 1) // batch)))  # one pass over the pairs
            return {"steps": steps, "lr": 5e-5, "batch_size": batch, "micro_batch_size": 4 if gpu else 2,
                    "beta": 0.1, "warmup_steps": max(1, steps // 20), **_threads(ctx)}
        # About two epochs, bounded: small sets still get enough updates, big ones do not run for days.
        steps = max(100, min(2000, -(-2 * max(ctx.train_rows, 1) // batch)))
        return {
            "steps": steps,
            "lr": 2e-4,
            "batch_size": batch,
            "micro_batch_size": 8 if gpu else 4,
            "warmup_steps": max(1, steps // 20),
            "eval_every": max(50, steps // 10),
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "auto"},
            **_threads(ctx),
        }

    def trainer(self, method: str) -> Callable[[Any], None]:
        if method not in METHODS:
            raise self._unknown_method(method)

        if method == "dpo-lora":
            from factory.ml.dpo import trainer_for as dpo_trainer

            return dpo_trainer(self)
        from factory.ml.sft import trainer_for  # the engine's shared LoRA trainer (no torch at import)

        return trainer_for(self)

    def train_options(self, method: str) -> Any:
        """The pydantic model of a method's settings (checked at plan time)."""
        if method not in METHODS:
            raise self._unknown_method(method)
        if method == "dpo-lora":
            from factory.ml.dpo import DPOParams

            return DPOParams
        from factory.ml.sft import SFTParams

        return SFTParams

    def load(self, base_dir: Path, adapter_dir: Path | None, settings: dict[str, Any]) -> LoadedModel:
        _offline()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base_dir = Path(base_dir)
        meta_path = base_dir / "base.json"
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise FactoryError(f"{meta_path}: missing; the hf base stage writes it") from None
        opts = parse_options(meta.get("options"))
        path = self._locate(meta, base_dir, settings)
        trc = bool(meta.get("trust_remote_code"))
        device, dtype = resolve_device_dtype(str(settings.get("device") or opts.device), meta.get("dtype", "auto"))
        if device.startswith("cuda") and dtype == "float32" and opts.dtype == "auto":
            dtype = "bfloat16"
        if device == "cpu" and opts.dtype == "auto":
            dtype = "float32"  # a base resolved on a GPU machine, loaded on a CPU one

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trc)
        model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trc, dtype=getattr(torch, dtype)
        )
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=bool(settings.get("train")))
        model.to(device)
        model.train(bool(settings.get("train")))

        eos = tok.eos_token_id
        if eos is None:
            raise FactoryError(f"{path}: the tokenizer has no EOS token; the trainer needs one to end answers")
        use_chat = opts.chat_template if opts.chat_template is not None else bool(getattr(tok, "chat_template", None))
        if use_chat and not getattr(tok, "chat_template", None):
            raise FactoryError(f"base.options.chat_template: {path} has no chat template")
        format_prompt = _chat_formatter(tok, opts.system_prompt) if use_chat else _plain_formatter(opts.template)
        stops = _generation_eos(model) - {int(eos)}
        positions = _positions(model.config)
        return LoadedModel(
            model=model, tokenizer=tok, format_prompt=format_prompt, eos_token_id=int(eos),
            pad_token_id=int(tok.pad_token_id if tok.pad_token_id is not None else eos), device=device,
            max_length=min(opts.max_length, positions) if positions else opts.max_length,
            info={
                "family": self.name, "base": meta.get("model"), "path": str(path), "dtype": dtype,
                "chat_template": use_chat, "stop_token_ids": sorted(stops),
                # A chat template writes its own BOS (or none): adding one would double it.
                **({"add_bos": False} if use_chat else {}),
            },
        )

    def _locate(self, meta: dict[str, Any], base_dir: Path, settings: dict[str, Any]) -> Path:
        """The model directory with the digest recorded at build time, or a FactoryError."""
        from factory import hashing

        model = meta["model"]
        if meta.get("path"):
            candidates = [Path(meta["path"])]
        else:
            roots = [os.environ.get("FACTORY_ROOT"), settings.get("root"), os.getcwd(), *base_dir.resolve().parents]
            candidates = [Path(r) / model for r in roots if r]
        existing = [c for c in candidates if (c / "config.json").is_file()]
        if not existing:
            raise FactoryError(f"base.model: {model} not found (looked in {', '.join(str(c) for c in candidates[:3])}, ...)")
        if settings.get("verify", True) is False:
            return existing[0]
        for c in existing:
            got = hashing.digest_tree(c)
            if got == meta["digest"]:
                return c
        raise FactoryError(
            f"base.model: {existing[0]} changed since the base was built (digest {got[:12]}, built from "
            f"{meta['digest'][:12]}); rebuild the recipe so the base stage records the new weights"
        )

    def _unknown_method(self, method: str) -> FactoryError:
        return FactoryError(f"train.method: the hf family has no method {method!r}; its methods: {', '.join(METHODS)}")


def _plain_formatter(template: str) -> Callable[[str], str]:
    def format_prompt(prompt: str) -> str:
        return template.replace("{prompt}", prompt)

    return format_prompt


def _chat_formatter(tok: Any, system: str | None) -> Callable[[str], str]:
    def format_prompt(prompt: str) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return format_prompt


def _generation_eos(model: Any) -> set[int]:
    """EOS ids the checkpoint's generation config lists (chat models often have several)."""
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _positions(config: Any) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


@hookimpl
def register_model_families(register):
    register(HFFamily())


def _threads(ctx: TrainDefaultsContext) -> dict[str, Any]:
    """An explicit CPU thread count, so the train key names it: another count gives other bytes."""
    from factory.ml.threads import default_threads

    n = default_threads(ctx.device)
    return {} if n is None else {"threads": n}
