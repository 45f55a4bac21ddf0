"""Untrusted text → safe chat text (farmwatch.alerting.text).

The server-side view is Rocket.Chat's own mention pattern, ``farmwatch.sim.chat.MENTION``, and
the link patterns of the stand-in server: whatever neutralise() returns must match none of them.
"""

import random

import pytest

from farmwatch.alerting.text import ZWSP, chat_len, inline, neutralise, truncate
from farmwatch.sim.chat import _LINKS, MENTION

NASTY = [
    "@all stalled",
    "hi @here, look",
    "ping @bob.smith and @ops-team",
    "*@all*",
    "x\n@here",
    "quote>@all",
    "[click](http://evil.example/x)",
    "<http://evil.example|harmless text>",
    "<https://evil.example>",
    "see http://evil.example/path and www.evil.example",
    "```\ncode that swallows the rest",
    "bell\x07 esc\x1b[31m red\x1b[0m nul\x00 crlf\r\nline",
    "bidi \u202eevil\u202c",
    "@\x00all",  # a control character between @ and the name must not protect the mention
]


def mentions(text: str) -> list[str]:
    return [m.group(2) for m in MENTION.finditer(text)]


def links(text: str) -> list[str]:
    return [m.group(1) for rx in _LINKS for m in rx.finditer(text)]


@pytest.mark.parametrize("raw", NASTY)
def test_neutralised_text_has_no_mention_and_no_link(raw):
    safe = neutralise(raw)
    assert mentions(safe) == []
    assert links(safe) == []
    assert "```" not in safe


def test_the_raw_examples_really_are_mentions_and_links():
    """The negative test above can only fail if the patterns find something in the raw text."""
    assert mentions("@all stalled") == ["all"]
    assert mentions("hi @here, look") == ["here"]
    assert links("[click](http://evil.example/x)") == ["http://evil.example/x", "http://evil.example/x"]
    assert links("<http://evil.example|harmless text>")[0] == "http://evil.example"


def test_text_stays_readable():
    assert neutralise("@all stalled") == f"@{ZWSP}all stalled"
    assert neutralise("[click](http://evil)") == f"[click]{ZWSP}(http:{ZWSP}//evil)"
    assert neutralise("<http://evil|x>") == f"<{ZWSP}http:{ZWSP}//evil|x>"
    assert neutralise("bell\x07 crlf\r\nline") == "bell crlf\nline"
    assert neutralise("bidi \u202eevil\u202c") == "bidi evil"
    assert neutralise(f"a{ZWSP}b").replace(ZWSP, "") == "ab"


def test_ordinary_text_is_unchanged():
    for plain in ["hltwk03", "ops@kek.jp", "rate 12.5 Hz < 20 Hz", "unit hlt03: input stalled (3/4 nodes)", ""]:
        assert neutralise(plain) == plain


def test_neutralise_is_idempotent_on_random_text():
    alphabet = ["@", "all", "here", " ", "\n", "\t", "<", ">", "|", "[", "]", "(", ")", "`", ":", "//", "http", "www", ".", "a", "\x00", "\u202e", ZWSP, "é", "🔥"]
    rng = random.Random(4)
    for _ in range(3000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        once = neutralise(raw)
        assert neutralise(once) == once, repr(raw)
        assert mentions(once) == [], repr(raw)
        assert links(once) == [], repr(raw)


def test_inline_keeps_a_label_on_one_line():
    assert inline("hlt03\n✅ RESOLVED everything", 100) == "hlt03 ✅ RESOLVED everything"
    assert inline("x" * 50, 10) == "x" * 9 + "…"


def test_truncate_marks_the_cut_and_respects_the_limit():
    assert truncate("short", 10) == "short"
    assert truncate("abcdefghij", 5) == "abcd…"
    assert truncate("abc", 1) == "…"
    assert truncate("abc", 0) == ""


def test_truncate_counts_like_the_server_and_never_splits_a_surrogate_pair():
    text = "🔥" * 10  # each is two UTF-16 units
    assert chat_len(text) == 20
    cut = truncate(text, 6)
    assert cut == "🔥🔥…" and chat_len(cut) <= 6


def test_truncate_never_splits_graphemes_or_escapes():
    assert truncate("ok 👍🏽 fine", 5) == "ok…"  # thumbs-up + skin tone stay together (or go together)
    assert truncate("e\u0301e\u0301e\u0301", 3) == "e\u0301…"  # base + combining accent
    assert truncate("🇯🇵🇩🇪", 7) == "🇯🇵…"  # flags are pairs of regional indicators
    assert truncate(neutralise("ab @all"), 5) == "ab…"  # not '@' without its zero-width space
    assert truncate("path\\\\more text", 7) == "path…"  # no trailing backslash escaping the mark


def test_truncate_output_always_fits():
    rng = random.Random(7)
    pieces = ["a", "🔥", "e\u0301", "👍🏽", "🇯🇵", "\\", " ", ZWSP, "@"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        limit = rng.randint(0, 40)
        out = truncate(text, limit)
        assert chat_len(out) <= max(limit, 0)
        if chat_len(text) <= limit:
            assert out == text
