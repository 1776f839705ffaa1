"""lm-evaluation-harness task YAMLs over a local data file, for the tests that run lm-eval offline."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

# (question, answer, choices): a multiple-choice and a generation task read the same rows
COLOURS = [("sky", "blue", ["blue", "red"]), ("grass", "green", ["red", "green"]),
           ("sun", "yellow", ["yellow", "black"]), ("snow", "white", ["grey", "white"]),
           ("coal", "black", ["black", "pink"])]


def write_colour_tasks(root: Path, words=COLOURS) -> None:
    """tasks/colours.jsonl and two task YAMLs reading it: tasks/mc.yaml (colours_mc, acc) and
    tasks/gen.yaml (colours_gen, exact_match); data paths are relative to `root`, where lm-eval runs."""
    tasks = Path(root) / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    rows = [{"question": q, "answer": a, "choices": c, "label": c.index(a)} for q, a, c in words]
    (tasks / "colours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "mc.yaml").write_text(textwrap.dedent("""\
        task: colours_mc
        dataset_path: json
        dataset_kwargs: {data_files: {test: tasks/colours.jsonl}}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{question}} is"
        doc_to_choice: "{{choices}}"
        doc_to_target: label
        metric_list: [{metric: acc}]
        """))
    (tasks / "gen.yaml").write_text(textwrap.dedent("""\
        task: colours_gen
        dataset_path: json
        dataset_kwargs: {data_files: {test: tasks/colours.jsonl}}
        test_split: test
        output_type: generate_until
        doc_to_text: "{{question}} is"
        doc_to_target: answer
        generation_kwargs: {until: ["\\n"], max_gen_toks: 4, do_sample: false}
        metric_list: [{metric: exact_match}]
        """))
