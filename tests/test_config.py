"""Config loading: what a user writes, what they get back when it is wrong."""

from pathlib import Path

import pytest

from farmwatch.cli import main
from farmwatch.config import ConfigError
from farmwatch.config.loader import load
from farmwatch.durations import format_duration, parse_duration
from farmwatch.templates import expand

GOOD = """
[store]
path = "farmwatch.db"
retention = "14d"

[sources.hlt]
kind = "hlt_zmq"
interval = "1s"
timeout = "500ms"
endpoints = [
  { unit = "hlt{01..20}", app = "distributor",    address = "tcp://hltin{01..20}:7000" },
  { unit = "hlt{01..20}", app = "finalcollector", address = "tcp://hltout{01..20}:7000" },
  { unit = "hlt01", app = "proxyhistoserver", node = "hltwk{01..12}", address = "tcp://hltwk{01..12}:7100" },
]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "farmwatch.toml"
    p.write_text(text)
    return p


def test_durations():
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1s") == 1.0
    assert parse_duration("10m") == 600.0
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("14d") == 14 * 86400.0
    for bad in ("", "5", "1x", "s", "1 s s", 5):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    assert format_duration(90) == "1m30s"
    assert format_duration(0.25) == "250ms"


def test_templates_zip_same_range_and_multiply_different_ones():
    out = expand({"unit": "hlt{01..03}", "address": "tcp://hltin{01..03}:7000"})
    assert [e["address"] for e in out] == ["tcp://hltin01:7000", "tcp://hltin02:7000", "tcp://hltin03:7000"]
    assert [e["unit"] for e in out] == ["hlt01", "hlt02", "hlt03"]
    grid = expand({"unit": "hlt{1..2}", "node": "wk{a,b,c}"})
    assert len(grid) == 6 and {"unit": "hlt2", "node": "wkc"} in grid
    assert expand({"unit": "hlt01"}) == [{"unit": "hlt01"}]
    with pytest.raises(ValueError, match="backwards"):
        expand({"unit": "hlt{05..01}"})


def test_a_twenty_unit_farm_is_short_to_write(tmp_path):
    s = load(write(tmp_path, GOOD))
    eps = s.sources["hlt"].endpoints
    assert len(eps) == 20 + 20 + 12
    assert eps[0] == {"unit": "hlt01", "app": "distributor", "address": "tcp://hltin01:7000"}
    assert eps[-1] == {"unit": "hlt01", "app": "proxyhistoserver", "node": "hltwk12", "address": "tcp://hltwk12:7100"}
    assert s.sources["hlt"].timeout == 0.5 and s.store.retention == 14 * 86400
    assert s.store.path == tmp_path / "farmwatch.db"  # relative to the config file, not the cwd


def test_every_problem_is_one_line_naming_file_and_key(tmp_path):
    bad = """
[store]
retention = "forever"
colour = "blue"

[sources.hlt]
kind = "hlt_zmq"
interval = "1s"
timeout = "2s"
endpoints = [ { unit = "hlt01", app = "distributor", address = "hltin01:7000" } ]

[sources.other]
kind = "carrier_pigeon"
"""
    p = write(tmp_path, bad)
    with pytest.raises(ConfigError) as info:
        load(p)
    problems = info.value.problems
    assert all(line.startswith(f"{p}: ") for line in problems), problems
    text = "\n".join(problems)
    assert "store.retention: expected a duration" in text
    assert "store.colour: unknown key" in text
    assert "sources.hlt.endpoints: " in text and "is not tcp://host:port" in text
    assert "sources.other.kind: unknown source kind 'carrier_pigeon'; expected one of: " in text and "hlt_zmq" in text


def test_timeout_must_be_shorter_than_interval(tmp_path):
    cfg = GOOD.replace('timeout = "500ms"', 'timeout = "1s"')
    with pytest.raises(ConfigError, match=r"sources\.hlt: .*timeout \(1s\) must be shorter than interval"):
        load(write(tmp_path, cfg))


def test_endpoints_that_would_share_series_are_rejected(tmp_path):
    cfg = GOOD.replace('node = "hltwk{01..12}", ', "")
    with pytest.raises(ConfigError, match="same labels"):
        load(write(tmp_path, cfg))


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[store\n"))
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load(tmp_path / "nope.toml")


def test_check_config_exit_codes(tmp_path, capsys):
    assert main(["check-config", "-c", str(write(tmp_path, GOOD))]) == 0
    assert "OK: 1 source(s), 52 endpoint(s)" in capsys.readouterr().out
    assert main(["check-config", "-c", str(write(tmp_path, "[sources.x]\nkind = 1\n"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sources.x.kind: unknown source kind 1" in err[0]


def test_collect_with_a_bad_config_starts_nothing(tmp_path, capsys):
    p = write(tmp_path, GOOD.replace('interval = "1s"', 'interval = "often"'))
    assert main(["collect", "-c", str(p), "--once"]) == 2
    assert "sources.hlt.interval: expected a duration" in capsys.readouterr().err
    assert not (tmp_path / "farmwatch.db").exists()
