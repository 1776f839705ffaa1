"""The SFT-LoRA trainer every model family can use: `train_sft_lora(ctx, lm)`.

Read top to bottom, one training run is:

1. parameters: `ctx.config` (the recipe's train section, family defaults filled
   in) checked against `SFTParams`; a typo fails with the field's name;
2. data: train rows, held-out rows and breadth replay rows encoded once with
   the shared encoding (`factory.ml.text`): loss on answer tokens and EOS only;
3. the pre-check ("parity gate"): before any optimizer step every row is
   checked for loss-carrying tokens, a trained EOS and an uncut answer; a few
   renderings show which tokens carry loss; the counts go to train.log and
   train.json, and a failure stops the stage with one clear line;
4. the loop: a stateless batch schedule (step -> rows) mixes in `replay` of
   breadth rows, AdamW with warm-up and cosine decay, gradient clipping; each
   forward pass pads its rows to the longest, or with `packing` puts several
   rows into one (`factory.ml.packing`: the same losses, no padding); a rich
   progress bar; one train.log line per step;
5. checkpoints in `ctx.work`: the adapter (`last`, and `best` by held-out
   loss), optimizer and scheduler state, RNG state, all as safetensors + JSON.
   A killed build run again resumes from the last checkpoint and reaches the
   same adapter, byte for byte, as a run that was never interrupted;
6. outputs in `ctx.out`: adapter/ (loadable with `peft.PeftModel.from_pretrained`),
   train.log, train.json.

`processes: N > 1` relaunches the same function under torchrun (DDP; gloo on
CPU, NCCL on CUDA) through `factory.ml.sft_worker`.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from factory.errors import FactoryError
from factory.records import read_rows
from factory.ml.text import Example, encode_examples

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


# --- parameters ------------------------------------------------------------------


class LoraParams(BaseModel):
    """LoRA settings (recipe: train.options.lora)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: float = Field(32, gt=0, description="scaling numerator: updates are scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | str | None = Field(
        "auto", alias="targets",
        description="'auto' (per architecture, see factory.ml.lora), 'all-linear', or module names",
    )


class SFTParams(BaseModel):
    """Resolved parameters of the sft-lora trainer (recipe: train.*, train.options.*)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(300, ge=1, description="optimizer steps")
    lr: float = Field(2e-4, gt=0, description="peak learning rate (AdamW)")
    batch_size: int = Field(16, ge=1, description="rows per optimizer step, over all processes")
    micro_batch_size: int | None = Field(None, ge=1, description="rows per forward pass (gradient accumulation); default: the whole batch")
    packing: bool = Field(
        False, description="pack a forward pass's rows into rows of pack_width tokens with a block-diagonal mask "
        "instead of padding each to the longest (models that take a 4D mask and position ids, such as Llama); "
        "the same losses on fewer positions")
    pack_width: int = Field(128, ge=8, description="tokens per packed row (a longer example gets a row of its own)")
    max_len: int | None = Field(None, ge=8, description="longest example in tokens; default: the model's context")
    replay: float = Field(0.0, ge=0, le=1, description="fraction of each batch drawn from breadth rows")
    seed: int = Field(0, description="seed of adapter init, data order and dropout")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final learning rate as a fraction of the peak (cosine)")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm; null turns clipping off")
    eval_every: int = Field(0, ge=0, description="held-out loss every N steps (0: only at the end)")
    eval_rows: int = Field(256, ge=0, description="held-out rows used for the held-out loss")
    checkpoint_every: int = Field(50, ge=1, description="steps between resumable checkpoints")
    precheck_samples: int = Field(3, ge=0, description="renderings shown by the pre-check")
    threads: int | None = Field(
        None, ge=1, le=256,
        description="CPU threads over all processes (part of the key: another count gives other bytes); default 1")
    lora: LoraParams = Field(default_factory=LoraParams)
    method: str = "sft-lora"
    processes: int = Field(1, ge=1, description="training processes (torchrun DDP when > 1)")
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    family: str | None = None


def parse_params(config: dict[str, Any]) -> SFTParams:
    from factory import options

    return options.validate(SFTParams, config, "train")


# --- data ----------------------------------------------------------------------


def render_loss(lm: Any, ex: Example) -> str:
    """The example's text with loss-carrying spans in «guillemets»: what the model is trained to say."""
    out, span, inside = [], [], False
    for tok, m in zip(ex.ids, ex.loss_mask):
        if m != inside:
            text = lm.tokenizer.decode(span, skip_special_tokens=False)
            out.append(f"«{text}»" if inside else text)
            span, inside = [], m
        span.append(tok)
    text = lm.tokenizer.decode(span, skip_special_tokens=False)
    out.append(f"«{text}»" if inside else text)
    return "".join(out)


def precheck(lm: Any, sets: dict[str, tuple[list[dict], list[Example]]], max_len: int, samples: int,
             where: dict[str, str]) -> dict[str, Any]:
    """The parity gate: every train and replay row must train an uncut answer ending in EOS.

    Returns the counts (and a few renderings); raises FactoryError naming the first bad row.
    """
    eos = {int(lm.eos_token_id)}
    report: dict[str, Any] = {"max_len": max_len, "eos_token_id": int(lm.eos_token_id)}
    for name, (rows, exs) in sets.items():
        no_loss = [i for i, e in enumerate(exs) if e.n_loss == 0]
        no_eos = [i for i, e in enumerate(exs) if e.n_loss and not e.ends_with(eos)]
        cut = [i for i, e in enumerate(exs) if e.truncated]
        report[name] = {
            "rows": len(exs),
            "prompt_tokens": sum(len(e.ids) - e.n_loss for e in exs),
            "loss_tokens": sum(e.n_loss for e in exs),
            "max_tokens": max((len(e.ids) for e in exs), default=0),
            "no_loss_rows": len(no_loss),
            "no_eos_rows": len(no_eos),
            "truncated_rows": len(cut),
        }
        # A cut row also lacks EOS (and maybe every answer token): report the cause, the cut, first.
        for bad, what, fix in (
            (cut, f"have their answer cut at max_len {max_len} tokens", "raise train.options.max_len or drop long rows in the dataset stage"),
            (no_loss, "have no loss-carrying tokens", "the prompt template or rendering masks the whole answer"),
            (no_eos, "do not end their trained answer with EOS", "the rendering drops or replaces the EOS token"),
        ):
            if bad:
                first = rows[bad[0]].get("id", bad[0])
                raise FactoryError(
                    f"{where[name]}: pre-check failed: {len(bad)} of {len(exs)} rows {what} "
                    f"(first: row {first!r}: {render_loss(lm, exs[bad[0]])!r}); {fix}"
                )
    train_exs = sets["train"][1]
    report["samples"] = [render_loss(lm, e) for e in train_exs[:samples]]
    return report


class Schedule:
    """Which rows make up step s's batch, as a pure function of s (so resuming needs no data state).

    Each source is read as a sequence of seeded permutations (one per epoch); replay rows
    are spread evenly, `floor((s+1)·B·replay) − floor(s·B·replay)` of them in step s.
    """

    def __init__(self, n_train: int, n_replay: int, batch_size: int, replay: float, seed: int):
        self.n = {"train": n_train, "replay": n_replay}
        self.b, self.r, self.seed = batch_size, replay if n_replay else 0.0, seed
        self._perms: dict[tuple[str, int], list[int]] = {}

    def _perm(self, src: str, epoch: int) -> list[int]:
        key = (src, epoch)
        if key not in self._perms:
            p = list(range(self.n[src]))
            random.Random(f"{self.seed}:{src}:{epoch}").shuffle(p)
            self._perms = {k: v for k, v in self._perms.items() if k[0] != src or k[1] >= epoch - 1}
            self._perms[key] = p
        return self._perms[key]

    def _take(self, src: str, start: int, stop: int) -> list[tuple[str, int]]:
        n = self.n[src]
        return [(src, self._perm(src, p // n)[p % n]) for p in range(start, stop)]

    def replay_before(self, step: int) -> int:
        return math.floor(step * self.b * self.r + 1e-9)

    def batch(self, step: int) -> list[tuple[str, int]]:
        r0, r1 = self.replay_before(step), self.replay_before(step + 1)
        t0, t1 = step * self.b - r0, (step + 1) * self.b - r1
        return self._take("train", t0, t1) + self._take("replay", r0, r1)


def collate(exs: list[Example], pad_id: int, device: Any):
    """Right-padded ids, attention mask and labels (-100 where no loss)."""
    import torch

    # Padded Python lists and one tensor each: three small tensors and a where() per row cost
    # about 1 ms a step at batch 8, a few percent of a small model's step.
    width = max(len(e.ids) for e in exs)
    ids = torch.tensor([e.ids + [pad_id] * (width - len(e.ids)) for e in exs], dtype=torch.long)
    mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in exs], dtype=torch.long)
    labels = torch.tensor([[t if m else -100 for t, m in zip(e.ids, e.loss_mask)] + [-100] * (width - len(e.ids))
                           for e in exs], dtype=torch.long)
    return ids.to(device), mask.to(device), labels.to(device)


def token_nll_sum(model: Any, ids: Any, mask: Any, labels: Any):
    """Sum of next-token negative log-likelihoods over labelled positions.

    Only the positions that carry loss are upcast and scored: the float32 copy and the saved
    log-softmax are (loss tokens x vocabulary) instead of (every position x vocabulary), which
    for a 150k-token vocabulary is most of a training step's memory beyond the weights.
    """
    import torch

    logits = model(input_ids=ids, attention_mask=mask).logits
    target = labels[:, 1:]
    keep = target != -100
    picked = logits[:, :-1][keep]
    del logits  # the full logits are not needed for the backward pass of the selection
    return torch.nn.functional.cross_entropy(picked.float(), target[keep], reduction="sum")


def packed_nll_sum(model: Any, exs: list[Example], pad_id: int, width: int, device: Any):
    """`token_nll_sum` over the same examples packed several to a row (factory.ml.packing)."""
    import torch

    from factory.ml.packing import collate_packed

    b = collate_packed(exs, pad_id, width)
    logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device),
                   position_ids=b["position_ids"].to(device)).logits
    target = b["labels"][:, 1:].to(device)
    keep = target != -100
    picked = logits[:, :-1][keep]  # as in token_nll_sum: only loss positions are upcast and scored
    del logits
    return torch.nn.functional.cross_entropy(picked.float(), target[keep], reduction="sum")


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay from 1 to `min_ratio` at the last step."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# --- checkpoints ---------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_adapter(model: Any, dest: Path) -> None:
    """adapter_model.safetensors + adapter_config.json, the layout PeftModel.from_pretrained reads.

    Written by hand rather than with save_pretrained: peft lists target modules from a
    set, in an order that changes between processes, and adds a model card.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    inner = _unwrap(model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(inner).items()}
    save_file(dict(sorted(state.items())), str(dest / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    cfg = inner.peft_config["default"].to_dict()
    cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    cfg["base_model_name_or_path"] = None  # the base is named by its digest in train.json, not by a path
    (dest / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")


def adapter_refs(out: Path) -> list[Any]:
    """The FileRefs (path, digest, size) of the adapter `save_adapter` wrote to out/adapter, for train.json."""
    from factory import hashing
    from factory.records import FileRef

    return [FileRef(path=f"adapter/{n}", digest=hashing.digest_file(out / "adapter" / n),
                    size=(out / "adapter" / n).stat().st_size) for n in (ADAPTER_WEIGHTS, ADAPTER_CONFIG)]


def load_adapter_weights(model: Any, src: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(_unwrap(model), load_file(str(src / ADAPTER_WEIGHTS)))


def _unwrap(model: Any) -> Any:
    return model.module if hasattr(model, "module") and not hasattr(model, "peft_config") else model


def _optimizer_to_files(opt: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if hasattr(val, "detach"):
                tensors[f"{idx}.{name}"] = val.detach().to("cpu").contiguous()
            else:
                scalars[f"{idx}.{name}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(opt: Any, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    for key, val in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_tensors() -> dict[str, Any]:
    import torch

    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


def _set_rng(tensors: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


CHECKPOINT_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, "optimizer.safetensors", "rng.safetensors", "state.json")


def _whole_safetensors(path: Path) -> bool:
    """The file holds at least the header it announces (a kill mid-write leaves less)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and 8 + int.from_bytes(head, "little") <= size


def _valid_checkpoint(ckdir: Path, pointer: str) -> str | None:
    """The directory a pointer file names, when it and every file of its checkpoint are whole."""
    try:
        ptr = json.loads((ckdir / pointer).read_text())
        name = ptr["dir"]
        if not isinstance(name, str) or not name.startswith("step-") or "/" in name or "\\" in name:
            return None
        d = ckdir / name
        state = json.loads((d / "state.json").read_text())
        if state.get("step") != ptr.get("step"):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not all((d / f).is_file() for f in CHECKPOINT_FILES):
        return None
    if not all(_whole_safetensors(d / f) for f in CHECKPOINT_FILES if f.endswith(".safetensors")):
        return None
    return name


def clean_work(work: Path) -> list[str]:
    """Remove what a dead build left in its work directory that is not a valid checkpoint.

    Kept: the checkpoint `last.json` points at (and `best.json`'s, when `last` is valid), their
    pointers, and train.log (cut back to the checkpoint's step when training resumes). Everything
    else goes: half-written checkpoint directories, a launch spec, files from a killed worker.
    Returns the names removed, relative to `work`.
    """
    work = Path(work)
    if not work.is_dir():
        return []
    ckdir = work / "checkpoints"
    keep: set[str] = set()
    last = _valid_checkpoint(ckdir, "last.json") if ckdir.is_dir() else None
    if last is not None:
        keep = {"last.json", last}
        best = _valid_checkpoint(ckdir, "best.json")
        if best is not None:
            keep |= {"best.json", best}
    removed = []

    def drop(p: Path) -> None:
        removed.append(p.relative_to(work).as_posix())
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    for entry in sorted(work.iterdir()):
        if entry.name == "checkpoints" and entry.is_dir() and not entry.is_symlink():
            for c in sorted(entry.iterdir()):
                if c.name not in keep:
                    drop(c)
        elif entry.name == "train.log" and last is not None and entry.is_file():
            continue
        else:
            drop(entry)
    return removed


class Checkpoints:
    """`work/checkpoints/step-N/` directories, with `last.json` and `best.json` pointing at them.

    A pointer is replaced atomically only after its directory is complete, so a kill at
    any moment leaves the previous checkpoint usable.
    """

    def __init__(self, work: Path):
        self.dir = work / "checkpoints"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _pointer(self, name: str) -> dict[str, Any] | None:
        p = self.dir / f"{name}.json"
        if not p.exists():
            return None
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError:
            return None
        return data if (self.dir / data["dir"]).is_dir() else None

    def last(self) -> dict[str, Any] | None:
        return self._pointer("last")

    def best(self) -> dict[str, Any] | None:
        return self._pointer("best")

    def save(self, model: Any, opt: Any, sched: Any, state: dict[str, Any], best: bool) -> None:
        from safetensors.torch import save_file

        step = state["step"]
        name = f"step-{step:08d}"
        tmp = self.dir / f".{name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_adapter(model, tmp)
        tensors, meta = _optimizer_to_files(opt)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
        full = {**state, "optimizer": meta, "scheduler": sched.state_dict()}
        (tmp / "state.json").write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
        final = self.dir / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if best:
            _atomic_write(self.dir / "best.json", json.dumps({"dir": name, "step": step}))
        _atomic_write(self.dir / "last.json", json.dumps({"dir": name, "step": step}))
        keep = {d["dir"] for d in (self.last(), self.best()) if d}
        for old in self.dir.glob("step-*"):
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, model: Any, opt: Any, sched: Any) -> dict[str, Any]:
        from safetensors.torch import load_file

        ptr = self.last()
        assert ptr is not None
        src = self.dir / ptr["dir"]
        state = json.loads((src / "state.json").read_text())
        load_adapter_weights(model, src)
        _optimizer_from_files(opt, load_file(str(src / "optimizer.safetensors")), state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        _set_rng(load_file(str(src / "rng.safetensors")))
        return state


# --- the trainer ---------------------------------------------------------------


def trainer_for(family: Any) -> Any:
    """The `sft-lora` train-stage build function for a family: load its base for training, then train.

    Under torchrun (processes > 1) every worker loads its own copy, so nothing is loaded here.
    """

    def train_sft_lora_stage(ctx: Any) -> None:
        lm = None
        if int(ctx.config.get("processes", 1)) <= 1:
            device = str(ctx.config.get("device") or "auto")
            lm = family.load(Path(ctx.inputs["base"]), init_adapter(ctx), {"device": device, "train": True})
        train_sft_lora(ctx, lm)

    return train_sft_lora_stage


def init_adapter(ctx: Any) -> Path | None:
    """The adapter a later training step continues: the previous step's (input `init`), or None."""
    init = ctx.inputs.get("init")
    return Path(init) / "adapter" if init is not None else None


def train_sft_lora(ctx: Any, lm: Any) -> None:
    """Train a LoRA adapter on ctx.inputs["train"] (+ replay) and write adapter/, train.log, train.json."""
    params = parse_params(ctx.config)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if params.processes > 1 and world == 1:
        _launch_torchrun(ctx, params)
        return
    _train(ctx, lm, params)


def _dist_setup(params: SFTParams, device: Any) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if str(device).startswith("cuda") else "gloo")
    if params.batch_size < world:
        raise FactoryError(f"train.batch_size: {params.batch_size} rows cannot be split over {world} processes")
    return dist.get_rank(), world


def _train(ctx: Any, lm: Any, params: SFTParams) -> None:
    import warnings

    import torch

    from factory.ml.lora import resolve_targets
    from factory.ml.threads import keep_freed_memory
    # peft calls a transformers accessor that warns on every use; it is not ours to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    t_start = time.perf_counter()
    model = lm.model
    device = next(model.parameters()).device
    rank, world = _dist_setup(params, device)
    main = rank == 0
    log = ctx.log if main else (lambda *_: None)
    # Exactly the configured count, never the cores free at the moment: another thread count splits
    # the sums of a matrix product differently and the adapter comes out bitwise different, so the
    # count is in the key (the families put an explicit one in their defaults).
    threads = max(1, (params.threads or 1) // world)
    if device.type == "cpu":
        torch.set_num_threads(threads)
        keep_freed_memory()

    # -- data and the pre-check, before anything trains
    # Never longer than the model's positions: a larger max_len would index past them.
    max_len = min(int(params.max_len or lm.max_length), int(lm.max_length))
    train_rows = read_rows(ctx.inputs.get("train"))
    heldout_rows = read_rows(ctx.inputs.get("heldout"))[: params.eval_rows]
    replay_rows = read_rows(ctx.inputs.get("replay")) if params.replay > 0 else []
    if not train_rows:
        raise FactoryError(f"{ctx.inputs.get('train')}: no training rows")
    if params.replay > 0 and not replay_rows:
        raise FactoryError("train.replay: replay asked for, but the breadth corpus has no training rows")
    train_ex = encode_examples(lm, train_rows, max_len)
    replay_ex = encode_examples(lm, replay_rows, max_len)
    heldout_ex = [e for e in encode_examples(lm, heldout_rows, max_len) if e.n_loss]
    where = {"train": str(ctx.inputs.get("train")), "replay": str(ctx.inputs.get("replay"))}
    check = precheck(lm, {"train": (train_rows, train_ex), "replay": (replay_rows, replay_ex)},
                     max_len, params.precheck_samples, where)
    log(f"pre-check: {check['train']['rows']} train rows, {check['train']['loss_tokens']} loss tokens, "
        f"all end in EOS, none cut at {max_len}; replay rows {check['replay']['rows']}")
    for s in check["samples"]:
        log(f"  loss on «…»: {s!r}")

    # -- model, optimizer, schedule
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(params.seed)
    targets = resolve_targets(model, params.lora.target_modules)
    # GPT-2 style Conv1D layers store their weight transposed; peft must be told.
    conv1d = any(type(m).__name__ == "Conv1D" and (n in targets or n.rsplit(".", 1)[-1] in targets)
                 for n, m in model.named_modules())
    lcfg = LoraConfig(
        r=params.lora.r, lora_alpha=params.lora.alpha, lora_dropout=params.lora.dropout,
        target_modules=targets, task_type="CAUSAL_LM", fan_in_fan_out=conv1d,
    )
    peft_model = model if hasattr(model, "peft_config") else get_peft_model(model, lcfg)
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, params.steps, params.warmup_steps, params.min_lr_ratio)
    )
    train_model = peft_model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(peft_model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = _autocast(params, device)
    schedule = Schedule(len(train_ex), len(replay_ex), params.batch_size, params.replay, params.seed)
    pools = {"train": train_ex, "replay": replay_ex}

    # -- resume
    work = Path(ctx.work) if ctx.work is not None else Path(tempfile.mkdtemp(prefix="sft-"))
    work.mkdir(parents=True, exist_ok=True)
    if world == 1:  # under torchrun the launcher cleaned it, before any worker started
        _log_cleaned(log, clean_work(work))
    ckpts = Checkpoints(work)
    log_path = work / "train.log"
    start_step, best_loss, best_step, elapsed0, resumed = 0, math.inf, None, 0.0, None
    if ckpts.last():
        st = ckpts.restore(peft_model, opt, sched)
        start_step, elapsed0, resumed = st["step"], st["elapsed_s"], st["step"]
        best_loss = st["best_heldout_loss"] if st["best_heldout_loss"] is not None else math.inf
        best_step = st["best_step"]
        log(f"resuming from the checkpoint at step {start_step}")
    if main:
        _truncate_log(log_path, start_step)
    logf = open(log_path, "a") if main else None

    def heldout_loss() -> float | None:
        if not heldout_ex:
            return None
        peft_model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), autocast():
            mb = params.micro_batch_size or params.batch_size
            for i in range(0, len(heldout_ex), mb):
                chunk = heldout_ex[i : i + mb]
                ids, mask, labels = collate(chunk, int(lm.pad_token_id), device)
                total += float(token_nll_sum(peft_model, ids, mask, labels))
                count += sum(e.n_loss for e in chunk)
        peft_model.train()
        return total / max(1, count)

    if start_step == 0 and main:
        h0 = heldout_loss()
        _write_line(logf, {"step": 0, "loss": h0 if h0 is not None else 0.0, "lr": 0.0, "heldout_loss": h0,
                           "precheck": {k: v for k, v in check.items() if k != "samples"}})

    # -- the loop
    mb = params.micro_batch_size or params.batch_size
    progress = _progress(main, params.steps, start_step)
    loss_value, tokens_total, t_loop = math.nan, 0, time.perf_counter()
    t_step = t_loop
    try:
        for step in range(start_step, params.steps):
            batch = [pools[src][i] for src, i in schedule.batch(step)]
            global_loss_tokens = sum(e.n_loss for e in batch)
            mine = batch[rank::world]
            chunks = [mine[i : i + mb] for i in range(0, len(mine), mb)]
            local_sum = torch.zeros((), device=device)
            for ci, chunk in enumerate(chunks):
                sync = ci == len(chunks) - 1 or world == 1
                ctxm = train_model.no_sync() if (world > 1 and not sync) else _null()
                with ctxm, autocast():
                    if params.packing:
                        nll = packed_nll_sum(train_model, chunk, int(lm.pad_token_id), params.pack_width, device)
                    else:
                        nll = token_nll_sum(train_model, *collate(chunk, int(lm.pad_token_id), device))
                    # DDP averages gradients over processes; scale so the result is the mean over all tokens.
                    (nll * world / max(1, global_loss_tokens)).backward()
                local_sum += nll.detach()
            if params.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, params.grad_clip)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(local_sum)
            loss_value = float(local_sum) / max(1, global_loss_tokens)
            n_tokens = sum(len(e.ids) for e in batch)
            now = time.perf_counter()
            tps = n_tokens / max(1e-9, now - t_step)
            tokens_total += n_tokens
            done = step + 1
            # train.log is an output: content only. Timings go to ctx.facts (the manifest and events).
            line: dict[str, Any] = {"step": done, "loss": loss_value, "lr": lr}
            elapsed = round(elapsed0 + now - t_loop, 3)
            is_eval = done == params.steps or (params.eval_every and done % params.eval_every == 0)
            is_ckpt = done % params.checkpoint_every == 0 or done == params.steps
            new_best = False
            if is_eval and main:
                h = heldout_loss()
                line["heldout_loss"] = h
                if h is not None and h < best_loss:
                    best_loss, best_step, new_best = h, done, True
            if main:
                _write_line(logf, line)
                if is_ckpt or new_best:
                    ckpts.save(peft_model, opt, sched, {
                        "step": done, "elapsed_s": elapsed,
                        "best_heldout_loss": None if math.isinf(best_loss) else best_loss, "best_step": best_step,
                    }, best=new_best or (ckpts.best() is None and not heldout_ex))
            if progress:
                progress.update(progress.task_ids[0], completed=done, loss=loss_value, tps=tps)
            t_step = time.perf_counter()  # eval and checkpoint time do not count against tokens/s
    finally:
        if progress:
            progress.stop()
        if logf:
            logf.close()

    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if not main:
        return

    # -- outputs
    from factory.records import TrainSummary, write_record

    out = Path(ctx.out)
    save_adapter(peft_model, out / "adapter")
    shutil.copyfile(log_path, out / "train.log")
    seconds = time.perf_counter() - t_start
    loop_s = elapsed0 + (time.perf_counter() - t_loop)
    total_tokens = sum(len(pools[s][i].ids) for st in range(params.steps) for s, i in schedule.batch(st))
    summary = TrainSummary(
        method=params.method, steps=params.steps, final_loss=loss_value if math.isfinite(loss_value) else 0.0,
        best_heldout_loss=None if math.isinf(best_loss) else best_loss, device=str(device), processes=world,
        threads=threads if device.type == "cpu" else None,
        peak_vram_gb=round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None,
        params=params.model_dump(mode="json"), precheck=check,
        adapter=adapter_refs(out),
        best_step=best_step,
        lora_targets=sorted(peft_model.peft_config["default"].target_modules),
        trainable_params=sum(p.numel() for p in trainable),
    )
    write_record(out / "train.json", summary)
    tokens_per_s = round(total_tokens / max(1e-9, loop_s), 1)
    facts = getattr(ctx, "facts", None)
    if facts is not None:
        facts.update({"seconds": round(seconds, 3), "loop_seconds": round(loop_s, 3),
                      "loop_steps": params.steps - start_step,
                      "tokens_per_s": tokens_per_s, "resumed_from_step": resumed})
    log(f"trained {params.steps} steps in {seconds:.1f} s: loss {summary.final_loss:.4f}, "
        f"held-out {summary.best_heldout_loss}, {tokens_per_s:.0f} tokens/s")


def _write_line(f: Any, line: dict[str, Any]) -> None:
    f.write(json.dumps(line, sort_keys=True) + "\n")
    f.flush()


def _truncate_log(path: Path, step: int) -> None:
    """Keep only lines up to the checkpoint we resume from (later ones will be written again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError):
            break  # a line torn by the kill
    _atomic_write(path, "".join(k + "\n" for k in keep))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _autocast(params: SFTParams, device: Any):
    import torch

    use_bf16 = params.precision == "bf16" or (
        params.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    if use_bf16:
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return _null


def _progress(main: bool, total: int, start: int):
    if not main or os.environ.get("FACTORY_PROGRESS", "1") == "0":
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("train"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=False,
    )
    progress.add_task("train", total=total, completed=start, loss=math.nan, tps=0.0)
    progress.start()
    return progress


# --- several processes -----------------------------------------------------------


def _log_cleaned(log: Any, removed: list[str]) -> None:
    if removed:
        shown = ", ".join(removed[:4]) + (f" and {len(removed) - 4} more" if len(removed) > 4 else "")
        log(f"removed what an earlier build left in the work directory: {shown}")


def die_with_parent(sig: int | None = None) -> None:
    """Ask Linux to send this process `sig` (SIGKILL by default) when its parent dies (prctl PDEATHSIG)."""
    import ctypes
    import signal

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig if sig is not None else signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def watch_builder(pid: int, interval_s: float = 1.0) -> None:
    """End this process as soon as the build process `pid` is gone (a thread; the parent-death
    signal alone does not reach a worker whose own parent, torchrun, outlives the build)."""
    import threading

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
            time.sleep(interval_s)

    threading.Thread(target=watch, name="factory-builder-watch", daemon=True).start()


def _launch_torchrun(ctx: Any, params: SFTParams) -> None:
    """Run this trainer in `processes` processes under torchrun and wait for them.

    The workers die with the build: torchrun gets a parent-death signal (SIGTERM, which it passes
    on to its workers), every worker gets one from torchrun and watches the build's pid itself
    (torchrun starts them in sessions of their own, so a kill of the build's process group does
    not reach them), and an interrupted wait here stops torchrun before re-raising.
    """
    import signal

    from factory.ml.threads import check_processes

    check_processes(params.processes, str(params.device))
    work = Path(ctx.work) if ctx.work is not None else Path(tempfile.mkdtemp(prefix="sft-"))
    work.mkdir(parents=True, exist_ok=True)
    _log_cleaned(ctx.log, clean_work(work))
    family = params.family or getattr(ctx.extra.get("family"), "name", None)
    loader = ctx.extra.get("loader")
    if not family and not loader:
        raise FactoryError("train.processes: cannot start several processes without knowing the model family")
    spec = {
        "config": ctx.config, "inputs": {k: str(v) for k, v in ctx.inputs.items()}, "out": str(ctx.out),
        "work": str(work), "root": str(ctx.root), "stage": ctx.stage, "kind": ctx.kind, "key": ctx.key,
        "input_digests": ctx.input_digests, "family": family, "loader": loader,
    }
    spec_path = work / "launch.json"
    spec_path.write_text(json.dumps(spec, indent=2, sort_keys=True))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={params.processes}",
           "--module", "factory.ml.sft_worker", str(spec_path)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["FACTORY_BUILDER_PID"] = str(os.getpid())
    ctx.log(f"launching {params.processes} training processes: {' '.join(cmd)}")
    proc = subprocess.Popen(cmd, env=env, preexec_fn=lambda: die_with_parent(signal.SIGTERM))
    try:
        returncode = proc.wait()
    except BaseException:
        proc.terminate()  # torchrun stops its workers on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if returncode != 0:
        raise FactoryError(f"train.processes: torchrun with {params.processes} processes failed (exit {returncode}); see the output above")
