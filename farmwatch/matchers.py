"""Label matchers in the Prometheus style, used to select series by their labels.

``host=hltwk01``, ``host!=hltwk01``, ``host=~hltwk0[1-4]``, ``host!~hltwk.*``, and shell globs
through operators of their own, ``host*=hltwk0*`` and ``host!*=hltwk0*``. ``=`` and ``!=`` are
exact whatever the value holds, so a Zabbix label such as ``item=net.if.in[eth0]`` matches itself;
the glob operators cannot be read as ``=``/``!=`` followed by a value. As in Prometheus, regular
expressions and globs match the whole value and a label that a series does not have matches as "".
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Union

_SYNTAX = re.compile(r"\s*([A-Za-z_][\w.:-]*)\s*(=~|!~|!=|=|\*=|!\*=)\s*(.*?)\s*")
_EXPECTED = "expected label=value, label!=value, label=~regex, label!~regex, label*=glob or label!*=glob"
_POSITIVE = ("=", "=~", "*=")


@dataclass(frozen=True)
class Matcher:
    """One condition on one label; ``op`` is ``=``, ``!=`` (exact), ``=~``, ``!~`` (regular
    expression) or ``*=``, ``!*=`` (shell glob). Patterns are compiled once, here, so matching
    many series stays cheap.
    """

    label: str
    op: str
    value: str
    _pattern: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op not in ("=", "!=", "=~", "!~", "*=", "!*="):
            raise ValueError(f"bad label matcher operator {self.op!r}: {_EXPECTED}")
        if self.op in ("=~", "!~"):
            pattern = re.compile(self.value)
        elif self.op in ("*=", "!*="):
            pattern = re.compile(fnmatch.translate(self.value))
        else:
            pattern = None
        object.__setattr__(self, "_pattern", pattern)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when ``labels`` satisfies this condition (a missing label counts as "")."""
        actual = labels.get(self.label, "")
        if self._pattern is None:
            found = actual == self.value
        else:
            found = self._pattern.fullmatch(actual) is not None
        return found == (self.op in _POSITIVE)

    def __str__(self) -> str:
        return f"{self.label}{self.op}{self.value}"


__all__ = ["Matcher", "MatcherSpec", "parse_matcher", "parse_matchers"]

MatcherSpec = Union[Mapping[str, object], str, Matcher, Iterable[Union[str, Matcher]], None]
"""What the store's ``matchers=`` argument accepts."""


def parse_matchers(items: MatcherSpec) -> list[Matcher]:
    """Turn ``{k: v}``, ``"k=v"`` or a list of matcher strings into ``Matcher`` objects.

    Accepting plain dicts and strings lets notebooks and the CLI pass what users type; errors are
    a one-line ``ValueError`` naming the bad matcher, fit to show on a command line.
    """
    if items is None:
        return []
    if isinstance(items, Mapping):
        return [Matcher(str(k), "=", str(v)) for k, v in items.items()]
    if isinstance(items, (str, Matcher)):
        items = [items]
    return [item if isinstance(item, Matcher) else parse_matcher(item) for item in items]


def parse_matcher(text: str) -> Matcher:
    """Parse one ``label<op>value`` string; the value may be wrapped in quotes."""
    found = _SYNTAX.fullmatch(text) if isinstance(text, str) else None
    if found is None:
        raise ValueError(f"bad label matcher {text!r}: {_EXPECTED}")
    label, op, value = found.groups()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    try:
        return Matcher(label, op, value)
    except re.error as exc:
        raise ValueError(f"bad label matcher {text!r}: invalid regular expression ({exc})") from None


__all__ = ["Matcher", "MatcherSpec", "parse_matcher", "parse_matchers"]
