"""Untrusted text → text that is safe to put into a Rocket.Chat message.

Labels, log lines, PV strings and rule summaries that quote them come from the farm, not from
farmwatch. Pasted into a chat message unchanged, ``@all`` in a host name would notify everyone in
the control-room channel, ``[status](http://evil)`` would become a link that says something else
than where it goes, and a stray triple backtick would swallow the rest of the message into a code
block. :func:`neutralise` defuses exactly those constructs and leaves the text readable: it inserts
a zero-width space (U+200B) where the server's parser would otherwise see a mention, link or fence,
so operators still read ``@all`` and ``http://…`` but nothing is notified or clickable.

Rocket.Chat treats ``(^|\\s|>)@name`` as a mention. The rule here is broader on purpose (an ``@``
directly before a name character and not after a letter or digit), because the newer message
parser also finds mentions inside emphasis (``*@all*``); e-mail addresses (``ops@kek.jp``) stay
intact because the ``@`` follows a letter.

Lengths are counted in UTF-16 code units, as the server does (JavaScript ``String.length``), so
an emoji outside the basic plane counts as two.
"""

from __future__ import annotations

import re
import unicodedata

ZWSP = "\u200b"
"""The zero-width space inserted to break mentions, links and fences."""

ELLIPSIS = "…"

# C0/C1 controls except tab and newline, and the bidirectional overrides/isolates that can make
# text display in a different order than it is stored ("Trojan source").
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CRLF = re.compile(r"\r\n?")
_FENCE = re.compile(r"`(?=``)")  # every backtick that starts a run of three
_MD_LINK = re.compile(r"\](?=\()")  # [text](url): break the "](" that joins label and target
_ANGLE = re.compile(r"<(?=[^\s\u200b])")  # <url|text> and <url> autolinks
_SCHEME = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]{0,31}):(?=//)")  # http://, ftp://, …: bare autolinks
_WWW = re.compile(r"(?i)\b(www)\.(?=\S)")  # www.example.org is autolinked too
_MENTION = re.compile(r"(?<![0-9A-Za-z])@(?=[\w.\-])")


def neutralise(text: str) -> str:
    """Make untrusted ``text`` safe for a chat message (idempotent: applying it twice changes nothing).

    - control characters (except newline and tab) and bidi overrides are removed, ``\\r\\n`` → ``\\n``;
    - ``@all``, ``@here``, ``@name`` get a zero-width space after the ``@`` (no mention);
    - markdown links ``[t](u)``, ``<u|t>``, ``<u>`` and bare ``scheme://`` / ``www.`` autolinks
      are broken with a zero-width space (the URL stays readable, it is not clickable);
    - runs of three backticks are broken (no code block swallowing the rest of the message).
    """
    if not text:
        return ""
    s = _CRLF.sub("\n", str(text))
    s = _CONTROLS.sub("", s)
    s = _FENCE.sub("`" + ZWSP, s)
    s = _MD_LINK.sub("]" + ZWSP, s)
    s = _ANGLE.sub("<" + ZWSP, s)
    s = _SCHEME.sub(lambda m: m.group(1) + ":" + ZWSP, s)
    s = _WWW.sub(lambda m: m.group(1) + ZWSP + ".", s)
    return _MENTION.sub("@" + ZWSP, s)


def inline(text: str, limit: int = 200) -> str:
    """Neutralised ``text`` on one line (newlines and runs of blanks become one space), at most
    ``limit`` characters: for labels and values, so a crafted label cannot start a fake line such
    as ``✅ RESOLVED`` in the middle of a message."""
    return truncate(" ".join(neutralise(text).split()), limit)


def chat_len(text: str) -> int:
    """Length as Rocket.Chat counts it (UTF-16 code units, like JavaScript's ``String.length``)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _sticks_to_previous(ch: str) -> bool:
    """Characters that belong to the one before them: combining marks, joiners, variation
    selectors, emoji skin tones, and our own zero-width space (which defuses the character
    before it — cutting between them would leave e.g. a bare ``@`` of ``@\u200ball``)."""
    cp = ord(ch)
    return (
        unicodedata.category(ch) in ("Mn", "Mc", "Me")
        or ch in (ZWSP, "\u200c", "\u200d", "\u20e3")
        or 0xFE00 <= cp <= 0xFE0F
        or 0xE0100 <= cp <= 0xE01EF
        or 0x1F3FB <= cp <= 0x1F3FF
        or 0xE0020 <= cp <= 0xE007F  # tag characters (subdivision flags)
    )


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-16 code units, the cut marked with ``…``.

    Never cuts inside a surrogate pair, a grapheme (base + combining marks, ZWJ emoji sequences,
    flag pairs) or one of :func:`neutralise`'s two-character escapes, and never leaves a trailing
    backslash that would escape the ``…``. Text that fits is returned unchanged.
    """
    if limit <= 0:
        return ""
    if chat_len(text) <= limit:
        return text
    if limit == 1:
        return ELLIPSIS
    budget = limit - 1  # room for the ellipsis
    end, used = 0, 0
    for ch in text:
        w = 2 if ord(ch) > 0xFFFF else 1
        if used + w > budget:
            break
        used += w
        end += 1
    # step back until the cut falls between two independent characters
    while 0 < end < len(text) and (_sticks_to_previous(text[end]) or text[end - 1] == "\u200d"):
        end -= 1
    # regional indicators pair up into flags: keep an even number of the run before the cut
    run = 0
    while run < end and 0x1F1E6 <= ord(text[end - 1 - run]) <= 0x1F1FF:
        run += 1
    if run % 2:
        end -= 1
    head = text[:end].rstrip()
    while head.endswith("\\"):
        head = head[:-1].rstrip()
    return head + ELLIPSIS


__all__ = ["ELLIPSIS", "ZWSP", "chat_len", "inline", "neutralise", "truncate"]
