"""The usual measures of log parsing, on labelled data such as Loghub's (Zhu et al., ICSE-SEIP 2019).

- grouping accuracy: a line counts as right when the set of lines grouped with it is exactly the
  set of lines of its true template;
- parsing accuracy: a line counts as right when its template text is exactly the true one.
"""

from __future__ import annotations

import csv
import gzip
from collections import defaultdict
from pathlib import Path
from typing import Hashable, Sequence

__all__ = ["grouping_accuracy", "load_labelled", "parsing_accuracy"]


def grouping_accuracy(predicted: Sequence[Hashable], truth: Sequence[Hashable]) -> float:
    """Share of lines whose predicted group equals their true group exactly."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} labelled lines")
    if not truth:
        return 1.0
    groups: dict[Hashable, list[int]] = defaultdict(list)
    true_groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, (p, t) in enumerate(zip(predicted, truth)):
        groups[p].append(i)
        true_groups[t].append(i)
    right = sum(len(lines) for lines in groups.values() if true_groups[truth[lines[0]]] == lines)
    return right / len(truth)


def parsing_accuracy(predicted: Sequence[str], truth: Sequence[str]) -> float:
    """Share of lines whose template text is exactly the true one (outer white space aside)."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} labelled lines")
    return sum(p.strip() == t.strip() for p, t in zip(predicted, truth)) / max(1, len(truth))


def load_labelled(folder: Path, system: str) -> tuple[list[str], list[str], list[str]]:
    """(messages, true group ids, true templates) of ``<folder>/<system>/<system>_2k.log_structured.csv``
    (Loghub's layout: columns ``Content``, ``EventId``, ``EventTemplate``), or of the same file
    gzipped (``….csv.gz``, as the tests keep their copy)."""
    path = Path(folder) / system / f"{system}_2k.log_structured.csv"
    if not path.exists() and path.with_name(path.name + ".gz").exists():
        path = path.with_name(path.name + ".gz")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["Content"] for r in rows], [r["EventId"] for r in rows], [r["EventTemplate"] for r in rows]
