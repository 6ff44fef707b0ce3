"""Answer validators: checks on a finished answer, so an empty or ill-formed answer is a failure.

A validator takes the answer's text and returns None when it passes, or a short message saying
what is wrong. Routes name them in the config (``validators = ["non_empty", "json",
{regex = "..."}, {json_schema = {...}}]``); callers may add their own functions per task type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Validator", "build", "check", "non_empty", "valid_json", "regex", "json_schema"]

Validator = Callable[[str], str | None]


def non_empty(text: str) -> str | None:
    """The answer has some non-blank text."""
    return None if text.strip() else "answer is empty"


def valid_json(text: str) -> str | None:
    """The answer parses as JSON."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"answer is not valid JSON: {exc.msg}"
    return None


def regex(pattern: str) -> Validator:
    """The answer contains a match of ``pattern`` (use ^...$ to require a full match)."""
    compiled = re.compile(pattern, re.DOTALL)

    def check_regex(text: str) -> str | None:
        return None if compiled.search(text) else f"answer does not match {pattern!r}"

    return check_regex


def json_schema(schema: dict[str, Any]) -> Validator:
    """The answer is JSON that validates against ``schema`` (JSON Schema, any draft jsonschema knows)."""
    import jsonschema

    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)

    def check_schema(text: str) -> str | None:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"answer is not valid JSON: {exc.msg}"
        error = jsonschema.exceptions.best_match(validator.iter_errors(document))
        return None if error is None else f"answer does not match the schema: {error.message}"[:200]

    return check_schema


_NAMED: dict[str, Validator] = {"non_empty": non_empty, "json": valid_json}


def build(specs: Sequence[Any]) -> list[Validator]:
    """Validators from their config form; raises ValueError naming what is wrong."""
    out: list[Validator] = []
    for spec in specs:
        if isinstance(spec, str) and spec in _NAMED:
            out.append(_NAMED[spec])
        elif isinstance(spec, dict) and len(spec) == 1 and "regex" in spec and isinstance(spec["regex"], str):
            try:
                out.append(regex(spec["regex"]))
            except re.error as exc:
                raise ValueError(f"invalid regex {spec['regex']!r}: {exc}") from None
        elif isinstance(spec, dict) and len(spec) == 1 and isinstance(spec.get("json_schema"), dict):
            import jsonschema

            try:
                out.append(json_schema(spec["json_schema"]))
            except jsonschema.exceptions.SchemaError as exc:
                raise ValueError(f"invalid JSON schema: {exc.message}") from None
        else:
            raise ValueError(
                f"unknown validator {spec!r}; use 'non_empty', 'json', {{regex = ...}} or {{json_schema = ...}}"
            )
    return out


def check(validators: Sequence[Validator], text: str) -> str | None:
    """The first failure message, or None when every validator passes."""
    for validate in validators:
        problem = validate(text)
        if problem:
            return problem
    return None
