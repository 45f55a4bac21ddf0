"""Alert rule files (TOML) and rule evaluation.

A rule file holds ``[[rule]]`` tables and optionally one ``[defaults]`` table whose keys every rule
of that file starts from (``defaults.run_state = ["RUNNING"]`` for a file of in-run rules). Rules
come from the shipped ``alerts/`` folder and from folders or files named in the config; every
problem of every file is reported at once, one line each, ``file: rule[i] (Name): key: what is
expected``, as ``farmwatch.config.base.ConfigError`` does for the config.

The common keys (documented in ``docs/rules.md``, the syntax reference) are handled here; what a
kind's own keys mean and how it is evaluated is in ``farmwatch.alerting.kinds``. ``Rule.evaluate``
returns the elements for which the condition holds *now*; pending/firing/resolved, ``for``,
grouping and notification are the engine's business.
"""

from __future__ import annotations

import math
import re
import string
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from farmwatch.alerting import kinds
from farmwatch.alerting.kinds import Active, Python, Spec
from farmwatch.alerting.logkinds import LogNewTemplate, LogTemplateRate
from farmwatch.durations import format_duration
from farmwatch.config.base import ConfigError, Duration, describe_error, key_path
from farmwatch.model import Labels

if TYPE_CHECKING:
    from farmwatch.store.window import Window

__all__ = ["Active", "KINDS", "Rule", "load_rules", "parse_rules", "render_template", "SHIPPED"]

KINDS: dict[str, type[Spec]] = {**kinds.KINDS, "log_new_template": LogNewTemplate, "log_template_rate": LogTemplateRate}
"""Every rule kind by name: those of ``kinds`` and the ones on log message templates (``logkinds``,
which builds on ``kinds``)."""

SHIPPED = Path(__file__).resolve().parents[2] / "alerts"
"""The rules shipped with farmwatch (the top-level ``alerts/`` folder)."""

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
DEFAULT_SUMMARY = "{rule}: {value}"
_RULE_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*rule[ \t]*\]\]", re.MULTILINE)
_FORMATTER = string.Formatter()


class Common(BaseModel):
    """The keys every rule has, whatever its kind."""

    model_config = ConfigDict(extra="ignore")  # the kind's own keys are checked by the kind

    name: str
    kind: str
    for_: Duration = Field(default=0.0, alias="for", ge=0)
    severity: Literal["critical", "warning", "info"] = "warning"
    labels: dict[str, str] = {}
    summary: str = DEFAULT_SUMMARY
    description: str = ""
    run_state: Optional[tuple[str, ...]] = None
    grace: Duration = Field(default=0.0, ge=0)
    group_by: Optional[tuple[str, ...]] = None
    link: Optional[str] = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(f"expected a name of letters, digits and _ starting with a letter (got {value!r})")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value not in KINDS:
            raise ValueError(f"expected one of {', '.join(KINDS)} (got {value!r})")
        return value

    @field_validator("summary", "description", "link")
    @classmethod
    def _template(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            check_template(value)
        return value

    @field_validator("run_state", mode="before")
    @classmethod
    def _states(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


COMMON_KEYS = frozenset(f.alias or name for name, f in Common.model_fields.items())


@dataclass(eq=False)
class Rule:
    """One alert rule, validated; ``evaluate`` finds the elements for which it holds now.

    ``counts`` tallies why evaluations were skipped (``unknown_run_state``, ``run_state``,
    ``grace``) and per-kind skips (``zero_denominator``, ``small_baseline``, ``too_few_peers``),
    so that nothing is dropped silently.
    """

    name: str
    kind: str
    for_: float
    severity: str
    labels: Labels
    summary: str
    description: str
    run_state: tuple[str, ...] | None
    grace: float
    group_by: tuple[str, ...] | None
    link: str | None
    source: str
    spec: Spec
    counts: Counter = field(default_factory=Counter)
    where: str = field(default="", repr=False)
    """``file: rule[i]``: how problems with this rule are reported."""

    @property
    def params(self) -> Mapping[str, Any]:
        """A python rule's ``params`` table (empty for other kinds)."""
        return self.spec.params if isinstance(self.spec, Python) else {}

    def evaluate(self, window: Window, now: float) -> list[Active]:
        """The elements for which the condition holds at ``now``; [] outside the allowed run
        states, within ``grace`` of a transition, or when ``run_state`` is set and unknown."""
        with window.lock:  # the runner may be feeding the window from another thread
            return self._evaluate(window, now)

    def _evaluate(self, window: Window, now: float) -> list[Active]:
        if self.run_state is not None or self.grace:
            state, since = window.run_state(now)
            if self.run_state is not None:
                if state is None:
                    self.counts["unknown_run_state"] += 1
                    return []
                if state not in self.run_state:
                    self.counts["run_state"] += 1
                    return []
            if self.grace and since is not None and now - since < self.grace:
                self.counts["grace"] += 1
                return []
        self.counts["evaluated"] += 1
        if isinstance(self.spec, Python):
            return self.spec.call(window, now, self)
        return self.spec.find(window, now, self.counts)

    def alert_labels(self, active: Active) -> Labels:
        """The element's labels plus the rule's ``labels`` (the rule's win, as in Prometheus)."""
        if not self.labels:
            return active.labels
        merged = dict(active.labels)
        merged.update(self.labels)
        return tuple(sorted(merged.items()))

    def context(self, active: Active) -> dict[str, Any]:
        """What templates may name: labels, ``value``, named values, ``rule``, ``severity``, ``for``."""
        ctx: dict[str, Any] = dict(self.alert_labels(active))
        ctx.update(active.values)
        ctx.update(value=active.value, rule=self.name, severity=self.severity)
        ctx["for"] = format_duration(self.for_)
        return ctx

    def render(self, active: Active) -> tuple[str, str]:
        """(summary, description) for one element; never raises."""
        ctx = self.context(active)
        return render_template(self.summary, ctx), render_template(self.description, ctx)

    def render_link(self, active: Active) -> str | None:
        return None if self.link is None else render_template(self.link, self.context(active))

    def lookback(self) -> float:
        """Seconds of history the rule reads (the window's horizon is the maximum over rules)."""
        return self.spec.lookback()

    def names(self) -> set[str]:
        """Series names/globs the rule reads (plus the run state when it is gated on it)."""
        names = set(self.spec.names())
        if self.run_state is not None or self.grace:
            names |= {"daq.run_state", "daq.run_state_since"}
        return names


# ---- templates --------------------------------------------------------------------------------

def check_template(text: str) -> None:
    """Raise ValueError unless ``text`` uses only ``{name}``, ``{name:spec}`` or ``{name!r}``:
    no attribute or index access (``{x.__class__}``) and no nested fields in a spec."""
    try:
        parts = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc}); write {{{{ and }}}} for literal braces") from None
    for _, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if not NAME_FIELD.fullmatch(field_name):
            raise ValueError(f"{{{field_name}}}: only plain names are allowed in templates ({{unit}}, {{value:.1f}})")
        if spec and "{" in spec:
            raise ValueError(f"{{{field_name}:{spec}}}: nested fields in a format spec are not allowed")
        if conversion not in (None, "s", "r"):
            raise ValueError(f"{{{field_name}!{conversion}}}: only !s and !r conversions are allowed")


NAME_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def render_template(text: str, ctx: Mapping[str, Any]) -> str:
    """Fill a template safely: a missing name renders as ``?``, a format that does not fit the
    value falls back to the plain value, floats without a spec print with 4 significant digits;
    never raises, never looks up attributes or items."""
    try:
        parts = list(_FORMATTER.parse(text))
    except ValueError:
        return text
    out = []
    for literal, field_name, spec, conversion in parts:
        out.append(literal)
        if field_name is None:
            continue
        if not NAME_FIELD.fullmatch(field_name) or field_name not in ctx:
            out.append("?")
            continue
        out.append(_format(ctx[field_name], spec or "", conversion))
    return "".join(out)


def _format(value: Any, spec: str, conversion: str | None) -> str:
    if conversion == "r":
        value = repr(value)
    elif conversion == "s":
        value = str(value)
    if "{" in spec:
        spec = ""
    try:
        if not spec and isinstance(value, float):
            return _plain_float(value)
        return format(value, spec)
    except (ValueError, TypeError):
        return _plain_float(value) if isinstance(value, float) else str(value)


def _plain_float(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".4g")


# ---- loading ----------------------------------------------------------------------------------

def load_rules(paths: Iterable[str | Path]) -> list[Rule]:
    """Rules of the given files and folders (a folder: its ``*.toml``, sorted by name).

    Raises ``ConfigError`` listing every problem of every file, including rule names defined twice.
    """
    files: list[Path] = []
    problems: list[str] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files += sorted(path.glob("*.toml"))
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{path}: no such rule file or folder")
    rules: list[Rule] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(f"{path}: cannot read the rule file: {exc.strerror or exc}")
            continue
        try:
            rules += parse_rules(text, str(path))
        except ConfigError as exc:
            problems += exc.problems
    problems += _duplicates(rules)
    if problems:
        raise ConfigError(problems)
    return rules


def parse_rules(text: str, where: str = "<rules>") -> list[Rule]:
    """The rules of one TOML document; ``where`` names it in errors and in ``Rule.source``."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{where}: not valid TOML: {exc}"]) from None
    problems: list[str] = []
    # [[inhibit]] tables ship with their rules; the alerting service reads and checks them.
    unknown = sorted(set(doc) - {"rule", "defaults", "inhibit"})
    for key in unknown:
        problems.append(f"{where}: {key}: unknown top-level key (expected [[rule]] tables, an optional "
                        "[defaults] and [[inhibit]] tables)")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append(f"{where}: defaults: expected a table [defaults]")
        defaults = {}
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
        problems.append(f"{where}: rule: expected [[rule]] tables")
        raw_rules = []
    lines = [text.count("\n", 0, m.start()) + 1 for m in _RULE_HEADER.finditer(text)]
    rules: list[Rule] = []
    for i, raw in enumerate(raw_rules):
        line = lines[i] if i < len(lines) and len(lines) == len(raw_rules) else None
        source = f"{where}:{line}" if line else f"{where}:rule[{i}]"
        rule, found = _build({**defaults, **raw}, f"{where}: rule[{i}]", source)
        problems += found
        if rule is not None:
            rules.append(rule)
    problems += _duplicates(rules)
    if problems:
        raise ConfigError(problems)
    return rules


def _build(raw: dict[str, Any], where: str, source: str) -> tuple[Rule | None, list[str]]:
    name = raw.get("name")
    prefix = f"{where} ({name})" if isinstance(name, str) else where
    problems: list[str] = []
    try:
        common = Common.model_validate(raw)
    except ValidationError as exc:
        problems += [f"{prefix}: {key_path(e['loc'])}: {describe_error(e)}" for e in exc.errors()]
        common = None
    kind = KINDS.get(raw.get("kind")) if isinstance(raw.get("kind"), str) else None
    spec = None
    if kind is not None:
        own = {k: v for k, v in raw.items() if k not in COMMON_KEYS}
        try:
            spec = kind.model_validate(own)
        except ValidationError as exc:
            problems += [f"{prefix}: {_key(e)}: {describe_error(e)}" for e in exc.errors()]
    if problems or common is None or spec is None:
        return None, problems
    rule = Rule(
        name=common.name, kind=common.kind, for_=common.for_, severity=common.severity,
        labels=tuple(sorted(common.labels.items())), summary=common.summary, description=common.description,
        run_state=common.run_state, grace=common.grace, group_by=common.group_by, link=common.link,
        source=source, spec=spec, where=where,
    )
    return rule, []


def _key(err: dict[str, Any]) -> str:
    """The key of a kind's error; model-level checks name their key at the start of the message."""
    if err["loc"]:
        return key_path(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    key, sep, rest = msg.partition(": ")
    if sep and NAME_FIELD.fullmatch(key):
        err["msg"] = rest
        return key
    return "(rule)"


def _duplicates(rules: list[Rule]) -> list[str]:
    first: dict[str, Rule] = {}
    problems = []
    for rule in rules:
        earlier = first.setdefault(rule.name, rule)
        if earlier is not rule:
            problems.append(f"{rule.where} ({rule.name}): name: already used by {earlier.where} "
                            f"({earlier.source}); rule names must be unique")
    return problems
