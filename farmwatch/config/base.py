"""What every config section is made of: ``Section``, ``Duration``, ``ConfigError``.

Every part that has settings (sources, stores, detection, alerting) builds its sections from
these, so this module sits at the bottom and imports nothing of farmwatch but the duration
parser. Problems are reported one line each, as ``file: key: what is wrong (what is expected)``,
so a wrong config is fixed in one round trip instead of one error at a time.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from farmwatch.durations import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written in the config as a string such as ``500ms`` or ``14d``."""


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Section(BaseModel):
    """Base of every config section: unknown keys are errors (they are almost always typos)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def key_path(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "(top level)"


def describe_error(err: dict[str, Any]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key (not a setting of this section; check the spelling)"
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if "got " not in msg and not isinstance(err.get("input"), (dict, list)):
        msg += f" (got {err.get('input')!r})"
    return msg


def validation_problems(exc: ValidationError, where: str, prefix: tuple[Any, ...] = ()) -> list[str]:
    """Pydantic's errors as our one-liners, with the key path relative to the whole file."""
    return [f"{where}: {key_path(prefix + tuple(e['loc']))}: {describe_error(e)}" for e in exc.errors()]




__all__ = ["ConfigError", "Duration", "Section", "describe_error", "key_path", "validation_problems"]
