"""Run validation: what `factory run validate <run>` reports.

`validate_run` checks every file of a run directory against its record model
and JSON Schema (the ones `factory.records.export_schemas` writes to
docs/schemas/), then cross-checks the digests between files: each samples file
against the digest in its eval record, the adapter files against train.json
and artifact.json, the adapter directory against the candidate's
adapter_digest, base and held-out digests across records, and every file named
in run_manifest.json. Finally it re-runs the gate on the evidence as it now
is: a decision.json that no longer follows from its evidence is a problem.
Digests here are always recomputed from the bytes (no stat cache): the point
is to catch a file changed after the fact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from factory import hashing
from factory.errors import FactoryError
from factory.evidence import load_samples, read_run
from factory.records import JSONL_FILES, RUN_FILES, read_json

REQUIRED = (
    "config.json",
    "dataset.json",
    "train.json",
    "train.log",
    "eval-baseline.json",
    "eval-candidate.json",
    "decision.json",
)


def _schema_problems(path: Path, cls: Any, data: Any) -> list[str]:
    """JSON Schema check of one document; empty when jsonschema is not installed (pydantic already checked)."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - a dev dependency
        return []
    validator = jsonschema.Draft202012Validator(cls.model_json_schema())
    out = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))[:5]:
        loc = ".".join(str(p) for p in err.absolute_path) or "(root)"
        out.append(f"{path.name}: {loc}: {err.message} (JSON Schema)")
    return out


def _tree_digest_uncached(root: Path) -> str:
    return hashing.digest_json({p.relative_to(root).as_posix(): hashing.hash_file(p) for p in hashing.tree_files(root)})


def _check_refs(run_dir: Path, refs: list[Any], owner: str) -> tuple[list[str], dict[str, str]]:
    problems = []
    digests = {}
    for ref in refs:
        digests[ref.path] = ref.digest
        p = run_dir / ref.path
        if not p.resolve().is_relative_to(run_dir.resolve()):
            problems.append(f"{ref.path}: leads outside the run directory (named by {owner})")
            continue
        if not p.is_file():
            problems.append(f"{ref.path}: missing (named by {owner})")
            continue
        actual = hashing.hash_file(p)
        if actual != ref.digest:
            problems.append(f"{ref.path}: digest {actual[:12]} does not match {owner} ({ref.digest[:12]})")
        if ref.size is not None and p.stat().st_size != ref.size:
            problems.append(f"{ref.path}: size {p.stat().st_size} does not match {owner} ({ref.size})")
    return problems, digests


def validate_run(run_dir: Path) -> list[str]:
    """Problems with a run directory, each naming a file; an empty list means the run is valid."""
    from factory.gate import decide, rederive

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return [f"{run_dir}: not a run directory"]
    ev = read_run(run_dir, samples=False)

    # A check that failed upstream (a training step's promotion, the power check) stops what follows:
    # those stages left stop records in stopped/ instead of their files, and the decision is the check's.
    stops = ev.stops
    problems = [text for name, text in ev.unreadable.items() if name.startswith("stopped/")]
    explained = {"eval-candidate.json": "eval-candidate" in stops,
                 "train.json": any(s.startswith("train") for s in stops),
                 "train.log": any(s.startswith("train") for s in stops)}
    for name in REQUIRED:
        if not (run_dir / name).exists() and not explained.get(name):
            problems.append(f"{name}: missing")

    for name, cls in RUN_FILES.items():
        path = run_dir / name
        if not path.is_file():
            continue
        if name in ev.unreadable:
            problems.append(ev.unreadable[name].replace(str(path), name))
            continue
        problems += _schema_problems(path, cls, read_json(path))
    for name in JSONL_FILES:
        if name in ev.unreadable:
            problems.append(ev.unreadable[name].replace(str(run_dir / name), name))

    # Samples files against the eval records.
    samples: dict[str, dict[str, list[dict]]] = {"baseline": {}, "candidate": {}}
    for role in ("baseline", "candidate"):
        rec = ev.eval(role)
        if rec is None:
            continue
        if rec.role != role:
            problems.append(f"eval-{role}.json: role is {rec.role!r}")
        samples[role], found = load_samples(rec, run_dir)
        problems += found

    base_rec, cand_rec, train, artifact, dataset = ev.baseline, ev.candidate, ev.train, ev.artifact, ev.dataset

    # Adapter files: on disk vs train.json vs artifact.json vs the candidate's adapter digest.
    train_digests: dict[str, str] = {}
    if train is not None:
        found, train_digests = _check_refs(run_dir, train.adapter, "train.json")
        problems += found
    if artifact is not None:
        found, art_digests = _check_refs(run_dir, artifact.adapter, "artifact.json")
        problems += [p for p in found if p not in problems]
        for path, digest in art_digests.items():
            if path in train_digests and train_digests[path] != digest:
                problems.append(f"artifact.json: {path} digest differs from train.json")
        if cand_rec is not None and cand_rec.model.base_digest != artifact.base_digest:
            problems.append("artifact.json: base_digest differs from eval-candidate.json model.base_digest")
        if artifact.shipped and ev.decision is not None and ev.decision.decision != "ship":
            problems.append(f"artifact.json: shipped, but decision.json says {ev.decision.decision}")
    if cand_rec is not None and cand_rec.model.adapter_digest and (run_dir / "adapter").is_dir():
        actual = _tree_digest_uncached(run_dir / "adapter")
        if actual != cand_rec.model.adapter_digest:
            problems.append(
                f"adapter/: digest {actual[:12]} does not match eval-candidate.json model.adapter_digest "
                f"({cand_rec.model.adapter_digest[:12]})"
            )

    # Digests shared between records.
    if base_rec is not None and cand_rec is not None:
        if base_rec.model.base_digest != cand_rec.model.base_digest:
            problems.append("eval-candidate.json: model.base_digest differs from eval-baseline.json")
        if base_rec.heldout_digest != cand_rec.heldout_digest:
            problems.append("eval-candidate.json: heldout_digest differs from eval-baseline.json")
    held = dataset.splits.get("heldout") if dataset is not None else None
    for rec in (base_rec, cand_rec):
        if rec is not None and held is not None and rec.heldout_digest and rec.heldout_digest != held.digest:
            problems.append(f"eval-{rec.role}.json: heldout_digest differs from dataset.json splits.heldout")

    manifest = ev.manifest
    if manifest is not None:
        for name, digest in sorted(manifest.files.items()):
            p = run_dir / name
            if not p.resolve().is_relative_to(run_dir.resolve()):
                problems.append(f"{name}: leads outside the run directory (named by run_manifest.json)")
            elif not p.exists():
                problems.append(f"{name}: missing (named by run_manifest.json)")
            elif p.is_file() and hashing.hash_file(p) != digest:
                problems.append(f"{name}: digest does not match run_manifest.json")
            elif p.is_dir() and _tree_digest_uncached(p) != digest:
                problems.append(f"{name}: digest does not match run_manifest.json")

    # The decision must still follow from the evidence.
    decision, config = ev.decision, ev.config
    stop = stops.get("eval-candidate")
    if decision is not None and isinstance(stop, dict) and isinstance(stop.get("verdict"), dict):
        verdict = stop["verdict"]
        if decision.decision != verdict.get("decision") or decision.reason != verdict.get("reason"):
            problems.append(f"decision.json: says {decision.decision} ({decision.reason}), but the check that stopped "
                            f"the candidate, {stop.get('stopped_by')}, says {verdict.get('decision')} "
                            f"({verdict.get('reason')})")
    if decision is not None and config is not None and base_rec is not None and cand_rec is not None:
        evals = config.evals or {}
        primary = evals.get("primary")
        if primary:
            try:
                again = decide(
                    base_rec, cand_rec, samples, train, config.criteria or {}, primary,
                    list(evals.get("regression") or []), train_log=ev.log if "train.log" not in ev.unreadable and (run_dir / "train.log").is_file() else None,
                    problems=[p for p in problems if p.startswith("samples/")],
                )
            except FactoryError as e:
                problems.append(f"decision.json: cannot re-run the gate: {e}")
            else:
                problems.extend(rederive(decision, again))
    return problems
