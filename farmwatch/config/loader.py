"""TOML → ``Settings``: the whole config of a farmwatch service or command, validated.

Every problem in a config is reported, one line each, as ``file: key: what is wrong (what is
expected)``. Source sections are validated by the source kind's own ``Config`` model (found by
kind in ``farmwatch.sources``), ``[elastic]`` by ``farmwatch.store.elastic``, ``[remote_write]``
by ``farmwatch.store.remote`` and ``[detect]`` by ``farmwatch.detect.settings``: the loader only
puts the parts' sections together, so it sits above them, and nothing it imports imports it back.

Which file: the ``-c`` option; else ``$FARMWATCH_CONFIG``; else ``./farmwatch.toml``; else
``/etc/farmwatch/farmwatch.toml`` (``find``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Iterable

from pydantic import Field, ValidationError

from farmwatch import sources as source_registry
from farmwatch.config import DEFAULT_PATHS, ENV
from farmwatch.config.base import ConfigError, Section, key_path, validation_problems
from farmwatch.config.sections import AlertingSettings, LogSettings, SelfMetricsSettings, StoreSettings
from farmwatch.credentials import SecretError, section_secret
from farmwatch.detect.settings import DetectSettings
from farmwatch.matchers import parse_matchers
from farmwatch.sources.base import SourceConfig
from farmwatch.store.elastic.config import ElasticConfig
from farmwatch.store.remote.settings import RemoteWriteSettings

class Settings(Section):
    """A whole validated config. ``sources`` maps the section name to the kind's own Config."""

    store: StoreSettings = StoreSettings()
    log: LogSettings = LogSettings()
    alerting: AlertingSettings = AlertingSettings()
    self_metrics: SelfMetricsSettings = SelfMetricsSettings()
    elastic: ElasticConfig | None = None
    """``[elastic]`` when Elasticsearch is configured, else None."""
    detect: DetectSettings | None = None
    """``[detect]``: the anomaly model families, else None."""
    remote_write: RemoteWriteSettings | None = None
    """``[remote_write]`` when stored samples also go to a Prometheus-compatible TSDB, else None."""
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    file: Path | None = None


def parse(raw: dict[str, Any], where: str = "<config>", base_dir: Path | None = None) -> Settings:
    """Validate an already-parsed TOML document (relative paths against ``base_dir``)."""
    problems: list[str] = []
    raw = dict(raw)
    raw_sources = raw.pop("sources", {})
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems += validation_problems(exc, where)
        settings = Settings()

    validated: dict[str, SourceConfig] = {}
    if not isinstance(raw_sources, dict):
        problems.append(f"{where}: sources: expected tables [sources.<name>] (got {raw_sources!r})")
        raw_sources = {}
    for name, body in raw_sources.items():
        loc = ("sources", name)
        if not isinstance(body, dict):
            problems.append(f"{where}: {key_path(loc)}: expected a table with a 'kind' key")
            continue
        kind = body.get("kind")
        try:
            model = source_registry.config_class(kind)
        except LookupError as exc:
            problems.append(f"{where}: {key_path(loc + ('kind',))}: {exc}")
            continue
        try:
            validated[name] = model.model_validate(body)
        except ValidationError as exc:
            problems += validation_problems(exc, where, loc)

    problems += _matcher_problems(settings, where)
    if problems:
        raise ConfigError(problems)
    if base_dir is not None:  # a source's paths (logfiles patterns) mean "next to the config file" too
        validated = {n: c.resolved(base_dir) if hasattr(c, "resolved") else c for n, c in validated.items()}
    update: dict[str, Any] = {"sources": validated}
    if base_dir is not None:
        update.update(_resolved(settings, base_dir))
    return settings.model_copy(update=update)


def _matcher_problems(settings: Settings, where: str) -> list[str]:
    """Label matchers of ``[detect.families]`` that do not parse (a bad regex): found now, with
    file and key, instead of when the family is first trained or scored."""
    problems = []
    for name, family in (settings.detect.families.items() if settings.detect else ()):
        for i, text in enumerate(family.match):
            try:
                parse_matchers([text])
            except ValueError as exc:
                problems.append(f"{where}: detect.families.{name}.match[{i}]: {exc}")
    return problems


def secret_problems(settings: Settings, sources: Iterable[str] | None = None) -> list[str]:
    """Secrets the config names that cannot be read now (an unset environment variable, a missing
    or empty file), one line each naming file, key and variable; ``sources``: only those sources'
    (and then nothing else). A service checks its sources' when it starts or reloads, and
    ``check-config`` all of them: a missing variable is a config error, not "credentials refused"."""
    where = settings.file or "<config>"
    names = settings.sources if sources is None else [n for n in sources if n in settings.sources]
    sections: list[tuple[str, Section]] = [(f"sources.{n}", settings.sources[n]) for n in names]
    if sources is None:
        sections += [("elastic", settings.elastic)] if settings.elastic is not None else []
        sections += [(f"alerting.notify.{n}", c) for n, c in settings.alerting.notify.items()]
    problems = []
    for key, section in sections:
        for secret in type(section).secrets:
            try:
                section_secret(section, secret, f"{where}: {key}.{secret}")
            except SecretError as exc:
                problems.append(str(exc))
    return problems


def _resolved(settings: Settings, base_dir: Path) -> dict[str, Any]:
    """The sections whose relative paths mean "next to the config file", made absolute."""
    store, alerting, detect, elastic, remote = (settings.store, settings.alerting, settings.detect, settings.elastic,
                                                settings.remote_write)
    if not store.path.is_absolute():
        store = store.model_copy(update={"path": base_dir / store.path})
    alerting = alerting.model_copy(update={"rules": [p if p.is_absolute() else base_dir / p for p in alerting.rules]})
    if detect is not None and not detect.models.is_absolute():
        detect = detect.model_copy(update={"models": base_dir / detect.models})
    if elastic is not None:
        elastic = elastic.resolved(base_dir)
    if remote is not None:
        remote = remote.resolved(base_dir)
    return {"store": store, "alerting": alerting, "detect": detect, "elastic": elastic, "remote_write": remote}


def find(given: str | os.PathLike[str] | None = None, *, required: bool = True) -> Path | None:
    """The config file to use: ``given`` (``-c``), ``$FARMWATCH_CONFIG``, or the first default that
    exists; when there is none, ConfigError naming all three (or None if not ``required``)."""
    if given:
        return Path(given)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    for path in DEFAULT_PATHS:
        if path.is_file():
            return path
    if not required:
        return None
    looked = " or ".join(str(p) for p in DEFAULT_PATHS)
    raise ConfigError([f"no config file: pass -c FILE, or set {ENV}, or create {looked}"])


def load(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate a config file (``find(path)``); raises ConfigError listing every problem."""
    p = find(path)
    assert p is not None
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


__all__ = ["DEFAULT_PATHS", "ENV", "Settings", "find", "load", "parse", "secret_problems"]
