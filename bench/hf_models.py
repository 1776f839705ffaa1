"""Randomly initialised local checkpoints with real models' shapes, and data of a chosen length, for the hf benches.

No hub is reachable from the machines these benches run on, and random weights cost
the same per token as trained ones, so a model with a real checkpoint's shape is
built here from its config numbers (copied from the published config.json files)
and saved as a local directory that the `hf` family, TRL and transformers all load.
The tokenizer is the toy byte-level BPE of `factory.ml.toymodels`: its ids use the
bottom of the vocabulary, which changes nothing about the cost of the embedding or
of the output head over the full vocabulary.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

# Qwen2.5 configs (Qwen2ForCausalLM). Weights do not change throughput; these numbers do.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": None, "max_position_embeddings": 1024},
    # tiny's layers with the real 151,936-token vocabulary: the output head and the loss dominate,
    # as they do for the memory of a 0.5B model's training step.
    "tiny-152k": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 1024},
    "qwen2.5-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "max_position_embeddings": 32768},
    "qwen2.5-1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                     "max_position_embeddings": 32768},
}
COMMON = {"rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "hidden_act": "silu",
          "initializer_range": 0.02, "use_sliding_window": False, "attention_dropout": 0.0}


def build_model(dest: Path, shape: str, device: str = "cpu", seed: int = 0) -> Path:
    """Save a random Qwen2-architecture model of `shape` with the toy tokenizer into `dest`.

    On CUDA the weights are created on the GPU in bf16 (fast, and the dtype the hf family
    trains in there); on CPU in fp32. An existing directory built with the same shape is reused.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from factory.ml.toymodels import build_tokenizer

    dest = Path(dest)
    stamp = dest / "bench-shape.json"
    want = {"shape": shape, "device": device.split(":")[0], "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    dims = dict(SHAPES[shape])
    dims["vocab_size"] = dims["vocab_size"] or len(tok)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    cfg = Qwen2Config(**dims, **COMMON, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, dtype=dtype)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    model.to(dtype)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    stamp.write_text(json.dumps(want))
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return dest


def parameter_count(dest: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(dest).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                total += _numel(st.get_slice(k).get_shape())
    return total


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


WORDS = ["run", "easy", "pace", "km", "tempo", "rest", "hill", "long", "mon", "tue", "wed", "thu", "fri",
         "sat", "sun", "plan", "week", "goal", "race", "walk", "swim", "bike", "yoga", "base", "build"]


def tokenizer_lm(model_dir: Path) -> Any:
    """A LoadedModel with the tokenizer and the hf family's plain prompt template, and no weights:
    enough for the shared encoding (factory.ml.text), without loading the model in this process."""
    from transformers import AutoTokenizer

    from factory.interfaces import LoadedModel
    from factory_plugins.hf import PLAIN_TEMPLATE, _plain_formatter

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    return LoadedModel(model=None, tokenizer=tok, format_prompt=_plain_formatter(PLAIN_TEMPLATE),
                       eos_token_id=int(tok.eos_token_id), pad_token_id=int(tok.pad_token_id), device="cpu",
                       max_length=1 << 20)


def make_rows(lm: Any, n: int, seq_len: int, seed: int, prefix: str = "r") -> list[dict[str, str]]:
    """`n` copy-task rows whose encoded length (template, BOS, answer, EOS) lies in [seq_len/2, seq_len].

    The prompt is a list of words and an instruction to repeat its last few; the answer repeats
    them, so the loss falls as the adapter learns the copy.
    """
    from factory.ml.text import encode_examples

    rnd = random.Random(seed)
    targets = [rnd.randint(max(8, seq_len // 2), seq_len) for _ in range(n)]
    words = [[rnd.choice(WORDS) for _ in range(max(4, t))] for t in targets]  # more than enough words
    keep = [max(2, len(w) // 6) for w in words]
    counts = [max(4, t // 3) for t in targets]  # a first guess of words per row, corrected below

    def row(i: int) -> dict[str, str]:
        w = words[i][: counts[i]]
        k = min(keep[i], max(1, len(w) // 4))
        return {"id": f"{prefix}{i}", "prompt": " ".join(w) + f"\nrepeat the last {k} words",
                "answer": " ".join(w[-k:])}

    rows = [row(i) for i in range(n)]
    for _ in range(12):
        lengths = [len(e.ids) for e in encode_examples(lm, rows, 1 << 20)]
        off = [i for i in range(n) if not (targets[i] * 0.9 <= lengths[i] <= min(seq_len, targets[i] * 1.1))]
        if not off:
            break
        for i in off:
            counts[i] = max(2, min(len(words[i]), int(counts[i] * targets[i] / max(1, lengths[i]))))
            rows[i] = row(i)
    rows = [r for r, e in zip(rows, encode_examples(lm, rows, 1 << 20)) if len(e.ids) <= seq_len]
    if len(rows) < n // 2:
        raise SystemExit(f"could not make rows of {seq_len} tokens or fewer")
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process so far: CUDA allocations on a GPU, resident set size on CPU."""
    import resource

    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    import os

    return f"{cpu_name()} ({os.cpu_count()} cores visible)"
