"""The `dataset` stage and the `jsonl` dataset source.

The dataset stage turns raw rows from one or more dataset sources into the two
files training and evaluation read, `train.jsonl` and `heldout.jsonl`, plus
`dataset.json` saying where the rows came from and what happened to them. The
same stage kind builds a recipe's own data (`data:` in the recipe) and the
breadth corpus (`breadth:`).

Top to bottom, for every raw row:

1. map it to a row {"id", "prompt", "answer", optional "skill", "meta"}:
   trace rows ({"request", "action"}) become prompt and answer; rows that
   already have prompt and answer pass through;
2. drop it, counting the reason, when it is `malformed`, `empty`, fails the
   contract (json-action: `invalid_action`, `unknown_action`; json-schema:
   `invalid_json`, `schema_mismatch`), is `non_ascii` (when `ascii_only`), or
   `too_long` (prompt and answer over `max_chars`) - the first reason that
   applies is the one counted;
3. dedup on the normalized prompt (lower case, whitespace collapsed): rows
   that differ only in case or spacing are one row, so near-duplicates cannot
   straddle the split; the cleanest spelling is kept, whatever the row order;
4. split by a hash of the normalized prompt: a row lands in held-out when the
   first 64 bits of its xxh3-128 digest, read as a fraction, fall below
   `heldout_fraction`. A row's split depends on its own content only, so adding
   or reordering rows never moves an existing row (a locked split). A source
   may pin its rows to one split with `options: {split: heldout}` (a curated
   eval set, say);
5. check contamination: no normalized held-out prompt may appear in train; the
   stage fails if one does (two sources pinned to different splits sharing a
   prompt, for instance).

Output rows are sorted by their split hash, so the files' bytes depend on the
set of rows only, never on their order in the sources.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from factory import hashing
from factory.errors import FactoryError
from factory.hookspecs import hookimpl
from factory.records import DatasetCounts, DatasetRecord, DatasetSource, FileRef, write_record
from factory.stages import StageKind

__version__ = "1.0"

REASONS = ("malformed", "empty", "invalid_action", "unknown_action", "non_ascii", "too_long", "duplicate")
SPLITS = ("train", "heldout")


# --- configuration -------------------------------------------------------------

class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="a registered dataset source: jsonl, breadth-mix, ...")
    path: str | None = Field(None, description="project-relative path of the source's file, if it reads one")
    options: dict[str, Any] = Field(default_factory=dict, description="the source's own options, plus `split`")
    version: str | None = Field(None, description="the source plugin's version (in the stage key)")


class DatasetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    max_chars: int = Field(512, gt=0, description="drop rows whose prompt and answer together are longer")
    ascii_only: bool = Field(True, description="drop rows with non-ASCII text")
    actions: dict[str, list[str]] | None = Field(
        None,
        description="json-action contract: action name -> argument names; a trailing '?' marks an optional one",
    )
    json_schema: dict[str, Any] | None = Field(
        None, alias="schema", description="json-schema contract: the JSON Schema every answer must meet")


class DatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[SourceSpec] = Field(min_length=1)
    contract: str | None = Field(None, description="the row contract rows must meet (see CONTRACTS)")
    heldout_fraction: float = Field(gt=0.0, lt=1.0, description="share of distinct rows held out")
    options: DatasetOptions = Field(default_factory=DatasetOptions)

    # The plan validates a data section against this model: these make an unknown contract, or one
    # without the options it needs, a plan-time error at the section's own field.
    @field_validator("contract")
    @classmethod
    def _known_contract(cls, v: str | None) -> str | None:
        problem = contract_problem(v, {}) if v is not None and v not in CONTRACTS else None
        if problem is not None:
            raise PydanticCustomError("unknown_contract", "{msg}", {"msg": problem[1]})
        return v

    @field_validator("options")
    @classmethod
    def _contract_options(cls, v: "DatasetOptions", info: ValidationInfo) -> "DatasetOptions":
        problem = contract_problem(info.data.get("contract"), v.model_dump(by_alias=True, exclude_none=True))
        if problem is not None:
            field = problem[0].removeprefix("options.")
            raise PydanticCustomError("contract_options", "{msg}", {"msg": f"{field}: {problem[1]}"})
        return v


def check_config(config: dict[str, Any], where: str = "data") -> DatasetConfig:
    """Validate a dataset stage config; errors name the field under `where` (e.g. 'recipes/x.yaml: data')."""
    from factory import options

    check_contract(config.get("contract"), config.get("options") or {}, where)  # first: its fields are exact
    cfg = options.validate(DatasetConfig, config, where)
    for i, src in enumerate(cfg.sources):
        split = src.options.get("split")
        if split is not None and split not in SPLITS:
            raise FactoryError(f"{where}.sources.{i}.options.split: must be one of {', '.join(SPLITS)}, not {split!r}")
    return cfg


# --- contracts -----------------------------------------------------------------
# A contract says what a row's answer must be. Without one (contract: null) a row needs a
# non-empty string prompt and a non-empty answer; an answer that is not a string is kept as
# canonical JSON. A contract checks each answer, keeps it in canonical form, and names the
# reason when it drops one.

class JsonActionContract(BaseModel):
    """json-action: answers are {"action": <name>, "args": {...}} with a known action and its arguments."""

    model_config = ConfigDict(extra="ignore")

    actions: dict[str, list[str]] = Field(
        min_length=1, description="action name -> argument names; a trailing '?' marks an optional one")


class JsonSchemaContract(BaseModel):
    """json-schema: answers are JSON values valid under the recipe's JSON Schema (data.options.schema)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    json_schema: dict[str, Any] = Field(alias="schema", description="the JSON Schema every answer must meet")
    _validator: Any = PrivateAttr(None)

    def validator(self) -> Any:
        """The schema's validator, built once per options object (a dataset stage checks many rows)."""
        if self._validator is None:
            self._validator = schema_validator(self.json_schema)
        return self._validator


def _parse_answer(answer: Any) -> tuple[Any, bool]:
    if not isinstance(answer, str):
        return answer, True
    try:
        return json.loads(answer), True
    except ValueError:
        return None, False


def _check_action_answer(answer: Any, opts: JsonActionContract) -> tuple[Any, str | None]:
    return check_action(answer, opts.actions)


def schema_validator(schema: dict[str, Any]) -> Any:
    """A jsonschema validator for `schema` (the draft the schema names, else the latest)."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _check_schema_answer(answer: Any, opts: JsonSchemaContract) -> tuple[Any, str | None]:
    value, ok = _parse_answer(answer)
    if not ok:
        return None, "invalid_json"
    if not opts.validator().is_valid(value):
        return None, "schema_mismatch"
    return value, None


class Contract:
    """A row contract: the options it reads from data.options, and the checker of one answer."""

    def __init__(self, options: type[BaseModel], check: Any, reasons: tuple[str, ...], summary: str) -> None:
        self.options, self.check, self.reasons, self.summary = options, check, reasons, summary


CONTRACTS: dict[str, Contract] = {
    "json-action": Contract(JsonActionContract, _check_action_answer, ("invalid_action", "unknown_action"),
                            'answers are {"action", "args"} with an action from data.options.actions'),
    "json-schema": Contract(JsonSchemaContract, _check_schema_answer, ("invalid_json", "schema_mismatch"),
                            "answers are JSON valid under data.options.schema"),
}


def contract_problem(name: str | None, options: dict[str, Any]) -> tuple[str, str] | None:
    """What is wrong with a contract and its options: (field under the section, message), or None."""
    if name is None:
        return None
    contract = CONTRACTS.get(name)
    if contract is None:
        known = ", ".join(sorted(CONTRACTS))
        return "contract", f"unknown contract {name!r}; known: {known}, or null (prompt/answer rows, no answer check)"
    try:
        opts = contract.options.model_validate(options or {})
    except ValidationError as e:
        from factory import options

        field, _, msg = options.one_line(e, contract.options, "options").partition(": ")
        if e.errors()[0]["type"] == "missing":
            msg = "required by this contract"
        return field, f"{msg} (contract {name}: {contract.summary})"
    if isinstance(opts, JsonSchemaContract):
        import jsonschema

        try:
            schema_validator(opts.json_schema)
        except jsonschema.SchemaError as e:
            where = "/".join(str(p) for p in e.path)
            return f"options.schema{'.' + where if where else ''}", f"not a valid JSON Schema: {e.message}"
    return None


def check_contract(name: str | None, options: dict[str, Any], field: str = "data") -> None:
    """Plan-time check of a contract and the options it needs; a FactoryError names the field.

    `field` is the recipe section (`data`, or `<file>: data`); errors name `<field>.contract` or
    `<field>.options.<option>` and, for an unknown contract, list the known ones.
    """
    problem = contract_problem(name, options)
    if problem is not None:
        raise FactoryError(f"{field}.{problem[0]}: {problem[1]}")


def contract_options(cfg: "DatasetConfig") -> BaseModel | None:
    if cfg.contract is None:
        return None
    return CONTRACTS[cfg.contract].options.model_validate(cfg.options.model_dump(by_alias=True))


# --- rows ----------------------------------------------------------------------

def normalize(text: str) -> str:
    """The form two prompts are compared in: lower case, runs of whitespace as one space, trimmed."""
    return " ".join(text.lower().split())


def split_point(normalized: str) -> float:
    """Where a row falls in [0, 1): the first 64 bits of the xxh3-128 of its normalized prompt."""
    return int(hashing.digest_bytes(normalized.encode("utf-8"))[:16], 16) / 2.0**64


def canonical_action(action: dict[str, Any]) -> str:
    return json.dumps(action, sort_keys=True, separators=(",", ":"))


def check_action(answer: Any, actions: dict[str, list[str]]) -> tuple[dict[str, Any] | None, str | None]:
    """Parse and check one action against the known actions; (action, None) or (None, reason)."""
    if isinstance(answer, str):
        try:
            action = json.loads(answer)
        except ValueError:
            return None, "invalid_action"
    else:
        action = answer
    if not isinstance(action, dict) or set(action) != {"action", "args"}:
        return None, "invalid_action"
    name, args = action["action"], action["args"]
    if not isinstance(name, str) or not isinstance(args, dict):
        return None, "invalid_action"
    if name not in actions:
        return None, "unknown_action"
    allowed = {a.rstrip("?") for a in actions[name]}
    required = {a for a in actions[name] if not a.endswith("?")}
    if not required <= set(args) or not set(args) <= allowed:
        return None, "invalid_action"
    for value in args.values():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "":
            return None, "invalid_action"
    return action, None


def to_row(raw: dict[str, Any], cfg: DatasetConfig, fallback_id: str,
           copts: BaseModel | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """Map one raw row to a dataset row; (row, None) or (None, drop reason)."""
    if "_invalid" in raw:
        return None, "malformed"
    prompt = raw.get("prompt", raw.get("request"))
    answer = raw.get("answer", raw.get("chosen", raw.get("action")))
    if not isinstance(prompt, str) or answer is None:
        return None, "malformed"
    if not prompt.strip() or (isinstance(answer, str) and not answer.strip()):
        return None, "empty"
    row: dict[str, Any] = {"id": str(raw.get("id") or fallback_id), "prompt": prompt}
    check_text = prompt
    if cfg.contract == "json-action":
        action, reason = check_action(answer, cfg.options.actions or {})
        if action is None:
            return None, reason
        row["answer"] = canonical_action(action)
        row["skill"] = raw.get("skill") if isinstance(raw.get("skill"), str) else action["action"]
        check_text += json.dumps(action, ensure_ascii=False)  # escapes would hide non-ASCII values
    elif cfg.contract is not None:
        value, reason = CONTRACTS[cfg.contract].check(answer, copts or contract_options(cfg))
        if reason is not None:
            return None, reason
        row["answer"] = canonical_action(value)
        if isinstance(raw.get("skill"), str):
            row["skill"] = raw["skill"]
        check_text += json.dumps(value, ensure_ascii=False)
    else:
        row["answer"] = answer if isinstance(answer, str) else canonical_action(answer)
        if isinstance(raw.get("skill"), str):
            row["skill"] = raw["skill"]
        check_text += row["answer"]
    if "rejected" in raw:  # a preference pair: {prompt, chosen, rejected}
        rejected = raw["rejected"]
        if rejected is None or (isinstance(rejected, str) and not rejected.strip()):
            return None, "empty"
        if not isinstance(rejected, str):
            rejected = canonical_action(rejected) if isinstance(rejected, dict) else json.dumps(rejected)
        elif cfg.contract == "json-action":
            parsed, _ = check_action(rejected, cfg.options.actions or {})
            rejected = canonical_action(parsed) if parsed is not None else rejected
        if rejected == row["answer"]:
            return None, "same_pair"
        row["rejected"] = rejected
        check_text += rejected
    if isinstance(raw.get("meta"), dict):
        row["meta"] = raw["meta"]
    if cfg.options.ascii_only and not check_text.isascii():
        return None, "non_ascii"
    if len(prompt) + len(row["answer"]) > cfg.options.max_chars:
        return None, "too_long"
    return row, None


def _spelling_rank(row: dict[str, Any]) -> tuple:
    """Prefer the cleanest spelling among near-duplicates: tidy whitespace, fewest capitals, then text."""
    p = row["prompt"]
    return (p != " ".join(p.split()), sum(c.isupper() for c in p), p, row["answer"], row["id"])


class Prepared:
    """The result of preparing rows: the two splits, drop counts and examples, per-source row counts."""

    def __init__(self) -> None:
        self.train: list[dict[str, Any]] = []
        self.heldout: list[dict[str, Any]] = []
        self.dropped: dict[str, int] = {r: 0 for r in REASONS}
        self.dropped_examples: dict[str, list[str]] = {}
        self.input_rows = 0
        self.source_rows: list[int] = []

    def drop(self, reason: str, row_id: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1  # same_pair only where pairs are read
        examples = self.dropped_examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(row_id)


def prepare(sources: list[tuple[str | None, Iterable[dict[str, Any]]]], cfg: DatasetConfig) -> Prepared:
    """Validate, dedup and split rows. `sources` holds (pinned split or None, raw rows) per source."""
    out = Prepared()
    copts = contract_options(cfg)
    groups: dict[str, list[tuple[str | None, dict[str, Any]]]] = {}
    for s, (pin, rows) in enumerate(sources):
        n = 0
        for raw in rows:
            n += 1
            row, reason = to_row(raw, cfg, fallback_id=f"{s}:{n}", copts=copts)
            if row is None:
                out.drop(reason or "malformed", str(raw.get("id") or f"{s}:{n}"))
                continue
            groups.setdefault(normalize(row["prompt"]), []).append((pin, row))
        out.source_rows.append(n)
        out.input_rows += n

    placed: list[tuple[str, str, dict[str, Any]]] = []  # (split hash, split, row)
    for key, members in groups.items():
        point = split_point(key)
        order = hashing.digest_bytes(key.encode("utf-8"))
        pins = {pin for pin, _ in members if pin}
        if pins:
            # pinned rows win over unpinned copies; two pins that disagree are kept so the check below fails
            keep = [(pin, min((r for p, r in members if p == pin), key=_spelling_rank)) for pin in sorted(pins)]
        else:
            split = "heldout" if point < cfg.heldout_fraction else "train"
            keep = [(split, min((r for _, r in members), key=_spelling_rank))]
        kept_ids = {id(r) for _, r in keep}
        for _, r in members:
            if id(r) not in kept_ids:
                out.drop("duplicate", r["id"])
        placed += [(order, split, r) for split, r in keep]

    placed.sort(key=lambda t: (t[0], t[1], t[2]["id"]))
    seen_ids: dict[str, int] = {}
    for _, split, row in placed:
        count = seen_ids.get(row["id"], 0)
        seen_ids[row["id"]] = count + 1
        if count:  # ids from different sources may coincide; keep them unique in the output
            row = {**row, "id": f"{row['id']}#{count + 1}"}
        (out.heldout if split == "heldout" else out.train).append(row)
    return out


def empty_split_message(where: str, prepared: Prepared, cfg: DatasetConfig) -> str:
    """Why a split came out empty, in one line: the drop counts by reason, with the first ids and a hint."""
    msg = (f"{where}: the split left {len(prepared.train)} train and {len(prepared.heldout)} held-out rows "
           f"of {prepared.input_rows} input rows")
    drops = sorted(((n, r) for r, n in prepared.dropped.items() if n), reverse=True)
    if drops:
        parts = [f"{r} {n} (e.g. {', '.join(prepared.dropped_examples.get(r, [])[:3])})" for n, r in drops]
        msg += f"; dropped: {'; '.join(parts)}"
        top = drops[0][1]
        if cfg.contract and top in CONTRACTS[cfg.contract].reasons:
            msg += (f"; the {cfg.contract} contract wants: {CONTRACTS[cfg.contract].summary} (other JSON answers: "
                    "contract json-schema; plain prompt/answer rows: contract null)")
        elif top == "malformed":
            msg += "; a row needs a string prompt (or request) and an answer (or chosen, or action)"
        elif top == "too_long":
            msg += f"; raise data.options.max_chars (now {cfg.options.max_chars})"
        elif top == "non_ascii":
            msg += "; set data.options.ascii_only: false to keep non-ASCII rows"
    else:
        msg += "; no row was dropped: add data or change heldout_fraction"
    return msg


def contamination(train: list[dict[str, Any]], heldout: list[dict[str, Any]]) -> list[str]:
    """Normalized held-out prompts that also appear in train."""
    seen = {normalize(r["prompt"]) for r in train}
    return sorted({normalize(r["prompt"]) for r in heldout} & seen)


def dump_rows(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(
        json.dumps(r, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n" for r in rows
    )


# --- the stage -----------------------------------------------------------------

def _where(ctx: Any) -> str:
    section = "breadth" if ctx.stage == "breadth" else "data"
    recipe_path = getattr(ctx.recipe, "path", None)
    if not recipe_path:
        return section
    try:
        recipe_path = Path(recipe_path).resolve().relative_to(Path(ctx.root).resolve())
    except ValueError:
        pass
    return f"{recipe_path}: {section}"


def _source_digest(files: list[Path], rows: list[dict[str, Any]]) -> str:
    if len(files) == 1:
        return hashing.digest_file(files[0])
    if files:
        return hashing.digest_json([hashing.digest_file(f) for f in files])
    return hashing.digest_bytes(b"".join(hashing.canonical_json(r) + b"\n" for r in rows))


def build_dataset(ctx: Any) -> None:
    """Build train.jsonl, heldout.jsonl and dataset.json from the configured sources."""
    where = _where(ctx)
    cfg = check_config(ctx.config, where)
    read: list[tuple[str | None, list[dict[str, Any]]]] = []
    source_records = []
    for spec in cfg.sources:
        source = ctx.registry.sources.get(spec.kind)
        options = {k: v for k, v in spec.options.items() if k != "split"}
        raw_spec = {"kind": spec.kind, "path": spec.path, "options": options}
        rows = list(source.read(raw_spec, ctx.root))
        files = [Path(f) for f in source.files(raw_spec, ctx.root)]
        read.append((spec.options.get("split"), rows))
        pinned = {"split": spec.options["split"]} if spec.options.get("split") else {}
        source_records.append(
            DatasetSource(kind=spec.kind, path=spec.path or "", rows=len(rows), digest=_source_digest(files, rows), **pinned)
        )

    prepared = prepare(read, cfg)
    overlap = contamination(prepared.train, prepared.heldout)
    if overlap:
        raise FactoryError(
            f"{where}: contamination: {len(overlap)} held-out prompt(s) also appear in train after "
            f"normalization, e.g. {overlap[0]!r}; remove them from one of the sources"
        )
    if not prepared.train or not prepared.heldout:
        raise FactoryError(empty_split_message(where, prepared, cfg))

    out = Path(ctx.out)
    splits = {}
    for name, rows in (("train", prepared.train), ("heldout", prepared.heldout)):
        data = dump_rows(rows)
        (out / f"{name}.jsonl").write_bytes(data)
        splits[name] = FileRef(path=f"{name}.jsonl", digest=hashing.digest_bytes(data), size=len(data))

    by_skill: dict[str, dict[str, int]] = {}
    for name, rows in (("train", prepared.train), ("heldout", prepared.heldout)):
        for r in rows:
            if "skill" in r:
                by_skill.setdefault(r["skill"], {"train": 0, "heldout": 0})[name] += 1
    counts = DatasetCounts(
        input_rows=prepared.input_rows,
        train_rows=len(prepared.train),
        heldout_rows=len(prepared.heldout),
        dropped_rows=sum(prepared.dropped.values()),
        dropped_by_reason=prepared.dropped,
        by_skill=dict(sorted(by_skill.items())),
    )
    record = DatasetRecord(
        sources=source_records,
        processing={
            "stage_version": __version__,
            "contract": cfg.contract,
            "actions": cfg.options.actions,
            **({"schema": cfg.options.json_schema} if cfg.options.json_schema is not None else {}),
            "heldout_fraction": cfg.heldout_fraction,
            "max_chars": cfg.options.max_chars,
            "ascii_only": cfg.options.ascii_only,
            "checks": list(REASONS) + [r for r in (CONTRACTS[cfg.contract].reasons if cfg.contract else ())
                                       if r not in REASONS],
            "normalize": "lower case, whitespace collapsed and trimmed",
            "dedup": "one row per normalized prompt; the cleanest spelling is kept",
            "split": "held out when the first 64 bits of xxh3-128(normalized prompt) / 2^64 < heldout_fraction",
        },
        counts=counts,
        splits=splits,
        contamination={"checked": True, "method": "normalized prompt", "overlap": 0},
        dropped_examples=prepared.dropped_examples,
    )
    write_record(out / "dataset.json", record)
    ctx.log(
        f"dataset: {counts.train_rows} train, {counts.heldout_rows} held-out, {counts.dropped_rows} dropped "
        f"({', '.join(f'{k} {v}' for k, v in prepared.dropped.items() if v) or 'none'})"
    )


# --- the jsonl source ----------------------------------------------------------

class JsonlOptions(BaseModel):
    """Options of a `jsonl` source (recipe: <section>.sources[i].options); `split` is the dataset stage's."""

    model_config = ConfigDict(extra="forbid")


MAX_LINE_BYTES = 1 << 20  # one row of a task's data is a few hundred bytes; a 1 MiB line is not a row


def check_jsonl(path: Path, min_rows: int = 2) -> int:
    """Cheap plan-time checks of a JSON-lines file: UTF-8, no giant line, enough JSON objects.

    A few malformed lines among good ones are the dataset stage's business (counted drops); a file
    that is empty, not UTF-8, not JSON lines at all, or has fewer than `min_rows` rows is an error
    now, naming the file and the line. Returns the number of JSON-object lines.
    """
    rows, bad_first = 0, None
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if len(line) > MAX_LINE_BYTES:
                raise FactoryError(f"{path.name}: line {n} is {len(line):,} bytes; rows are at most {MAX_LINE_BYTES:,}")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise FactoryError(f"{path.name}: line {n}: not UTF-8 (byte {e.start})") from None
            if not text.strip():
                continue
            try:
                ok = isinstance(json.loads(text), dict)
            except ValueError:
                ok = False
            if ok:
                rows += 1
            elif bad_first is None:
                bad_first = n
    if rows == 0 and bad_first is None:
        raise FactoryError(f"{path.name}: empty; a jsonl source needs one JSON object per line")
    if rows == 0:
        raise FactoryError(f"{path.name}: line {bad_first}: not a JSON object, and no line is; "
                           "a jsonl source needs one JSON object per line")
    if rows < min_rows:
        raise FactoryError(f"{path.name}: {rows} row; a train/held-out split needs at least {min_rows}")
    return rows


class JsonlSource:
    """Rows from a JSON-lines file: one object per line; a line that is not one is passed on as malformed."""

    name = "jsonl"
    version = "1.0"
    Options = JsonlOptions

    def check(self, spec: dict[str, Any], root: Path) -> None:
        """Plan-time checks of the file (see check_jsonl); a source pinned to one split may hold one row."""
        from factory import hashing

        path = self._path(spec, root)
        pinned = bool((spec.get("options") or {}).get("split"))
        hashing.stat_cache().derived(f"jsonl-check-{int(pinned)}", str(path),
                                     lambda p: str(check_jsonl(Path(p), 1 if pinned else 2)))

    def _path(self, spec: dict[str, Any], root: Path) -> Path:
        if not spec.get("path"):
            raise FactoryError("data.sources: the jsonl source needs a path")
        from factory import options

        # split is the dataset stage's option; the plan checks the rest against JsonlOptions
        options.validate(JsonlOptions, {k: v for k, v in (spec.get("options") or {}).items() if k != "split"},
                         f"{spec['path']}: options")
        return source_file(spec, root, "data.sources: the jsonl source needs a path")

    def files(self, spec: dict[str, Any], root: Path) -> list[Path]:
        return [self._path(spec, root)]

    def read(self, spec: dict[str, Any], root: Path) -> Iterable[dict[str, Any]]:
        path = self._path(spec, root)
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                if not isinstance(row, dict):
                    yield {"id": f"{path.name}:{n}", "_invalid": f"line {n}: not a JSON object"}
                    continue
                row.setdefault("id", f"{path.name}:{n}")
                yield row


def source_file(spec: dict[str, Any], root: Path, no_path: str) -> Path:
    """The file a source's spec names (relative to root); `no_path` is the error when it names none."""
    if not spec.get("path"):
        raise FactoryError(no_path)
    path = Path(root) / spec["path"]
    if not path.is_file():
        raise FactoryError(f"{spec['path']}: no such file")
    return path


# --- registration --------------------------------------------------------------

@hookimpl
def register_dataset_sources(register):
    register(JsonlSource())


@hookimpl
def register_stage_kinds(register):
    register(
        StageKind(
            name="dataset",
            build=build_dataset,
            options=DatasetConfig,  # the recipe's data sections, checked at plan time
            description="validate, dedup and split rows from dataset sources into train.jsonl and heldout.jsonl",
        )
    )
