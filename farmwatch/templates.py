"""Range templates that keep the config of a 20-unit farm short.

A string field may contain ranges ``{01..20}`` (zero-padded to the width of the first bound) or
lists ``{a,b,c}``. The *same* range written in several fields of one entry is expanded together
(zipped), different ranges multiply::

    { unit = "hlt{01..20}", app = "distributor", address = "tcp://hltin{01..20}:7000" }
        → 20 entries: hlt01 / tcp://hltin01:7000, …, hlt20 / tcp://hltin20:7000
    { unit = "hlt{01..02}", node = "hltwk{01..12}", address = "tcp://hlt{01..02}wk{01..12}:7100" }
        → 24 entries
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Mapping

_RANGE = re.compile(r"\{([^{}]*)\}")
MAX_EXPANSION = 100_000


def _values(spec: str) -> list[str]:
    if ".." in spec:
        lo, _, hi = spec.partition("..")
        if not (lo.isdigit() and hi.isdigit()):
            raise ValueError(f"range {{{spec}}} must be two whole numbers like {{01..20}}")
        a, b = int(lo), int(hi)
        if b < a:
            raise ValueError(f"range {{{spec}}} goes backwards")
        width = len(lo) if lo.startswith("0") else 0
        return [str(i).zfill(width) for i in range(a, b + 1)]
    if "," in spec:
        return [v.strip() for v in spec.split(",")]
    raise ValueError(f"'{{{spec}}}' is neither a range {{01..20}} nor a list {{a,b}}")


def expand(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """All entries described by ``entry``; raises ValueError on a malformed range."""
    specs: list[str] = []
    for value in entry.values():
        if isinstance(value, str):
            for spec in _RANGE.findall(value):
                if spec not in specs:
                    specs.append(spec)
    if not specs:
        return [dict(entry)]
    choices = [_values(s) for s in specs]
    total = 1
    for c in choices:
        total *= len(c)
    if total > MAX_EXPANSION:
        raise ValueError(f"expands to {total} entries (more than {MAX_EXPANSION}); check the ranges")
    out = []
    for combo in itertools.product(*choices):
        subst = dict(zip(specs, combo))
        out.append(
            {
                k: _RANGE.sub(lambda m: subst[m.group(1)], v) if isinstance(v, str) else v
                for k, v in entry.items()
            }
        )
    return out


_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def expand_entry(entry: Any, fields: tuple[str, ...], reserved: set[str]) -> list[tuple[dict[str, str], dict[str, str]]]:
    """Validate one ``{ <fields…> = "…", labels = { … } }`` config entry and expand its ranges.

    The fields and the labels expand together (the same range in a name and a label zips), so
    ``{ pv = "HLT{01..20}:RATE", labels = { unit = "hlt{01..20}" } }`` is 20 PVs with their units.
    Returns (fields, labels) per expanded entry; raises ValueError with a one-line reason.
    """
    if not isinstance(entry, dict):
        raise ValueError("expected an inline table {" + ", ".join(f'{f} = "…"' for f in fields) + ", labels = { … } }")
    unknown = sorted(set(entry) - set(fields) - {"labels"})
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} (expected {', '.join(fields)} and labels)")
    values = {f: entry.get(f) for f in fields}
    empty = [f for f, v in values.items() if not isinstance(v, str) or not v]
    if empty:
        raise ValueError(f"{' and '.join(empty)} must be non-empty strings")
    lbls = entry.get("labels", {})
    if not isinstance(lbls, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in lbls.items()):
        raise ValueError("labels must be an inline table of non-empty strings")
    bad = sorted(k for k in lbls if not _LABEL_NAME.match(k))
    if bad:
        raise ValueError(f"label name(s) {', '.join(bad)} are not identifiers")
    taken = sorted(reserved & lbls.keys())
    if taken:
        raise ValueError(f"label(s) {', '.join(taken)} are set by the source; use another name")
    out = []
    for e in expand({**{"\0" + f: v for f, v in values.items()}, **lbls}):
        out.append(({f: e.pop("\0" + f) for f in fields}, e))
    return out


__all__ = ["MAX_EXPANSION", "expand", "expand_entry"]
