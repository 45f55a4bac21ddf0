"""Log line parsers on realistic lines: basf2 (and its variants), syslog RFC 3164/5424, JSON lines,
malformed and unknown lines (kept whole, never dropped)."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from farmwatch.sources.logfiles.parse import LineParser, level_name

TOKYO = ZoneInfo("Asia/Tokyo")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc).timestamp()


def utc(*args: int, micro: int = 0) -> float:
    return datetime(*args, micro, tzinfo=timezone.utc).timestamp()


@pytest.fixture
def parse():
    return LineParser("auto", TOKYO, now=lambda: NOW).parse


def test_basf2_plain_line_with_module(parse):
    p = parse("[INFO] Starting event processing  { module: HLTZMQ2Ds }")
    assert (p.ts, p.level, p.message, p.host) == (None, "info", "Starting event processing", None)
    assert p.fields == {"log.logger": "HLTZMQ2Ds"}


def test_basf2_full_location_process_id_and_debug_level(parse):
    p = parse("[ERROR] (3) Could not connect to tcp://hltin01:5000  "
              "{ module: HLTZMQ2Ds package: daq function: initialize @daq/hbasf2/src/HLTZMQ2Ds.cc:88 }")
    assert p.level == "error" and p.message == "Could not connect to tcp://hltin01:5000"
    assert p.fields == {"log.logger": "HLTZMQ2Ds", "labels.basf2_package": "daq", "log.origin.function": "initialize",
                        "log.origin.file.name": "daq/hbasf2/src/HLTZMQ2Ds.cc", "log.origin.file.line": 88,
                        "labels.basf2_process": "3"}
    d = parse("12.345: [DEBUG:20] socket poll returned 3 events")
    assert d.level == "debug" and d.ts is None and d.message == "socket poll returned 3 events"
    assert d.fields == {"labels.debug_level": "20", "labels.basf2_uptime": "12.345"}


def test_basf2_with_absolute_times_in_the_configured_zone_or_their_own(parse):
    naive = parse("2026-11-30 14:00:01.250 [WARNING] ready queue low  { module: ZMQDistributor }")
    assert naive.ts == utc(2026, 11, 30, 5, 0, 1, micro=250_000)  # 14:00 in Tokyo
    assert naive.level == "warning"
    zoned = parse("[2026-11-30T14:00:01+01:00] [B2FATAL] abort: no more workers")
    assert zoned.ts == utc(2026, 11, 30, 13, 0, 1) and zoned.level == "fatal" and zoned.message == "abort: no more workers"
    assert parse("2026-11-30T05:00:01,5Z [RESULT] 4711 events").ts == utc(2026, 11, 30, 5, 0, 1, micro=500_000)


def test_basf2_colour_codes_are_removed(parse):
    p = parse("\x1b[31m[ERROR] worker died\x1b[m")
    assert (p.level, p.message) == ("error", "worker died")


def test_message_with_braces_is_not_a_location(parse):
    p = parse("[INFO] config {a: 1} loaded")
    assert p.message == "config {a: 1} loaded" and p.fields is None


def test_python_logging_style_lines(parse):
    p = parse("2026-11-30 14:00:01,123 ERROR farmwatch.runner: store write failed")
    assert p.level == "error" and p.message == "farmwatch.runner: store write failed"
    assert p.ts == utc(2026, 11, 30, 5, 0, 1, micro=123_000)


def test_rfc5424_with_structured_data_and_bom(parse):
    line = ('<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 '
            '[exampleSDID@32473 iut="3" eventSource="App\\]lication"][x@1 a="b"] \ufeffAn application event')
    p = parse(line)
    assert p.ts == utc(2003, 10, 11, 22, 14, 15, micro=3000)
    assert (p.level, p.host, p.message) == ("notice", "mymachine.example.com", "An application event")
    assert p.fields["log.syslog.facility.code"] == 20 and p.fields["log.syslog.severity.code"] == 5
    assert p.fields["process.name"] == "evntslog" and p.fields["log.syslog.msgid"] == "ID47"
    assert p.fields["log.syslog.structured_data.exampleSDID@32473.eventSource"] == "App]lication"
    assert p.fields["log.syslog.structured_data.x@1.a"] == "b"
    nil = parse("<13>1 - - - - - -")
    assert (nil.ts, nil.host, nil.message, nil.level) == (None, None, "", "notice")


def test_rfc3164_year_is_guessed_from_the_clock(parse):
    p = parse("<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8")
    assert (p.level, p.host, p.message) == ("critical", "mymachine", "'su root' failed for lonvick on /dev/pts/8")
    assert p.ts == datetime(2026, 10, 11, 22, 14, 15, tzinfo=TOKYO).timestamp()
    assert p.fields["process.name"] == "su"
    december = parse("Dec 31 23:59:59 hltwk01 kernel[12]: oom-killer: gfp_mask=0x100cca")
    # read on 30 November: a 31 December line is from last year
    assert december.ts == datetime(2025, 12, 31, 23, 59, 59, tzinfo=TOKYO).timestamp()
    assert december.fields == {"process.name": "kernel", "process.pid": 12} and december.host == "hltwk01"


def test_rsyslog_file_format(parse):
    p = parse("2026-11-30T14:00:00.123456+09:00 hltwk01 systemd[1]: Started hlt-worker.service.")
    assert p.ts == utc(2026, 11, 30, 5, 0, 0, micro=123456)
    assert (p.host, p.message, p.fields["process.pid"]) == ("hltwk01", "Started hlt-worker.service.", 1)


def test_json_lines(parse):
    p = parse('{"@timestamp": "2026-11-30T05:00:00Z", "level": "ERROR", "message": "boom", '
              '"host": {"name": "hltwk02"}, "worker": 3, "ctx": {"run": 17, "tags": ["a"]}}')
    assert (p.ts, p.level, p.message, p.host) == (utc(2026, 11, 30, 5), "error", "boom", "hltwk02")
    assert p.fields == {"labels.worker": 3, "labels.ctx.run": 17, "labels.ctx.tags": '["a"]'}
    millis = parse('{"ts": 1764478800123, "msg": "x", "levelname": "WARN", "logger": "hlt.rc"}')
    assert millis.ts == pytest.approx(1764478800.123) and millis.level == "warning"
    assert millis.fields == {"log.logger": "hlt.rc"}


@pytest.mark.parametrize("line", ['{"broken": ', '{"a": 1} trailing', "[1, 2, 3]", "{not json}"])
def test_malformed_json_is_kept_raw_with_the_reason(line):
    p = LineParser("json").parse(line)
    assert p.message == line and p.level == "" and "error.message" in p.fields


@pytest.mark.parametrize("line", [
    "plain text without anything", "[notalevel] hello", "2026-13-45 99:99:99 garbage",
    "Nov 99 xx:yy:zz nothing", "<999>broken", "\x00\x01 binary", "Traceback (most recent call last):",
    "2026-11-30 24:00:01 [INFO] x", "2026-02-30 10:00:00 [INFO] x",  # not real times (once a ValueError from poll)
])
def test_unknown_lines_are_kept_whole(parse, line):
    p = parse(line)
    assert p.message == line.replace("\x1b", "") and p.level == "" and p.ts is None


def test_an_escape_that_is_no_colour_code_is_kept_raw(parse):
    """Once a RecursionError in auto mode."""
    p = parse("\x1bX hi")
    assert p.message == "\x1bX hi" and p.level == "" and p.ts is None


def test_fixed_formats_fall_back_to_raw():
    assert LineParser("basf2").parse("Nov 30 14:00:00 h p: x").message == "Nov 30 14:00:00 h p: x"
    assert LineParser("syslog").parse("[INFO] x").level == ""
    assert LineParser("raw").parse("[INFO] x").message == "[INFO] x"
    with pytest.raises(ValueError, match="unknown log format"):
        LineParser("xml")


def test_record_boundaries():
    p = LineParser()
    assert p.starts_record("[INFO] x") and p.starts_record("ValueError: x")
    for line in ("    continued", "\tcontinued", "", "Traceback (most recent call last):",
                 "During handling of the above exception, another exception occurred:",
                 "The above exception was the direct cause of the following exception:"):
        assert not p.starts_record(line)


def test_level_names():
    assert [level_name(x) for x in ("WARN", "Err", "CRIT", "emerg", "Custom")] == \
        ["warning", "error", "critical", "emergency", "custom"]
