"""What every config section is made of: ``Section``, ``Duration``, ``ConfigError``.

Every part that has settings (sources, stores, detection, alerting) builds its sections from
these, so this module sits at the bottom and imports nothing of farmwatch but the duration
parser. Problems are reported one line each, as ``file: key: what is wrong (what is expected)``,
so a wrong config is fixed in one round trip instead of one error at a time.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator

from farmwatch.durations import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written in the config as a string such as ``500ms`` or ``14d``."""


def _compiles(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


Regex = Annotated[str, AfterValidator(_compiles)]
"""A regular expression (Python's syntax), checked when the config is read."""


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Section(BaseModel):
    """Base of every config section: unknown keys are errors (they are almost always typos).

    ``secrets`` names the secrets a section needs (``"token"``): the config says where each one is,
    ``token_env`` (an environment variable) or ``token_file``, and the part reads it with
    ``farmwatch.credentials.section_secret``. The secret itself in the config is an error that
    says so, instead of "unknown key".
    """

    # The docstring under each field documents it (docs/config.md, ``config.reference.attribute_docs``);
    # pydantic's use_attribute_docstrings would parse every section's source at every start instead.
    model_config = ConfigDict(extra="forbid", frozen=True)
    secrets: ClassVar[tuple[str, ...]] = ()
    secret_aliases: ClassVar[dict[str, str]] = {}
    """Other names users give a secret (Zabbix' ``api_token`` for ``token``)."""

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in (*cls.secrets, *cls.secret_aliases):
                if key in data:
                    name = cls.secret_aliases.get(key, key)
                    raise ValueError(f"{key}: secrets never go into the config; name an environment variable or a "
                                     f"file that holds it instead ({name}_env or {name}_file)")
        return data


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




__all__ = ["ConfigError", "Duration", "Regex", "Section", "describe_error", "key_path", "validation_problems"]
