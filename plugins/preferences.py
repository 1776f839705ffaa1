"""The `perturbed-pairs` dataset source: preference pairs made from a task's own rows.

For every row of a JSON-lines file of `{request|prompt, action|answer}` rows whose answer is
one JSON action (`{"action", "args"}`), the source yields `{id, prompt, chosen, rejected}`:
`chosen` is the row's own answer, `rejected` the same action with one near miss of the kind a
planner makes, chosen by a hash of the prompt so the same file always gives the same pairs:

- `day`: another day (monday -> tuesday, today -> tomorrow);
- `time`: the time an hour later (07:00 -> 08:00), or am and pm swapped;
- `action`: another action name of the same shape (create <-> reschedule, cancel <-> list ...);
- `number`: a numeric argument off by one (sessions, minutes, distances).

A row where none of the asked-for kinds applies (a `list` action with no day, say) keeps
`rejected` equal to `chosen`, and the dataset stage drops it as `same_pair`, counted; a row
whose answer is not a JSON action is passed on for the dataset stage to drop as invalid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

from factory import hashing
from factory.hookspecs import hookimpl

__version__ = "1.0"

KINDS = ("day", "time", "action", "number")
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "today", "tomorrow"]
# Actions that take the same arguments, so swapping the name is a plausible near miss.
SWAPS = {"create": "reschedule", "reschedule": "create", "cancel": "reschedule", "remind": "remind",
         "list": "list", "plan_week": "plan_week", "log": "log"}


class PairOptions(BaseModel):
    """Options of a `perturbed-pairs` source (recipe: <section>.sources[i].options)."""

    model_config = ConfigDict(extra="forbid")

    kinds: list[Literal["day", "time", "action", "number"]] = Field(
        default_factory=lambda: list(KINDS), min_length=1, description="near-miss kinds to draw rejected answers from")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of which kind each row gets")


def _parse(answer: Any) -> dict[str, Any] | None:
    if isinstance(answer, str):
        try:
            answer = json.loads(answer)
        except ValueError:
            return None
    if isinstance(answer, dict) and isinstance(answer.get("args"), dict) and isinstance(answer.get("action"), str):
        return answer
    return None


def _later(time: str) -> str | None:
    try:
        h, m = time.split(":")
        return f"{(int(h) + 1) % 24:02d}:{int(m):02d}"
    except ValueError:
        return None


def perturb(action: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The action with one near miss of `kind`, or None where the kind does not apply."""
    args = dict(action["args"])
    if kind == "day" and isinstance(args.get("day"), str) and args["day"] in DAYS:
        args["day"] = DAYS[(DAYS.index(args["day"]) + 1) % len(DAYS)]
    elif kind == "time" and isinstance(args.get("time"), str) and _later(args["time"]):
        args["time"] = _later(args["time"])
    elif kind == "action" and SWAPS.get(action["action"], action["action"]) != action["action"]:
        return {"action": SWAPS[action["action"]], "args": args}
    elif kind == "number":
        nums = [k for k, v in sorted(args.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not nums:
            return None
        args[nums[0]] = args[nums[0]] + 1
    else:
        return None
    return {"action": action["action"], "args": args}


class PerturbedPairs:
    """Dataset source `perturbed-pairs`: {prompt, chosen, rejected} rows from a task file's rows."""

    name = "perturbed-pairs"
    version = __version__
    Options = PairOptions

    def _path(self, spec: dict[str, Any], root: Path) -> Path:
        from factory_plugins.datasets import source_file

        return source_file(spec, root, "sources: the perturbed-pairs source needs a path (the task's rows)")

    def files(self, spec: dict[str, Any], root: Path) -> list[Path]:
        return [self._path(spec, root)]

    def check(self, spec: dict[str, Any], root: Path) -> None:
        from factory_plugins.datasets import check_jsonl

        check_jsonl(self._path(spec, root))

    def read(self, spec: dict[str, Any], root: Path) -> Iterable[dict[str, Any]]:
        from factory import options

        opts = options.validate(PairOptions, {k: v for k, v in (spec.get("options") or {}).items() if k != "split"},
                                "options")
        from factory_plugins.datasets import JsonlSource

        for row in JsonlSource().read({**spec, "options": {}}, root):
            if "_invalid" in row:
                yield row
                continue
            prompt = row.get("prompt", row.get("request"))
            answer = row.get("answer", row.get("action"))
            action = _parse(answer)
            if not isinstance(prompt, str) or action is None:
                yield {"id": row.get("id"), "prompt": prompt, "chosen": answer, "rejected": answer}
                continue
            start = int(hashing.digest_bytes(f"{opts.seed}:{prompt}".encode())[:8], 16)
            rejected = None
            for i in range(len(opts.kinds)):  # the row's own kind first, then the others in turn
                rejected = perturb(action, opts.kinds[(start + i) % len(opts.kinds)])
                if rejected is not None:
                    break
            yield {"id": row.get("id"), "prompt": prompt, "chosen": action, "rejected": rejected or action}


@hookimpl
def register_dataset_sources(register):
    register(PerturbedPairs())
