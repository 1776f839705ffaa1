"""Options that plugins own: pydantic models checked at plan time, errors on one line.

Every section of a recipe that a plugin reads (a family's base options, a trainer's
options, a dataset source's options, a suite's options, a placed stage's config)
is validated against a pydantic model the plugin owns (`extra="forbid"`), before
anything builds. `validate` turns the first validation error into one line that
names the field by its path in the recipe and, for an unknown key, lists the
known ones.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from factory.errors import FactoryError

M = TypeVar("M", bound=BaseModel)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The nested model that holds the field at `loc` (for listing its known fields)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(cur, "model_fields", None)
        if not fields or part not in fields:
            # an alias, or a dict key: look the field up by alias
            match = [f for f in (fields or {}).values() if f.alias == part]
            if not match:
                return None
            ann = match[0].annotation
        else:
            ann = fields[part].annotation
        nxt = None
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                nxt = cand
        if nxt is None:
            return None
        cur = nxt
    return cur


def known_fields(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items() if not f.exclude]


def one_line(err: ValidationError, model: type[BaseModel] | None = None, prefix: str = "",
             noun: str = "option") -> str:
    """The first error of a ValidationError as `prefix.field.path: message`, on one line; an unknown
    key lists the known ones (`unknown option; known: ...`, or another `noun`)."""
    first = err.errors()[0]
    # discriminated unions put their tag in the path ("__one__", "__steps__"): not a field
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("__")))
    path = ".".join(str(p) for p in loc)
    field = f"{prefix}.{path}" if prefix and path else (prefix or path or "(root)")
    msg = first["msg"]
    if first["type"] == "missing":
        msg = "required field is missing"
    elif first["type"] == "extra_forbidden" and model is not None:
        holder = _model_at(model, loc)
        if holder is not None:
            msg = f"unknown {noun}; known: {', '.join(known_fields(holder))}"
    return f"{field}: {msg}"


def validate(model: type[M], data: Any, field: str = "", where: str = "") -> M:
    """Validate `data` against `model`; a failure is one FactoryError line naming `where: field.path`."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as e:
        line = one_line(e, model, field)
        raise FactoryError(f"{where}: {line}" if where else line) from None


def dump(model: type[BaseModel], data: Any, field: str = "", where: str = "") -> dict[str, Any]:
    """Validated options as JSON-ready data (defaults filled in)."""
    return validate(model, data, field, where).model_dump(mode="json", by_alias=True)
