"""One alert group's :class:`~farmwatch.model.Notification` → one chat message.

Operators read these in the control room, so every message answers, in this order: is it
firing or resolved and how bad (colour, emoji, severity), which rule and where (unit, host),
what values triggered it, since when and for how long, whether someone acknowledged it, and a
link to look closer. One incident is one message that is edited as it changes; an edit cannot
become two messages, so when a group is too big for ``max_chars`` the message keeps the first
alerts and summarises the rest ("… and 37 more alerts on hltwk01…hltwk40") instead of splitting.

Everything that came from the data (labels, values, summaries, descriptions) goes through
:func:`~farmwatch.alerting.text.neutralise`; only farmwatch's own layout and the configured
link template are trusted.
"""

from __future__ import annotations

import logging
import math
import re
import string
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping
from urllib.parse import quote

from farmwatch.alerting.text import chat_len, inline, neutralise, truncate
from farmwatch.durations import format_duration
from farmwatch.model import Alert, Labels, Notification

log = logging.getLogger(__name__)

COLORS = {"critical": "danger", "warning": "warning", "info": "#439FE0", "resolved": "good"}
EMOJI = {"critical": "🔥", "warning": "⚠️", "info": "ℹ️", "resolved": "✅"}
_RANK = {"critical": 3, "error": 3, "page": 3, "warning": 2, "info": 1, "none": 0}
RULE_LABELS = ("rule", "alertname")
"""Group labels that name the rule rather than a place."""
_SPREAD_LABELS = ("host", "node", "instance", "app", "pid", "pv", "item")
"""Labels preferred for "… and 37 more alerts on hltwk01…hltwk40", most specific first."""

SUMMARY_MAX = 300
DESCRIPTION_MAX = 300
LABEL_MAX = 80


@dataclass
class ChatMessage:
    """What a notifier sends: ``text`` (the headline) and Rocket.Chat ``attachments``
    (``title``, ``title_link``, ``text``, ``color``, ``fields``), all already neutralised."""

    text: str
    attachments: list[dict] = field(default_factory=list)

    def as_text(self) -> str:
        """The whole message as one markdown text: what the REST notifier posts, because
        ``chat.update`` can replace a message's text but not its attachments (so colour is
        carried by the headline emoji there)."""
        parts = [self.text]
        for att in self.attachments:
            title = att.get("title")
            if title:
                link = att.get("title_link")
                parts.append(f"*{title}* · [dashboard]({link})" if link else f"*{title}*")
            fields = att.get("fields") or []
            if fields:
                parts.append(" · ".join(f"*{f.get('title', '')}*: {f.get('value', '')}" for f in fields))
            if att.get("text"):
                parts.append(att["text"])
        return "\n".join(parts)

    def size(self) -> int:
        """Characters the server counts against ``Message_MaxAllowedSize`` (UTF-16 units).

        This is the length of :meth:`as_text`, which is at least the headline plus every
        attachment text, so a message within the limit passes whether the server checks the
        text, each attachment, or (as the REST notifier sends it) everything as one text."""
        return chat_len(self.as_text())

    @property
    def color(self) -> str | None:
        return self.attachments[0].get("color") if self.attachments else None


def severity_of(alerts: Iterable[Alert]) -> str:
    """The worst severity among ``alerts`` (unknown names rank as warning)."""
    worst, rank = "info", -1
    for a in alerts:
        r = _RANK.get(_sev(a), 2)
        if r > rank:
            worst, rank = _sev(a), r
    return worst


def _sev(a: Alert) -> str:
    return inline(str(a.severity or "warning"), 20).lower()


def color_of(severity: str) -> str:
    r = _RANK.get(severity, 2)
    return COLORS["critical"] if r >= 3 else COLORS["warning"] if r == 2 else COLORS["info"]


def emoji_of(severity: str) -> str:
    r = _RANK.get(severity, 2)
    return EMOJI["critical"] if r >= 3 else EMOJI["warning"] if r == 2 else EMOJI["info"]


def render(
    n: Notification,
    *,
    link_template: str | None = None,
    max_chars: int = 5000,
    now: float | None = None,
) -> ChatMessage:
    """The chat message for ``n``; its :meth:`ChatMessage.size` is at most ``max_chars``.

    ``link_template`` is formatted with the group labels, URL-quoted
    (``"https://grafana/d/hlt?var-unit={unit}"``); ``now`` (default ``n.ts``) is the time the
    "for 12m" durations are measured to.
    """
    if max_chars < 50:
        raise ValueError(f"max_chars must be at least 50 to hold a headline, got {max_chars}")
    now = n.ts if now is None else now
    firing = sorted(n.firing, key=lambda a: (-_RANK.get(_sev(a), 2), _since(a), _natural_labels(a)))
    resolved = sorted(n.resolved, key=lambda a: (-(_finite(a.ends_at) or 0.0), _natural_labels(a)))
    group = dict(n.group_labels)
    rule = _rule_name(group, firing or resolved)
    link = _link(link_template, n.group_labels)
    hidden = set(group) | set(RULE_LABELS)

    severity = severity_of(firing) if firing else "resolved"
    headline = _headline(severity, rule, group, len(firing), len(resolved), n.repeat)
    firing_lines = [_firing_lines(a, hidden, now) for a in firing]
    resolved_lines = [_resolved_lines(a, hidden) for a in resolved]
    footer = f"_as of {_utc(now)}_"

    def build(shown: int) -> ChatMessage:
        nf = min(shown, len(firing))
        nr = max(0, shown - len(firing))
        body: list[str] = []
        if firing:
            if resolved:
                body.append("*Firing*")
            body += [line for lines in firing_lines[:nf] for line in lines]
            if nf < len(firing):
                body.append(_more(firing[nf:], hidden))
        if resolved:
            if firing:
                body.append("*Resolved*")
            body += [line for lines in resolved_lines[:nr] for line in lines]
            if nr < len(resolved):
                body.append(_more(resolved[nr:], hidden, word="resolved"))
        body.append(footer)
        att: dict = {
            "title": _title(len(firing), len(resolved)),
            "color": color_of(severity) if firing else COLORS["resolved"],
            "text": "\n".join(body),
            "fields": [
                {"title": neutralise(k), "value": inline(v, LABEL_MAX), "short": True}
                for k, v in n.group_labels
                if k not in RULE_LABELS
            ],
        }
        if link:
            att["title_link"] = link
        return ChatMessage(text=headline, attachments=[att])

    total = len(firing) + len(resolved)
    msg = build(total)
    if msg.size() <= max_chars:
        return msg
    lo, hi = min(1, total), total - 1  # the most listed alerts that still fit; the first always stays
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if build(mid).size() <= max_chars:
            lo = mid
        else:
            hi = mid - 1
    msg = build(lo)
    if msg.size() > max_chars:  # even one alert is too long (huge labels or link)
        msg = _squeeze(msg, max_chars)
    return msg


def _squeeze(msg: ChatMessage, max_chars: int) -> ChatMessage:
    """Last resort, cheapest loss first: the label fields (the headline repeats them), the title
    link, the body after the first alert line, and only then the headline and that line, cut to
    shares of what is left. Each step is measured anew, so the headline and the first alert line
    always survive (cut at worst), whatever a label or the link costs."""
    att = {**msg.attachments[0], "fields": []}
    head, body = msg.text, att.get("text", "")

    def size(head: str, body: str) -> int:
        return ChatMessage(head, [{**att, "text": body}]).size()

    if size(head, body) > max_chars:
        att.pop("title_link", None)
    lines = body.split("\n")
    first = next((i for i, line in enumerate(lines) if line.startswith("• ")), 0)
    kept, rest = "\n".join(lines[: first + 1]), "\n".join(lines[first + 1 :])
    if size(head, body) > max_chars:
        room = max_chars - size(head, kept + "\n")
        body = kept + "\n" + truncate(rest, room) if rest and room > 1 else kept
    if size(head, body) > max_chars:
        avail = max_chars - (size("", "x") - 1)  # what the title and the line breaks leave
        head = truncate(head, max(avail // 2, avail - chat_len(kept)))
        body = truncate(kept, avail - chat_len(head))
    return ChatMessage(head, [{**att, "text": body}])


def _rule_name(group: Mapping[str, str], alerts: list[Alert]) -> str:
    for key in RULE_LABELS:
        if group.get(key):
            return inline(group[key], LABEL_MAX)
    rules = sorted({a.rule for a in alerts})
    if len(rules) <= 3:
        return inline(", ".join(rules), 3 * LABEL_MAX) or "alert"
    return inline(", ".join(rules[:3]), 3 * LABEL_MAX) + f" +{len(rules) - 3} rules"


def _headline(severity: str, rule: str, group: Mapping[str, str], nf: int, nr: int, repeat: bool) -> str:
    where = ", ".join(f"{neutralise(k)} {inline(v, LABEL_MAX)}" for k, v in group.items() if k not in RULE_LABELS)
    place = f" — {where}" if where else ""
    if nf:
        count = f"{nf} alert{'s' if nf != 1 else ''}" + (f", {nr} resolved" if nr else "")
        head = f"{emoji_of(severity)} FIRING [{severity}] {rule}{place} ({count})"
    else:
        head = f"{EMOJI['resolved']} RESOLVED {rule}{place} ({nr} alert{'s' if nr != 1 else ''})"
    return head + (" · reminder" if repeat else "")


def _title(nf: int, nr: int) -> str:
    if nf and nr:
        return f"{nf} firing · {nr} resolved"
    if nf:
        return f"{nf} firing"
    return f"all {nr} resolved" if nr != 1 else "resolved"


def _finite(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _since(a: Alert) -> float:
    """When the problem began: the condition's first true evaluation if known, else the start of firing."""
    for t in (a.active_since, a.starts_at):
        if _finite(t) is not None:
            return float(t)
    return math.inf


def _where(a: Alert, hidden: set[str]) -> str:
    return ", ".join(f"{neutralise(k)} {inline(v, LABEL_MAX)}" for k, v in a.labels if k not in hidden)


def _firing_lines(a: Alert, hidden: set[str], now: float) -> list[str]:
    where = _where(a, hidden)
    summary = inline(a.summary, SUMMARY_MAX) or inline(a.rule, LABEL_MAX)
    lines = [f"• *{summary}*" + (f" — {where}" if where else "")]
    detail = []
    values = _values(a)
    if values:
        detail.append(values)
    since = _since(a)
    if math.isfinite(since):
        detail.append(f"since {_utc(since)} (for {_ago(now - since)})")
    if detail:
        lines.append("   " + " · ".join(detail))
    if a.description:
        lines.append("   " + inline(a.description, DESCRIPTION_MAX))
    notes = []
    if a.acked_by:
        when = f" at {_utc(a.acked_at, seconds=False)}" if a.acked_at else ""
        notes.append(f"✔ acknowledged by {inline(a.acked_by, LABEL_MAX)}{when}")
    if a.silenced_by:
        notes.append(f"🔕 silenced ({inline(a.silenced_by, LABEL_MAX)})")
    if a.inhibited_by:
        notes.append(f"🔇 inhibited by {inline(a.inhibited_by, LABEL_MAX)}")
    if notes:
        lines.append("   " + " · ".join(notes))
    return lines


def _resolved_lines(a: Alert, hidden: set[str]) -> list[str]:
    where = _where(a, hidden)
    summary = inline(a.summary, SUMMARY_MAX) or inline(a.rule, LABEL_MAX)
    line = f"• ✅ {summary}" + (f" — {where}" if where else "")
    start, end = _since(a), _finite(a.ends_at)
    if end is not None and math.isfinite(start):
        line += f" · lasted {_ago(end - start)} ({_utc(start)} – {_utc(end)})"
    elif end is not None:
        line += f" · resolved {_utc(end)}"
    return [line]


def _values(a: Alert) -> str:
    parts = []
    if _finite(a.value) is not None:
        parts.append(f"value {_num(a.value)}")
    parts += [f"{inline(str(k), LABEL_MAX)} {_num(v)}" for k, v in (a.values or {}).items()]
    return " · ".join(parts)


def _num(v: object) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        f = float(v)
        if math.isfinite(f) and f == int(f) and abs(f) < 1e15:
            return str(int(f))
        return f"{f:.4g}"
    return inline(str(v), LABEL_MAX)


def _more(rest: list[Alert], hidden: set[str], word: str = "") -> str:
    """``… and 37 more alerts on hltwk01…hltwk40``: what the summary line says about the rest."""
    kind = f"{word} alert" if word else "alert"
    text = f"… and {len(rest)} more {kind}{'s' if len(rest) != 1 else ''}"
    keys = [k for k in _SPREAD_LABELS if k not in hidden]
    keys += sorted({k for a in rest for k, _ in a.labels} - set(keys) - hidden)
    for key in keys:
        vals = sorted({dict(a.labels).get(key) for a in rest} - {None}, key=_natural)
        if len(vals) > 1:
            return f"{text} on {inline(vals[0], LABEL_MAX)}…{inline(vals[-1], LABEL_MAX)}"
    for key in keys:
        vals = {dict(a.labels).get(key) for a in rest} - {None}
        if len(vals) == 1:
            return f"{text} on {inline(vals.pop(), LABEL_MAX)}"
    return text


def _natural(s: str) -> list:
    """Sort key that puts hltwk2 before hltwk10."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s)]


def _natural_labels(a: Alert) -> list:
    return [(k, _natural(v)) for k, v in a.labels]


class _QuotedLabels(dict):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def _link(template: str | None, group_labels: Labels) -> str | None:
    """The template formatted with URL-quoted group labels; None (and one warning) if it names a
    label the group does not have, so a config mistake costs the link, not the message."""
    if not template:
        return None
    values = _QuotedLabels({k: quote(v, safe="") for k, v in group_labels})
    try:
        return string.Formatter().vformat(template, (), values)
    except (KeyError, IndexError, ValueError) as exc:
        log.warning(
            "link template %r cannot be formatted with the group labels %s (%s): message sent without link",
            template,
            sorted(values),
            exc,
        )
        return None


def _utc(ts: float | None, *, seconds: bool = True) -> str:
    if ts is None or not math.isfinite(ts):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _ago(seconds: float) -> str:
    """Durations as an operator says them: 45s, 12m, 1h5m, 2d3h."""
    s = max(0.0, seconds)
    if s >= 86400:
        s = s // 3600 * 3600
    elif s >= 60:
        s = s // 60 * 60
    return format_duration(s) if s >= 1 else "0s"


__all__ = ["COLORS", "DESCRIPTION_MAX", "EMOJI", "LABEL_MAX", "RULE_LABELS", "SUMMARY_MAX", "ChatMessage",
           "color_of", "emoji_of", "render", "severity_of"]
