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
