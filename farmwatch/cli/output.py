"""What commands print: tables that read at 80 columns on a terminal and stay plain in a pipe, and
JSON that ``jq`` reads.

On a terminal a table is fitted to the width: long cells fold onto more lines instead of being
cut, so two rows that differ only at the end of their labels never look the same. In a pipe (or
a file) it is plain text for grep and awk: a header, then one line per row, columns separated by
two spaces, nothing cut, no colours.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any, Iterable, Sequence


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")


def printable(text: str) -> str:
    """Text from the farm (log lines) with its control characters written out (``\\x1b``), so that
    a line printed to a terminal cannot move the cursor or recolour it."""
    return _CONTROL.sub(lambda m: "\\x%02x" % ord(m.group()), text)


def is_terminal() -> bool:
    return sys.stdout.isatty()


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[str]], *,
                wide: Sequence[str] = ()) -> None:
    """``wide``: the columns that get the room (labels, summaries); the others keep their width.
    On a terminal a column that is empty in every row is left out."""
    rows = [[str(c) for c in row] for row in rows]
    if not is_terminal():
        _plain(columns, rows)
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    shown = [i for i, _ in enumerate(columns) if any(row[i] for row in rows)] or list(range(len(columns)))
    table = Table(title=title, box=box.SIMPLE_HEAD, expand=False, title_justify="left", pad_edge=False)
    for i in shown:
        table.add_column(columns[i], overflow="fold", ratio=3 if columns[i] in wide else None,
                         no_wrap=columns[i] not in wide and bool(wide))
    for row in rows:
        table.add_row(*(Text(row[i]) for i in shown))  # Text: labels and summaries are data, not rich markup
    Console(highlight=False).print(table)


def _plain(columns: Sequence[str], rows: list[list[str]]) -> None:
    cells = [[c.replace("\n", " ") for c in row] for row in [list(columns), *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    out = sys.stdout
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + ("  " if len(row) > 1 else "")
                  + row[-1] + "\n")


def finite(obj: Any) -> Any:
    """``obj`` with every NaN and infinity replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dump_json(obj: Any, indent: int | None = None) -> str:
    """Valid JSON (``null`` for NaN), whatever ``obj`` holds; unknown types as their ``str``."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False, default=str)


__all__ = ["dump_json", "finite", "is_terminal", "print_table", "printable"]
