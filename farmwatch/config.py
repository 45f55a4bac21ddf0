"""TOML → validated settings.

Every problem in a config is reported, one line each, as ``file: key: what is wrong (what is
expected)``, so a wrong config is fixed in one round trip instead of one error at a time. Source
sections are validated by the source kind's own ``Config`` model (``farmwatch.sources.<kind>``),
so adding a source never touches this module.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

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

    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(Section):
    path: Path = Path("farmwatch.db")
    retention: Duration = Field(default=14 * 86400.0, gt=0)


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["plain", "json"] = "plain"


class Settings(Section):
    """A whole validated config. ``sources`` maps the section name to the kind's own Config."""

    store: StoreSettings = StoreSettings()
    log: LogSettings = LogSettings()
    sources: dict[str, Any] = Field(default_factory=dict)
    file: Path | None = None


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "(top level)"


def _describe(err: dict[str, Any]) -> str:
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
    return [f"{where}: {_loc(prefix + tuple(e['loc']))}: {_describe(e)}" for e in exc.errors()]


def parse(raw: dict[str, Any], where: str = "<config>", base_dir: Path | None = None) -> Settings:
    """Validate an already-parsed TOML document."""
    from farmwatch import sources as source_registry

    problems: list[str] = []
    raw = dict(raw)
    raw_sources = raw.pop("sources", {})
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems += validation_problems(exc, where)
        settings = Settings()

    validated: dict[str, Any] = {}
    if not isinstance(raw_sources, dict):
        problems.append(f"{where}: sources: expected tables [sources.<name>] (got {raw_sources!r})")
        raw_sources = {}
    for name, body in raw_sources.items():
        loc = ("sources", name)
        if not isinstance(body, dict):
            problems.append(f"{where}: {_loc(loc)}: expected a table with a 'kind' key")
            continue
        kind = body.get("kind")
        try:
            cls = source_registry.source_class(kind)
        except LookupError as exc:
            problems.append(f"{where}: {_loc(loc + ('kind',))}: {exc}")
            continue
        try:
            validated[name] = cls.Config.model_validate(body)
        except ValidationError as exc:
            problems += validation_problems(exc, where, loc)

    if problems:
        raise ConfigError(problems)
    store = settings.store
    if base_dir is not None and not store.path.is_absolute():
        store = store.model_copy(update={"path": base_dir / store.path})
    return settings.model_copy(update={"sources": validated, "store": store})


def load(path: str | Path) -> Settings:
    """Read and validate a config file; raises ConfigError listing every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read the config file: {exc.strerror or exc}"]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: not valid TOML: {exc}"]) from None
    settings = parse(raw, str(p), base_dir=p.resolve().parent)
    return settings.model_copy(update={"file": p})
