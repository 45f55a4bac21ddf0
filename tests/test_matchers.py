"""Label matchers: ``=``/``!=`` exact as in Prometheus, ``=~``/``!~`` regular expressions, and
globs only through their own operators ``*=``/``!*=`` (issue 15 item 9: ``=`` used to turn into a
glob when the value held ``*``, ``?`` or ``[``, so Zabbix's ``item=net.if.in[eth0]`` matched
``net.if.ine`` and never itself)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from farmwatch.model import Sample
from farmwatch.store import SQLiteStore, parse_matchers
from farmwatch.matchers import Matcher, parse_matcher

T0 = 1_790_000_000.0
ITEMS = ("net.if.in[eth0]", "net.if.ine", "net.if.in[eth1]", "net.if.in*", "net.if.in?", "vm.memory.size[available]")


@pytest.mark.parametrize("value", ITEMS)
def test_equals_is_exact_whatever_the_value_holds(value):
    (eq,) = parse_matchers(f"item={value}")
    (ne,) = parse_matchers(f"item!={value}")
    assert [v for v in ITEMS if eq.matches({"item": v})] == [value]
    assert [v for v in ITEMS if ne.matches({"item": v})] == [v for v in ITEMS if v != value]
    assert parse_matcher(f'item="{value}"') == eq  # quoting changes nothing


def test_globs_and_regular_expressions_have_operators_of_their_own():
    def hits(text: str) -> list[str]:
        (m,) = parse_matchers(text)
        return [v for v in ITEMS if m.matches({"item": v})]

    assert hits("item*=net.if.in*") == ["net.if.in[eth0]", "net.if.ine", "net.if.in[eth1]", "net.if.in*", "net.if.in?"]
    assert hits("item*=net.if.in[[]eth?]") == ["net.if.in[eth0]", "net.if.in[eth1]"]
    assert hits("item!*=net.if.in*") == ["vm.memory.size[available]"]
    assert hits(r"item=~net\.if\.in\[eth[01]\]") == ["net.if.in[eth0]", "net.if.in[eth1]"]
    assert hits(r"item!~net\.if.*") == ["vm.memory.size[available]"]
    (glob,) = parse_matchers("host *= hltwk0*")
    assert (glob.label, glob.op, glob.value) == ("host", "*=", "hltwk0*")
    assert str(glob) == "host*=hltwk0*" and parse_matcher(str(glob)) == glob
    assert not glob.matches({}) and parse_matcher("host!*=hltwk0*").matches({})  # missing label is ""
    assert parse_matcher("host!=*x") == Matcher("host", "!=", "*x")  # != then a value, not a glob operator


@pytest.mark.parametrize("text", ["item~=x", "item**=x", "item=*", "*=x", "item!*x"])
def test_what_is_and_is_not_a_glob_operator(text):
    try:
        m = parse_matcher(text)
    except ValueError as exc:
        assert repr(text) in str(exc) and "label*=glob" in str(exc)
        return
    assert m.op in ("=", "!=") and m.matches({"item": m.value}) and not m.matches({"item": m.value + "x"})


def test_the_store_and_farmwatch_query_select_a_zabbix_item_by_its_exact_key(tmp_path: Path):
    """Through a real store file and the real command, as the README's Zabbix example reads."""
    db = tmp_path / "fw.db"
    with SQLiteStore(db) as store:
        store.write([Sample(T0 + i, "zabbix.net.if.in", 100.0 * n + i, (("host", "hltwk07"), ("item", item)))
                     for n, item in enumerate(ITEMS[:3]) for i in range(3)])
        frame = store.query("zabbix.net.if.in", ["item=net.if.in[eth0]"], since=T0 - 1)
        assert {dict(lb)["item"] for lb in frame["labels"]} == {"net.if.in[eth0]"}
        frame = store.query("zabbix.net.if.in", ["item*=net.if.in[[]*"], since=T0 - 1)
        assert {dict(lb)["item"] for lb in frame["labels"]} == {"net.if.in[eth0]", "net.if.in[eth1]"}
    config = tmp_path / "farmwatch.toml"
    config.write_text(f'[store]\npath = "{db}"\n')
    out = subprocess.run([sys.executable, "-m", "farmwatch", "query", "-c", str(config), "zabbix.net.if.in",
                          "--label", "item=net.if.in[eth0]", "--format", "json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["value"] for r in rows] == [0.0, 1.0, 2.0]
    assert {r["labels"]["item"] for r in rows} == {"net.if.in[eth0]"}
