"""Split the planner traces into the curriculum's first two steps: python recipes/pace-planner/curriculum.py

foundations.jsonl: requests whose action has one or two slots and no time (list, cancel, log, remind);
composition.jsonl: requests whose action combines item, day and time, or a goal and a count
(create, reschedule, plan_week). The last step of recipes/pace-planner-curriculum.yaml trains on
all of traces.jsonl. Rows are copied byte for byte, so the dataset stage sees them as in traces.jsonl.
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
STEPS = {"foundations": {"list", "cancel", "log", "remind"}, "composition": {"create", "reschedule", "plan_week"}}


def action_of(line: str) -> str | None:
    try:
        return json.loads(json.loads(line)["action"])["action"]
    except (ValueError, KeyError, TypeError):
        return None


def main() -> None:
    lines = (HERE / "traces.jsonl").read_text().splitlines(keepends=True)
    for name, actions in STEPS.items():
        kept = [ln for ln in lines if action_of(ln) in actions]
        (HERE / f"{name}.jsonl").write_text("".join(kept))
        print(f"{name}.jsonl: {len(kept)} rows")


if __name__ == "__main__":
    main()
