"""Generate Pace planner traces: a user's request in plain words -> the one JSON action the app runs.

Pace is a planning assistant for people who train. Each trace is one request
("move my long run to Saturday at 7") and the action the app executed for it
({"action": "reschedule", "args": {"item": "long run", "day": "saturday",
"time": "07:00"}}). Arguments are spans of the request, normalized: days are
lower-case full names (or "today"/"tomorrow"), times are 24-hour "HH:MM",
counts and distances are numbers.

Like traces logged from a real app, the output is not clean: it holds exact
duplicates, near-duplicates that differ only in case or spacing, actions that
are not valid JSON or name an action the app does not have, actions missing an
argument, empty requests, over-long requests and a few non-ASCII ones. The
dataset stage's contract check is what removes them, and counts each reason.

    python recipes/pace-planner/generate.py            # rewrites traces.jsonl beside this file
    python recipes/pace-planner/generate.py --check    # exit 1 if traces.jsonl differs

The output is a pure function of the seed: the same seed gives the same bytes.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "traces.jsonl"
SEED = 0
CLEAN_ROWS = 3000

# The actions the app knows and their arguments ("?" marks an optional one).
# recipes/pace-planner.yaml states the same list as the dataset contract.
ACTIONS = {
    "create": ["item", "day", "time"],
    "reschedule": ["item", "day", "time?"],
    "cancel": ["item", "day"],
    "list": ["day"],
    "remind": ["item", "minutes_before"],
    "plan_week": ["goal", "sessions"],
    "log": ["item", "distance_km"],
}

ITEMS = [
    "long run", "tempo run", "easy run", "intervals", "recovery run", "hill repeats", "swim",
    "bike ride", "yoga", "strength session", "track workout", "physio", "dentist", "team meeting",
    "stretching", "core workout", "massage", "fartlek", "brick workout", "club run",
]
DISTANCE_ITEMS = [
    "long run", "tempo run", "easy run", "recovery run", "swim", "bike ride", "club run", "trail run",
]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
GOALS = ["5k", "10k", "15k", "half marathon", "marathon", "ultra", "sprint triathlon", "trail race"]
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}

TEMPLATES = {
    "create": [
        "add {item} on {day} at {time}",
        "schedule {item} for {day} at {time}",
        "book {item} {day} at {time}",
        "new: {item}, {day} {time}",
        "can you add {item} on {day} at {time}?",
        "i want to do {item} on {day} at {time}",
        "put {item} in for {day} at {time}",
        "create {item} on {day}, {time}",
    ],
    "reschedule": [
        "move my {item} to {day} at {time}",
        "reschedule {item} to {day} at {time}",
        "shift {item} to {day} {time}",
        "can we move the {item} to {day} at {time}?",
        "change {item} to {day} at {time}",
        "move {item} to {day}",
        "push my {item} to {day}",
        "reschedule the {item} for {day}",
    ],
    "cancel": [
        "cancel my {item} on {day}",
        "drop the {item} on {day}",
        "skip {item} {day}",
        "remove {item} from {day}",
        "i can't make {item} on {day}, cancel it",
        "cancel {item} for {day} please",
    ],
    "list": [
        "what's on {day}?",
        "show my plan for {day}",
        "list everything for {day}",
        "what have i got {day}",
        "anything planned {day}?",
        "show {day}",
    ],
    "remind": [
        "remind me {mins} before {item}",
        "set a reminder {mins} before my {item}",
        "ping me {mins} before {item}",
        "alert me {mins} ahead of my {item}",
        "reminder {mins} before the {item} please",
    ],
    "plan_week": [
        "plan my week for a {goal} with {n} sessions",
        "build a training week for a {goal}, {n} workouts",
        "plan next week for the {goal}: {n} sessions",
        "make me a week of {n} sessions for a {goal}",
        "i need a {goal} week with {n} runs",
    ],
    "log": [
        "log {km} km {item}",
        "log {km}km for my {item}",
        "record {km} km of {item}",
        "i did {km} km {item}, log it",
        "add {km} km {item} to my log",
    ],
}

RAMBLE = [
    "so this week has been a complete mess at work and my coach keeps changing things around",
    "sorry for the long message but the kids have swimming lessons and my partner is travelling",
    "ok so i was looking at the calendar last night and honestly nothing lines up anymore",
    "quick context: my knee was a bit sore after sunday and the physio said to take it easy",
]
NON_ASCII = [
    "move my long run to Saturday at 7 \u2600\ufe0f",
    "d\u00e9place ma sortie longue \u00e0 samedi 7h",
    "what\u2019s on friday?",
    "add yoga on monday at 18:00 \u2014 thanks!",
    "schedule swim for t\u00fcesday at 7am",
    "remind me 30 minutes before caf\u00e9 run",
    "log 10 km easy run \U0001f3c3",
    "cancel my physio on thursday \u2192 sick",
    "plan my week for a marath\u00f3n with 4 sessions",
    "show my plan for s\u00e1bado",
    "move tempo run to friday at 6\u202fpm",
    "book massage tomorrow at 5pm \u2714",
]
UNKNOWN_ACTIONS = ["order_food", "play_music", "teleport", "delete_account", "send_email", "buy_shoes"]
UNKNOWN_REQUESTS = [
    "order me a pizza for after the long run",
    "play my running playlist",
    "delete my account",
    "email my coach that i'm sick",
    "buy new trail shoes",
    "teleport me to the track",
]


def day_surface(rng: random.Random, day: str) -> str:
    if day in ("today", "tomorrow"):
        return rng.choice([day, day, day.capitalize()])
    return rng.choice([day, day, day.capitalize(), day.capitalize(), day[:3], day[:3].capitalize()])


def pick_time(rng: random.Random) -> tuple[str, str]:
    """A time as people type it, and its normalized "HH:MM"."""
    form = rng.choice(["24h", "am", "pm", "bare", "24h", "pm"])
    minute = rng.choice([0, 0, 0, 15, 30, 45])
    if form == "24h":
        hour = rng.randint(5, 21)
        return f"{hour:02d}:{minute:02d}", f"{hour:02d}:{minute:02d}"
    if form == "bare":  # a bare hour means the morning: people train early
        hour = rng.randint(5, 11)
        return str(hour), f"{hour:02d}:00"
    if form == "am":
        hour = rng.randint(5, 11)
    else:
        hour = rng.randint(12, 21)
        if hour == 12 and minute == 0 and rng.random() < 0.5:
            return "noon", "12:00"
    h12 = hour if hour <= 12 else hour - 12
    suffix = "am" if form == "am" else "pm"
    space = rng.choice(["", "", " "])
    text = f"{h12}{space}{suffix}" if minute == 0 else f"{h12}:{minute:02d}{space}{suffix}"
    return text, f"{hour:02d}:{minute:02d}"


def pick_minutes(rng: random.Random) -> tuple[str, int]:
    if rng.random() < 0.25:
        return rng.choice([("an hour", 60), ("half an hour", 30), ("1 hour", 60), ("2 hours", 120)])
    n = rng.choice([5, 10, 15, 20, 30, 45, 60, 90])
    return f"{n} {rng.choice(['minutes', 'min', 'mins'])}", n


def clean_trace(rng: random.Random) -> tuple[str, dict]:
    """One well-formed (request, action) pair."""
    action = rng.choice(list(TEMPLATES))
    template = rng.choice(TEMPLATES[action])
    day = rng.choice(DAYS + ["today", "tomorrow"])
    fill: dict[str, str] = {}
    args: dict = {}
    if "{item}" in template:
        item = rng.choice(DISTANCE_ITEMS if action == "log" else ITEMS)
        fill["item"], args["item"] = item, item
    if "{day}" in template:
        fill["day"], args["day"] = day_surface(rng, day), day
    if "{time}" in template:
        fill["time"], args["time"] = pick_time(rng)
    if "{mins}" in template:
        fill["mins"], args["minutes_before"] = pick_minutes(rng)
    if "{goal}" in template:
        goal = rng.choice(GOALS)
        fill["goal"], args["goal"] = goal, goal
    if "{n}" in template:
        n = rng.randint(2, 7)
        fill["n"], args["sessions"] = (NUMBER_WORDS[n] if rng.random() < 0.3 else str(n)), n
    if "{km}" in template:
        km = rng.randint(2, 42) if rng.random() < 0.8 else rng.randint(2, 30) + 0.5
        fill["km"], args["distance_km"] = str(km), km
    request = template.format(**fill)
    return request, {"action": action, "args": args}


def action_text(rng: random.Random, action: dict) -> str:
    """The action as the app logged it: valid JSON, but not always in one layout."""
    style = rng.random()
    if style < 0.7:
        return json.dumps(action)
    if style < 0.85:
        return json.dumps({"args": action["args"], "action": action["action"]})
    return json.dumps(action, separators=(",", ":"))


def near_duplicate(rng: random.Random, request: str) -> str:
    change = rng.choice(["upper_first", "shout", "double_space", "pad", "title"])
    if change == "upper_first":
        return request[:1].upper() + request[1:]
    if change == "shout":
        return request.upper()
    if change == "double_space":
        return request.replace(" ", "  ", 2)
    if change == "pad":
        return f"  {request} "
    return request.title()


def broken_json(rng: random.Random, action: dict) -> str:
    text = json.dumps(action)
    kind = rng.choice(["truncate", "single_quotes", "trailing_comma", "bare"])
    if kind == "truncate":
        return text[: rng.randint(5, len(text) - 2)]
    if kind == "single_quotes":
        return text.replace('"', "'")
    if kind == "trailing_comma":
        return text[:-2] + "},}"
    return f"{action['action']} {' '.join(str(v) for v in action['args'].values())}"


def generate(seed: int = SEED) -> list[dict]:
    """All trace rows, in the order they are written."""
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []  # (request, action text)
    clean: list[tuple[str, dict]] = [clean_trace(rng) for _ in range(CLEAN_ROWS)]
    rows += [(req, action_text(rng, act)) for req, act in clean]

    for _ in range(60):  # the app logged the same request twice
        rows.append(rng.choice(rows[:CLEAN_ROWS]))
    for _ in range(80):
        req, act = rng.choice(clean)
        rows.append((near_duplicate(rng, req), action_text(rng, act)))
    for _ in range(30):
        req, act = clean_trace(rng)
        rows.append((req, broken_json(rng, act)))
    for i in range(24):
        req = UNKNOWN_REQUESTS[i % len(UNKNOWN_REQUESTS)]
        name = UNKNOWN_ACTIONS[i % len(UNKNOWN_ACTIONS)]
        rows.append((req, json.dumps({"action": name, "args": {"note": req}})))
    for _ in range(20):  # an argument the action needs is missing, or one it does not take is present
        req, act = clean_trace(rng)
        args = dict(act["args"])
        required = [a for a in ACTIONS[act["action"]] if not a.endswith("?")]
        if rng.random() < 0.6:
            args.pop(rng.choice(required))
        else:
            args["priority"] = "high"
        rows.append((req, json.dumps({"action": act["action"], "args": args})))
    for i in range(15):
        rows.append((["", " ", "   ", "\t"][i % 4], json.dumps({"action": "list", "args": {"day": "today"}})))
    for _ in range(20):
        req, act = clean_trace(rng)
        preface = " ".join(rng.sample(RAMBLE, 3))
        rows.append((f"{preface}, anyway {req}", action_text(rng, act)))
    for text in NON_ASCII:
        rows.append((text, json.dumps({"action": "list", "args": {"day": "friday"}})))

    rng.shuffle(rows)
    return [{"id": f"t{i:05d}", "request": req, "action": act} for i, (req, act) in enumerate(rows, 1)]


def render(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    data = render(generate(args.seed))
    if args.check:
        same = args.out.exists() and args.out.read_bytes() == data
        print(f"{args.out}: {'up to date' if same else 'differs from the generator output'}")
        return 0 if same else 1
    args.out.write_bytes(data)
    lines = data.count(b"\n")
    print(f"wrote {lines} traces to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
