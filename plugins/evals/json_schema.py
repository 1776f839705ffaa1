"""The `json-schema` suite: outputs parsed as JSON, checked against a JSON Schema, compared with the answer.

For structured-output tasks other than the planner's actions (tickets routed to
{"queue", "priority", "product"}, say). Define an instance with the schema the
dataset's `json-schema` contract uses:

    evals:
      primary: tickets
      define: {tickets: {suite: json-schema, options: {schema: {...}}}}

Scores: `exact_match` (the parsed output equals the expected value; primary),
`valid_json` (the whole output parses), `schema_valid` (it parses and the
schema accepts it), `field_accuracy` over every leaf field of the expected
value, and `field.<path>` per field (`field.queue`, `field.priority`, ...).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from factory.interfaces import LoadedModel, SuiteOutput

from . import common, json_action


class JsonSchemaOptions(BaseModel):
    """Options of a `json-schema` instance (recipe: evals.define.<name>.options)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    json_schema: dict[str, Any] = Field(alias="schema", description="the JSON Schema a valid output meets")
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="generation budget; default: evals.max_new_tokens")

    @field_validator("json_schema")
    @classmethod
    def _is_a_schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        try:
            jsonschema.validators.validator_for(v).check_schema(v)
        except jsonschema.SchemaError as e:
            raise ValueError(f"not a valid JSON Schema: {e.message}") from None
        return v


class JsonSchemaSuite:
    name = "json-schema"
    version = "1.0"
    needs = "heldout"
    primary_metric = "exact_match"
    Options = JsonSchemaOptions
    # Modules whose code changes this suite's outputs, beyond its own (for stage keys).
    code_modules = ("factory_plugins.evals.common", "factory_plugins.evals.json_action", "factory.ml.generate",
                    "factory.ml.text")

    def evaluate(self, lm: LoadedModel, rows: list[dict[str, Any]], settings: dict[str, Any]) -> SuiteOutput:
        opts = JsonSchemaOptions.model_validate(settings.get("options") or {})
        outputs = common.generate(lm, [r["prompt"] for r in rows], settings, opts.max_new_tokens)
        return score(rows, outputs, opts.json_schema)


def score(rows: list[dict[str, Any]], outputs: list[str], schema: dict[str, Any]) -> SuiteOutput:
    """Score outputs against rows and the schema (pure: no model)."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    out = json_action.score(rows, outputs)
    flags = []
    for s in out.samples:
        got, ok = common.parse_json(s["output"])
        valid = bool(ok and validator.is_valid(got))
        s["values"]["schema_valid"] = float(valid)
        if not valid and ok:
            s["schema_error"] = next(iter(validator.iter_errors(got))).message.splitlines()[0][:200]
        flags.append(valid)
    scores = dict(out.scores)
    scores["schema_valid"] = common.rate_of(flags)
    return SuiteOutput(scores=scores, samples=out.samples, per_skill=out.per_skill)
