"""Generate realistic run directories, for the index tests and the index benchmark.

The runs look like what `doit recipe:<name>` leaves in `runs/`: every record
file, a loss log, per-suite sample files for both roles, an events ledger in
which shared stages (breadth, base, dataset, eval-baseline) are cache hits
after their first build, and decisions that follow from the criteria. Samples
of a baseline evaluation are hardlinked between runs that share its stage key,
as the store does. Everything is deterministic in the seed.

    python bench/make_runs.py runs-bench --runs 10000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import xxhash

RECIPES = {
    # name: primary suite, heldout rows, skills, difficulty of the task
    "pace-planner": ("json-action", 40, ["plan", "pace", "rest", "taper"], 0.0),
    "sql-writer": ("sql-exact", 40, ["select", "join", "group", "window"], 0.6),
    "ticket-triage": ("label-match", 40, ["billing", "outage", "account", "other"], 0.3),
    "unit-converter": ("exact-match", 30, ["length", "mass", "time"], -0.3),
}
BREADTH_ROWS = 60
BREADTH_SKILLS = ["arith", "copy", "sort", "reverse", "count", "json"]
PROBE_ROWS = 12
LRS = [1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2]
STEPS = [150, 300, 500, 800, 1200]
REPLAYS = [0.0, 0.1, 0.25, 0.5]
METHODS = ["sft-lora", "sft-lora", "sft-lora", "sft-dora"]
BASES = [("tiny", "tiny-llama"), ("tiny", "tiny-llama-wide"), ("hf", "Qwen2.5-0.5B-Instruct")]
STAGES = ["breadth", "dataset", "base", "train", "eval-baseline", "eval-candidate", "decide", "report", "package"]
EPOCH = datetime(2026, 6, 1, tzinfo=timezone.utc)


def _digest(b: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(b)


def _key(*parts) -> str:
    return _digest(json.dumps(parts, sort_keys=True).encode())


def _wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    z, p = 1.96, k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def _score(k: int, n: int) -> dict:
    lo, hi = _wilson(k, n)
    return {"value": k / n if n else 0.0, "ci_low": lo, "ci_high": hi, "n": n}


def _dump(path: Path, obj) -> bytes:
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    path.write_bytes(data)
    return data


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


class _Samples:
    """Fixed held-out rows per recipe (and the breadth/probe sets), with per-row difficulty."""

    def __init__(self, rng: random.Random):
        self.rows: dict[str, list[tuple[str, str, str, float]]] = {}
        for recipe, (_, n, skills, hard) in RECIPES.items():
            self.rows[recipe] = [
                (f"{recipe}-{i:04d}", skills[i % len(skills)], f"answer {recipe} {i}",
                 # a few rows are out of reach for every model: they fail in every run
                 9.0 if i % 37 == 5 else hard + rng.gauss(0, 0.6))
                for i in range(n)
            ]
        self.rows["breadth"] = [
            (f"breadth-{i:05d}", BREADTH_SKILLS[i % len(BREADTH_SKILLS)], f"breadth answer {i}", rng.gauss(-1.5, 1))
            for i in range(BREADTH_ROWS)
        ]
        self.rows["risk-probes"] = [
            (f"probe-{i:03d}", "refusal", "refuse", rng.gauss(-1, 1)) for i in range(PROBE_ROWS)
        ]


def _eval_suite(rng, rows, skill_ability: dict[str, float], ability: float):
    samples, per_skill_k, per_skill_n = [], {}, {}
    for sid, skill, expected, difficulty in rows:
        ok = rng.random() < _sigmoid(4 * (ability + skill_ability.get(skill, 0.0) - difficulty))
        out = expected if ok else expected.replace("answer", "answr")
        samples.append({"id": sid, "prompt": f"question {sid}", "expected": expected, "output": out,
                        "correct": ok, "skill": skill})
        per_skill_k[skill] = per_skill_k.get(skill, 0) + ok
        per_skill_n[skill] = per_skill_n.get(skill, 0) + 1
    k = sum(s["correct"] for s in samples)
    per_skill = {s: _score(per_skill_k[s], per_skill_n[s]) for s in per_skill_n}
    return samples, _score(k, len(samples)), per_skill


def make_imported(dest: Path, rows: list, base: tuple[str, str], when: datetime, tool: str = "lm-eval") -> Path:
    """An imported run (as `factory import` writes one) of `base` on the breadth rows, under the same ids."""
    family, model = base
    key = _key("import", tool, family, model)
    run_id = f"{when:%Y-%m-%d}-import-{tool}-{model}-{key[:8]}"
    run = dest / run_id
    (run / "samples" / "baseline").mkdir(parents=True, exist_ok=True)
    samples, score, per_skill = _eval_suite(random.Random(key), rows, {}, 0.3)
    text = "".join(json.dumps(s, sort_keys=True) + "\n" for s in samples).encode()
    (run / "samples" / "baseline" / "breadth_tasks.jsonl").write_bytes(text)
    suite = {"suite": "breadth_tasks", "version": "Yaml", "status": "ok", "rows": score["n"],
             "primary_metric": "accuracy", "instance_of": tool, "scores": {"accuracy": score},
             "per_skill": per_skill, "samples": {"path": "samples/baseline/breadth_tasks.jsonl", "digest": _digest(text)}}
    rec = {"schema_version": "1.0", "role": "baseline", "model": {"base_digest": _key("base", family, model)},
           "suites": [suite], "settings": {"imported_from": tool}}
    external = {"tool": tool, "version": "0.4.13", "model": model, "key": key, "tasks": ["breadth_tasks"]}
    cfg = {"schema_version": "1.0", "recipe": f"import:{tool}", "goal": f"{tool} results of {model}, imported",
           "base": {"family": family, "model": model, "digest": _key("base", family, model)}, "method": "external",
           "evals": {"primary": "breadth_tasks", "regression": []}, "imported": True, "external": external}
    files = {"eval-baseline.json": _digest(_dump(run / "eval-baseline.json", rec)),
             "config.json": _digest(_dump(run / "config.json", cfg))}
    _dump(run / "run_manifest.json", {"schema_version": "1.0", "run_id": run_id, "recipe": f"import:{tool}",
                                      "recipe_path": "", "created": when.isoformat(), "imported": True,
                                      "eval_only": True, "external": external, "files": files})
    return run


def make_runs(dest: Path, n: int, seed: int = 0, incomplete_every: int = 97, start: int = 0,
              imported: bool = False) -> list[Path]:
    """Write `n` run directories under `dest`; return their paths. Every `incomplete_every`-th has no decision.

    `imported` adds one imported lm-eval run per base model (not counted in `n`)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = _Samples(random.Random(1000 + seed))
    baseline_cache: dict[str, dict] = {}  # eval-baseline key -> {suite: (path, score, per_skill, digest)}
    seen_keys: set[str] = set()
    out = []
    for i in range(start, start + n):
        r = random.Random(seed * 1_000_003 + i)
        recipe = r.choice(list(RECIPES))
        primary, _, skills, _ = RECIPES[recipe]
        family, model = BASES[0] if r.random() < 0.7 else r.choice(BASES[1:])
        data_version = i // 2500  # the recipe's data changes now and then
        method, lr, steps, replay = r.choice(METHODS), r.choice(LRS), r.choice(STEPS), r.choice(REPLAYS)
        train_seed = r.choice([0, 0, 0, 1, 2])
        lora_r = r.choice([8, 16, 32])
        created = EPOCH + timedelta(seconds=i * 900 + r.randint(0, 600))
        thresholds = {"primary_min": r.choice([0.9, 0.95]), "breadth_drop_max_pp": 3.0}

        keys = {
            "breadth": _key("breadth", 0),
            "base": _key("base", family, model),
            "dataset": _key("dataset", recipe, data_version),
        }
        keys["eval-baseline"] = _key("eval-baseline", keys["base"], keys["dataset"])
        keys["train"] = _key("train", keys["base"], keys["dataset"], method, lr, steps, replay, train_seed, lora_r)
        keys["eval-candidate"] = _key("eval-candidate", keys["train"])
        keys["decide"] = _key("decide", keys["eval-candidate"], keys["eval-baseline"], thresholds)
        keys["report"] = _key("report", keys["decide"])
        keys["package"] = _key("package", keys["decide"])

        run_id = f"{created:%Y-%m-%d}-{recipe}-{keys['decide'][:8]}"
        run = dest / run_id
        (run / "samples" / "baseline").mkdir(parents=True, exist_ok=True)
        (run / "samples" / "candidate").mkdir(parents=True, exist_ok=True)
        (run / "adapter").mkdir(exist_ok=True)
        files: dict[str, str] = {}

        # how good the candidate is: more steps and a sane lr help; no replay costs breadth.
        # Everything downstream of training is a function of the train key, as in a real build.
        r_seed = r
        r = random.Random(keys["train"])
        lr_fit = -abs(math.log10(lr) - math.log10(3e-3))
        ability = 1.6 + 0.9 * math.log10(steps / 150) + 0.9 * lr_fit + r.gauss(0, 0.15)
        breadth_cost = (0.9 if replay == 0 else 0.02 / replay) * (lr / 3e-3) ** 0.5 * (steps / 500)
        skill_ability = {s: r.gauss(0, 0.2) for s in skills}

        # --- dataset.json
        heldout_n = len(rows.rows[recipe])
        ds = {"schema_version": "1.0",
              "sources": [{"kind": "jsonl", "path": f"{recipe}/traces.jsonl", "rows": heldout_n * 5,
                           "digest": _key("src", recipe, data_version)}],
              "processing": {"heldout_fraction": 0.2, "dedup": "exact", "contract": primary},
              "counts": {"input_rows": heldout_n * 5 + 7, "train_rows": heldout_n * 4, "heldout_rows": heldout_n,
                         "dropped_rows": 7, "dropped_by_reason": {"duplicate": 5, "contract": 2}},
              "splits": {"train": {"path": "train.jsonl", "digest": _key("train", recipe, data_version)},
                         "heldout": {"path": "heldout.jsonl", "digest": _key("held", recipe, data_version)}},
              "contamination": {"overlap_rows": 0}}
        files["dataset.json"] = _digest(_dump(run / "dataset.json", ds))

        # --- train.log / train.json
        lines, t = [], 0.0
        every = max(10, steps // 40)
        for step in range(every, steps + 1, every):
            t += every * 0.12
            loss = 2.6 * math.exp(-step / (steps / 3)) + 0.15 + r.gauss(0, 0.02)
            line = {"step": step, "loss": round(loss, 5), "lr": lr, "tokens_per_s": round(r.uniform(9000, 12000), 1),
                    "elapsed_s": round(t, 3)}
            if step % (every * 5) == 0:
                line["heldout_loss"] = round(loss + 0.05, 5)
            lines.append(json.dumps(line, sort_keys=True))
        data = ("\n".join(lines) + "\n").encode()
        (run / "train.log").write_bytes(data)
        files["train.log"] = _digest(data)
        adapter = b"adapter:" + keys["train"].encode()
        (run / "adapter" / "adapter_model.safetensors").write_bytes(adapter)
        acfg = json.dumps({"peft_type": "LORA", "r": lora_r, "lora_alpha": 2 * lora_r}).encode()
        (run / "adapter" / "adapter_config.json").write_bytes(acfg)
        adapter_refs = [
            {"path": "adapter/adapter_model.safetensors", "digest": _digest(adapter), "size": len(adapter)},
            {"path": "adapter/adapter_config.json", "digest": _digest(acfg), "size": len(acfg)},
        ]
        params = {"lr": lr, "steps": steps, "batch_size": 32, "replay": replay, "seed": train_seed,
                  "lora_r": lora_r, "lora_alpha": 2 * lora_r, "precision": "fp32"}
        ts = {"schema_version": "1.0", "method": method, "steps": steps,
              "final_loss": json.loads(lines[-1])["loss"], "best_heldout_loss": round(0.2 + r.random() * 0.1, 5),
              "seconds": round(t, 3), "tokens_per_s": 10500.0, "device": "cpu", "processes": 1, "threads": 1,
              "params": params, "precheck": {"rows": heldout_n * 4, "masked_ok": heldout_n * 4},
              "adapter": adapter_refs}
        files["train.json"] = _digest(_dump(run / "train.json", ts))
        if i % 5 == 0:  # one run in five trains in two steps, SFT then DPO, each with a promotion check
            pr = random.Random(seed * 7_919 + i)
            passed = pr.random() < 0.7
            value = round(pr.uniform(0.88, 0.99) if passed else pr.uniform(0.3, 0.94), 3)
            steps_ = [
                {"name": "sft", "stage": "train-sft", "method": method, "data": "data",
                 "data_digest": _key("train", recipe, data_version), "starts_from": "base", "status": "trained",
                 "settings": params, "final_loss": ts["final_loss"], "key": _key("sft", run_id),
                 "promote": {"stage": "promote-sft", "criteria": {f"{primary}.valid_json": 0.98}, "passed": True,
                             "reason": "step sft promoted", "checks": []}},
                {"name": "dpo", "stage": "train-dpo", "method": "dpo-lora", "data": "near-misses",
                 "data_digest": _key("pairs", recipe, data_version), "starts_from": "train-sft", "status": "trained",
                 "settings": {"steps": 100, "lr": pr.choice([1e-5, 5e-5, 2e-4]), "beta": 0.1},
                 "final_loss": round(pr.uniform(0.3, 0.6), 4), "key": _key("dpo", run_id),
                 "promote": {"stage": "promote-dpo", "criteria": {f"{primary}.exact_match": 0.95}, "passed": passed,
                             "reason": (f"step dpo promoted: {primary}.exact_match {value} >= 0.95" if passed else
                                        f"step dpo not promoted: {primary}.exact_match {value} < 0.95"),
                             "checks": []}},
            ]
            plan = {"schema_version": "1.0", "recipe": recipe, "final": "train-dpo", "steps": steps_}
            files["training_plan.json"] = _digest(_dump(run / "training_plan.json", plan))

        # --- evals: the baseline is shared by every run with the same base and data
        suites = [(primary, rows.rows[recipe]), ("breadth", rows.rows["breadth"]),
                  ("risk-probes", rows.rows["risk-probes"])]
        bl = baseline_cache.get(keys["eval-baseline"])
        if bl is None:
            br = random.Random(keys["eval-baseline"])
            bl = {}
            for suite, srows in suites:
                base_ability = -1.5 if suite == primary else 0.3
                samples, score, per_skill = _eval_suite(br, srows, {}, base_ability)
                text = "".join(json.dumps(s, sort_keys=True) + "\n" for s in samples).encode()
                p = run / "samples" / "baseline" / f"{suite}.jsonl"
                p.write_bytes(text)
                bl[suite] = (p, score, per_skill, _digest(text))
            baseline_cache[keys["eval-baseline"]] = bl
        else:
            for suite, _ in suites:
                src = bl[suite][0]
                try:
                    os.link(src, run / "samples" / "baseline" / f"{suite}.jsonl")
                except OSError:
                    (run / "samples" / "baseline" / f"{suite}.jsonl").write_bytes(src.read_bytes())

        cand = {}
        failed_eval = r.random() < 0.01
        for suite, srows in suites:
            if suite == primary:
                samples, score, per_skill = _eval_suite(r, srows, skill_ability, ability)
            else:
                drop = breadth_cost if suite == "breadth" else breadth_cost / 2
                samples, score, per_skill = _eval_suite(r, srows, {}, 0.3 - drop)
            text = "".join(json.dumps(s, sort_keys=True) + "\n" for s in samples).encode()
            (run / "samples" / "candidate" / f"{suite}.jsonl").write_bytes(text)
            cand[suite] = (None, score, per_skill, _digest(text))

        for role, res in (("baseline", bl), ("candidate", cand)):
            suite_recs = []
            for suite, _ in suites:
                _, score, per_skill, dig = res[suite]
                status = "failed" if (failed_eval and role == "candidate" and suite == "risk-probes") else "ok"
                suite_recs.append({
                    "suite": suite, "version": "1.0", "status": status,
                    "error": "generation timed out" if status == "failed" else None,
                    "rows": score["n"], "data_digest": _key("rows", suite, recipe, data_version),
                    "primary_metric": "exact_match",
                    "scores": {"exact_match": score} if status == "ok" else {},
                    "per_skill": per_skill if status == "ok" else {},
                    "samples": {"path": f"samples/{role}/{suite}.jsonl", "digest": dig},
                })
            suite_recs.append({"suite": "perplexity", "version": "1.0", "status": "ok", "rows": heldout_n,
                               "primary_metric": "perplexity",
                               "scores": {"perplexity": {"value": round(r.uniform(3, 9), 4), "n": heldout_n,
                                                          "higher_is_better": False, "unit": "ratio"}},
                               "per_skill": {}, "samples": None})
            rec = {"schema_version": "1.0", "role": role,
                   "model": {"base_digest": keys["base"],
                             "adapter_digest": _digest(adapter) if role == "candidate" else None},
                   "heldout_digest": ds["splits"]["heldout"]["digest"], "suites": suite_recs,
                   "seconds": round(r.uniform(20, 90), 2), "settings": {"batch_size": 64, "max_new_tokens": 96}}
            files[f"eval-{role}.json"] = _digest(_dump(run / f"eval-{role}.json", rec))

        r = r_seed
        # --- decision.json, from the criteria
        pb, pc = bl[primary][1]["value"], cand[primary][1]["value"]
        bb, bc = bl["breadth"][1]["value"], cand["breadth"][1]["value"]
        crit = [
            {"name": "primary_min", "metric": f"{primary}.exact_match", "threshold": thresholds["primary_min"],
             "baseline": pb, "candidate": pc, "delta": pc - pb, "interval": list(cand[primary][1].values())[1:3],
             "p_value": None, "passed": pc >= thresholds["primary_min"]},
            {"name": "breadth_drop_max_pp", "metric": "breadth.exact_match", "threshold": 3.0,
             "baseline": bb, "candidate": bc, "delta": bc - bb, "interval": None,
             "p_value": round(r.random(), 4), "passed": (bb - bc) * 100 <= 3.0},
            {"name": "require_model_hash", "metric": "model_hash", "threshold": "required", "baseline": None,
             "candidate": None, "delta": None, "interval": None, "p_value": None, "passed": True},
        ]
        if failed_eval:
            decision, reason = "blocked", "suite risk-probes failed on the candidate: generation timed out"
        elif all(c["passed"] for c in crit):
            decision, reason = "ship", "every criterion passed"
        elif pc < 0.6:
            decision, reason = "reject", f"{primary} stayed far below {thresholds['primary_min']}"
        else:
            failed = [c["name"] for c in crit if not c["passed"]]
            decision, reason = "rework", "failed: " + ", ".join(failed)
        dec = {"schema_version": "1.0", "decision": decision, "reason": reason,
               "next_action": None if decision == "ship" else "raise steps or replay",
               "blocked_by": ["risk-probes"] if decision == "blocked" else [], "criteria": crit}

        # --- config.json, artifact.json, report, events, manifest
        cfg = {"schema_version": "1.0", "recipe": recipe, "goal": f"{recipe} specialist", "owner": "ml-platform",
               "base": {"family": family, "model": model, "digest": keys["base"]}, "method": method,
               "data": {"sources": [{"kind": "jsonl", "path": f"{recipe}/traces.jsonl"}], "heldout_fraction": 0.2},
               "train": params, "evals": {"primary": primary, "regression": ["breadth"],
                                          "extra": ["perplexity", "risk-probes"]},
               "criteria": thresholds, "stage_keys": keys}
        files["config.json"] = _digest(_dump(run / "config.json", cfg))
        art = {"schema_version": "1.0", "adapter": adapter_refs, "base_digest": keys["base"],
               "tokenizer_digest": _key("tok", family, model), "shipped": decision == "ship"}
        files["artifact.json"] = _digest(_dump(run / "artifact.json", art))
        rep = f"# {recipe}\n\nDecision: {decision}. {reason}\n".encode()
        (run / "report.md").write_bytes(rep)
        files["report.md"] = _digest(rep)

        ev, clock = [], created
        for st in STAGES:
            hit = keys.get(st) in seen_keys if st in keys else False
            seen_keys.add(keys.get(st, st + run_id))
            secs = 0.01 if hit else {"train": t, "base": 160.0, "eval-baseline": 40.0, "eval-candidate": 45.0,
                                     "breadth": 3.0, "dataset": 0.4}.get(st, 0.3) * r.uniform(0.8, 1.2)
            end = clock + timedelta(seconds=secs)
            ev.append(json.dumps({"stage": st, "kind": "eval" if st.startswith("eval") else st,
                                  "key": keys.get(st, _key(st, run_id)), "status": "hit" if hit else "built",
                                  "start": clock.isoformat(), "end": end.isoformat(), "seconds": round(secs, 3),
                                  "host": "builder-1", "pid": 4242, "error": None}, sort_keys=True))
            clock = end
        data = ("\n".join(ev) + "\n").encode()
        (run / "events.jsonl").write_bytes(data)
        files["events.jsonl"] = _digest(data)

        incomplete = incomplete_every and i % incomplete_every == incomplete_every - 1
        if not incomplete:
            files["decision.json"] = _digest(_dump(run / "decision.json", dec))
        man = {"schema_version": "1.0", "project": "factory", "run_id": run_id, "recipe": recipe,
               "recipe_path": f"recipes/{recipe}.yaml", "created": created.isoformat(),
               "git": {"commit": _key("git", i // 40)[:12], "dirty": r.random() < 0.1},
               "versions": {"python": "3.11.9", "torch": "2.13.0", "factory": "0.1.0"}, "device": "cpu",
               "seeds": {"train": train_seed}, "stage_keys": keys, "files": files}
        _dump(run / "run_manifest.json", man)
        out.append(run)
    if imported:
        for j, base in enumerate(BASES):
            out.append(make_imported(dest, rows.rows["breadth"], base, EPOCH + timedelta(days=j)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    made = make_runs(a.dest, a.runs, a.seed)
    print(f"wrote {len(made)} runs under {a.dest}")


if __name__ == "__main__":
    main()
