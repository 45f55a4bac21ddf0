"""The references generated from the code: docs/config.md, docs/series.md and collectors/*.toml.

Every key a config file may contain is a field of a pydantic model (``farmwatch.config.sections``
for the shared sections, each source kind's ``Config``, ``ElasticConfig``, ``RemoteWriteSettings``,
``DetectSettings``); their types, defaults and docstrings are the truth. Each source carries its
series documentation (``series.md``) and a commented collector config (``sample.toml``) in its own
folder. ``make docs`` (``python -m farmwatch.config.reference``) writes the files; a test fails
when one is not current, so a new source is its folder and its test, and nothing elsewhere is
edited by hand.
"""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
import types
import typing
from pathlib import Path, PurePath
from typing import Any, Iterator

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from farmwatch.config import sections as config
from farmwatch.detect.settings import DetectSettings, FamilySettings
from farmwatch.durations import format_duration
from farmwatch.sources import known_kinds, source_class, source_file
from farmwatch.store.elastic.config import ElasticConfig
from farmwatch.store.remote.naming import Relabel
from farmwatch.store.remote.settings import RemoteWriteSettings

HEADER = """# Configuration reference

Generated from the code by `farmwatch config-reference` (do not edit by hand: `make docs`
regenerates it and the tests check it is current). A config is one TOML file; unknown keys are
errors. Durations are written like `"500ms"`, `"10s"`, `"5m"`, `"4h"`, `"14d"`; relative paths are
relative to the config file. Commented examples of whole configs: `collectors/*.toml`.
"""


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        inner = _type(args[0])
        meta = " ".join(str(m) for m in args[1:])
        return "duration" if "duration" in meta.lower() or "Duration" in repr(args[1:]) else inner
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", '"') for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type(a) for a in args if a is not type(None)]
        return " \\| ".join(parts) + (" or none" if type(None) in args else "")
    if origin in (list, tuple, typing.Sequence):
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return f"table of {_type(args[1])}" if len(args) == 2 else "table"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "table"
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "none")


def _default(field: Any, type_text: str) -> str:
    if field.is_required():
        return "**required**"
    value = field.default
    if value is PydanticUndefined:
        value = field.default_factory() if field.default_factory else None
    if value is None:
        return "—"
    if type_text.startswith("duration") and isinstance(value, (int, float)):
        return f'`"{format_duration(value)}"`'
    if isinstance(value, BaseModel) or value in ({}, [], ()):
        return "—"
    if isinstance(value, (str, PurePath)):
        return f'`"{value}"`'
    if isinstance(value, (list, tuple)):
        return f"`{json.dumps(list(value))}`" if len(value) <= 6 else f"{len(value)} values (see the meaning)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _is_duration(field: Any) -> bool:
    return any("duration" in repr(m).lower() for m in field.metadata) or "Duration" in repr(field.annotation)


def attribute_docs(model: type[BaseModel]) -> dict[str, str]:
    """The docstring written under each field of ``model`` and its bases (read here, for the
    reference, rather than by pydantic at every start: parsing the classes' source costs time)."""
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
        except (OSError, TypeError, IndexError):
            continue
        for node, after in zip(body, body[1:] + [None]):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            docs.pop(node.target.id, None)  # a field redefined without a docstring has none (as in pydantic)
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> Iterator[str]:
    yield "| key | type | default | meaning |"
    yield "|---|---|---|---|"
    docs = attribute_docs(model)
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        type_text = "duration" if _is_duration(field) else _type(field.annotation)
        doc = " ".join((field.description or docs.get(name, "")).split()).replace("|", "\\|").replace("``", "`")
        yield f"| `{name}` | {type_text} | {_default(field, type_text)} | {doc} |"


def sections() -> Iterator[tuple[str, type[BaseModel], str, tuple[str, ...]]]:
    """(heading, model, intro, keys to leave out) for everything a config may contain."""
    yield "[store]", config.StoreSettings, "The embedded SQLite store every service writes to or reads from.", ()
    yield "[log]", config.LogSettings, "farmwatch's own log lines (stderr).", ()
    yield "[self_metrics]", config.SelfMetricsSettings, "The service's own health for Prometheus (`farmwatch status` reads it).", ()
    yield "[alerting]", config.AlertingSettings, "Rules, grouping, timers; see docs/rules.md for the rule files.", ()
    yield "[[alerting.inhibit]]", config.InhibitSettings, "While a `source` alert fires, `target` alerts with equal `equal` labels are muted.", ()
    yield "[alerting.notify.NAME]", config.NotifierSettings, "Where notifications go (Rocket.Chat REST, incoming webhook, console).", ()
    yield "[elastic]", ElasticConfig, "Elasticsearch for logs (and optionally samples and alerts); see docs/elastic.md.", ()
    yield "[remote_write]", RemoteWriteSettings, "Every stored sample also to a Prometheus-compatible TSDB; see docs/remote-write.md.", ()
    yield "[[remote_write.relabel]]", Relabel, "Which series are sent and how they are labelled (Prometheus' write_relabel_configs).", ()
    yield "[detect]", DetectSettings, "Anomaly-detection model families (`farmwatch train`); see docs/detection.md.", ()
    yield "[detect.families.NAME]", FamilySettings, "One family: entities sharing one model (e.g. all worker nodes).", ()
    for kind in known_kinds():
        cls = source_class(kind)
        intro = (inspect.getdoc(inspect.getmodule(cls)) or "").split("\n\n")[0].replace("\n", " ").replace("``", "`")
        intro += f" Example: `{collector_path(kind)}`."
        yield f'[sources.NAME] kind = "{kind}"', cls.Config, intro, ("kind",)


def reference() -> str:
    out = [HEADER]
    for heading, model, intro, skip in sections():
        out += [f"## `{heading}`", "", intro, "", *table(model, skip), ""]
    return "\n".join(out)


SERIES_HEADER = """# Series farmwatch produces

A series is a name plus labels (`name{label=value,…}`); its samples are numbers, or *state values*
(strings such as `connected`), which are stored when they change. Timestamps are the start of the
poll cycle (UTC), so all endpoints of one cycle line up.
"""


def series_reference() -> str:
    """docs/series.md: every source's ``series.md``, then farmwatch's own and the anomaly scores."""
    parts = [SERIES_HEADER] + [source_file(kind, "series.md") for kind in known_kinds()]
    here = Path(__file__).resolve().parent.parent
    parts += [(here / "service" / "series.md").read_text(encoding="utf-8"),
              (here / "detect" / "series.md").read_text(encoding="utf-8")]
    return "\n".join(p.rstrip("\n") + "\n" for p in parts)


def collector_path(kind: str) -> str:
    """Where the example collector config of a source kind is: ``collectors/hlt-zmq.toml``."""
    return f"collectors/{kind.replace('_', '-')}.toml"


def generated() -> dict[str, str]:
    """Every generated file: path relative to the repository → its content."""
    files = {"docs/config.md": reference(), "docs/series.md": series_reference()}
    files.update({collector_path(kind): source_file(kind, "sample.toml") for kind in known_kinds()})
    return files


def main() -> int:
    """Write the generated files into the current folder (the repository): ``make docs``."""
    for path, text in generated().items():
        Path(path).write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


__all__ = ["attribute_docs", "collector_path", "generated", "reference", "sections", "series_reference", "table"]

if __name__ == "__main__":
    raise SystemExit(main())
