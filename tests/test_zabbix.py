"""The Zabbix source against a real Zabbix 6.0 server (Debian's packages, started on loopback).

Each test makes its own host group, hosts and trapper items, pushes known values with
``zabbix_sender`` (with explicit clocks) and checks that farmwatch stores exactly those values:
incrementally, across a restart of farmwatch (a new source object on the same store file) and
across an outage of the API frontend; and what happens when the token is revoked, an item is
deleted, a host is renamed, a request is too big for PHP, or a trigger fires.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from farmwatch.clock import SimClock
from farmwatch.config import ConfigError
from farmwatch.config.loader import parse
from farmwatch.service.runner import Runner
from farmwatch.sources.zabbix.source import ZabbixConfig, ZabbixSource, problem_context
from farmwatch.store import SQLiteStore
from zabbix_helpers import zabbix_or_skip

pytestmark = [pytest.mark.real, pytest.mark.slow]

KEYS = {"system.cpu.util": 0, "vm.memory.size[available]": 3, "net.if.in[eth0]": 3, "proc.num[basf2]": 3}
"""The item keys of every test host, with their value types (0 float, 3 unsigned)."""
PASSWORD_ENV = "FARMWATCH_TEST_ZABBIX_SOURCE_PASSWORD"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def zbx():
    with zabbix_or_skip() as env:
        yield env


@pytest.fixture
def farm(zbx):
    """A host group with two worker hosts carrying the usual items plus two that must not be read."""
    group = zbx.unique("fw-test")
    gid = zbx.group(group)
    names = [f"{group}-wk01", f"{group}-wk02"]
    hostids = zbx.api.host.create(*[{"host": n, "groups": [{"groupid": gid}]} for n in names])["hostids"]
    # other.key is not selected by the source; system.uname (text) is selected but skipped by default.
    keys = {**KEYS, "other.key": 0, "system.uname": 1}
    specs = [(hid, key, vt) for hid in hostids for key, vt in keys.items()]
    itemids = zbx.trapper_items(specs)
    hosts = {n: {"hostid": hid, "items": {}} for n, hid in zip(names, hostids)}
    by_id = dict(zip(hostids, names))
    for (hid, key, _), itemid in zip(specs, itemids):
        hosts[by_id[hid]]["items"][key] = itemid
    zbx.synced(names[-1], hostids[-1])
    return {"group": group, "groupid": gid, "hosts": hosts}


@pytest.fixture
def login(monkeypatch, zbx):
    monkeypatch.setenv(PASSWORD_ENV, zbx.password)
    return {"user": zbx.user, "password_env": PASSWORD_ENV}


def make_source(zbx, farm, auth, name="zbx", clock=None, **settings) -> ZabbixSource:
    raw = {"kind": "zabbix", "url": zbx.url, **auth, "host_groups": [farm["group"]],
           "items": ["system.cpu.util", "vm.memory.size[available]", "net.if.in[*]", "proc.num[basf2]", "system.uname"],
           "backoff": "100ms", "backoff_max": "1s", **settings}
    return ZabbixSource(name, ZabbixConfig.model_validate(raw), clock=clock)


def push_known(zbx, farm, start: int, seconds: int, keys=tuple(KEYS)) -> set[tuple]:
    """One value per item and second from ``start``; returns what farmwatch must store for them."""
    rows, expected = [], set()
    for h, (host, spec) in enumerate(sorted(farm["hosts"].items())):
        for k, key in enumerate(keys):
            for s in range(seconds):
                clock = start + s
                value = 10.5 + h * 100 + k * 10 + s if KEYS[key] == 0 else 1000 * (h + 1) + k * 100 + s
                ns = 250_000_000 * (s % 4)
                rows.append((host, key, clock, ns, value))
                expected.add((f"zabbix.{key.split('[')[0]}", host, key, round((clock + ns / 1e9) * 1000), float(value)))
    zbx.push(rows)
    for host, spec in farm["hosts"].items():
        for vt in (0, 3):
            ids = [spec["items"][k] for k in keys if KEYS[k] == vt]
            if ids:
                zbx.wait_history(ids, len(ids) * seconds, value_type=vt, since=start)
    return expected


def stored(store: SQLiteStore) -> list[tuple]:
    """Every stored Zabbix value as (name, host, item, ts in ms, value)."""
    df = store.query("zabbix.*")
    df = df[df["name"].isin({f"zabbix.{k.split('[')[0]}" for k in KEYS})]
    return [(r.name, r.labels["host"], r.labels["item"], round(r.ts.timestamp() * 1000), r.value)
            for r in df.itertuples(index=False)]


def test_collects_exactly_the_pushed_values_incrementally_and_across_a_restart(zbx, farm, login, tmp_path):
    store = SQLiteStore(tmp_path / "fw.db")
    start = int(time.time()) - 30
    first = push_known(zbx, farm, start, 5)

    source = make_source(zbx, farm, login)
    Runner([source], store).run_once()
    got = stored(store)
    assert sorted(got) == sorted(first)
    assert len(got) == len(set(got)) == 2 * 4 * 5
    assert source.stats.skipped_items == 2  # the text items are selected but not read (text = "skip"): counted
    assert len(source.items) == 10  # other.key is not selected

    second = push_known(zbx, farm, start + 5, 3)
    calls = source.api.calls
    Runner([source], store).run_once()
    assert sorted(stored(store)) == sorted(first | second)
    assert source.stats.values == len(first) + len(second)  # nothing was read twice
    assert source.api.calls - calls <= 4  # history per value type + problems (+ trigger lookup): bounded

    # farmwatch restarts: a new source object on the same store resumes from the saved cursors.
    cursors = store.cursors("zbx")
    assert sorted(cursors) == sorted(["catalog"] + [f"item:{i}" for h in farm["hosts"].values()
                                                    for k, i in h["items"].items() if k in KEYS])
    third = push_known(zbx, farm, start + 8, 2)
    restarted = make_source(zbx, farm, login)
    Runner([restarted], store).run_once()
    assert restarted.stats.values == len(third)
    assert sorted(stored(store)) == sorted(first | second | third)

    # A crash after the samples were stored but before the cursors were saved: the next start reads
    # those values again and the store keeps them once.
    fourth = push_known(zbx, farm, start + 10, 2)
    crashing = make_source(zbx, farm, login)
    crashing.bind_store(store)
    store.write(crashing.poll())  # no written(): the cursors stay behind
    again = make_source(zbx, farm, login)
    Runner([again], store).run_once()
    assert again.stats.values == len(fourth)
    assert sorted(stored(store)) == sorted(first | second | third | fourth)

    health = store.latest("up", {"source": "zbx"})
    assert set(health["value"]) == {1.0} and set(health["host"].dropna()) == set(farm["hosts"])
    store.close()


def test_the_running_service_saves_cursors_only_after_the_samples_are_stored(zbx, farm, login, tmp_path):
    """The runner's writer thread acknowledges each stored cycle; only then are the cursors saved."""
    store = SQLiteStore(tmp_path / "fw.db")
    start = int(time.time()) - 30
    expected = push_known(zbx, farm, start, 3)
    source = make_source(zbx, farm, login, interval="1s", timeout="900ms")
    saved = []
    original = store.save_cursors

    def save_cursors(name, cursors, **kw):
        if "catalog" not in cursors:  # (the cached host and item lists are saved when listed)
            saved.append(len(stored(store)))  # what was in the store when the cursors were saved
        original(name, cursors, **kw)

    store.save_cursors = save_cursors
    stop = threading.Event()
    runner = threading.Thread(target=Runner([source], store).run, args=(stop,))
    runner.start()
    deadline = time.monotonic() + 20
    while len(store.cursors("zbx")) < 9 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    runner.join(10)
    assert saved and saved[0] == len(expected)
    assert sorted(stored(store)) == sorted(expected)
    assert {k: tuple(v) for k, v in store.cursors("zbx").items() if k != "catalog"} == {
        f"item:{i}": (start + 2, 500_000_000)  # the last value pushed: second 2, 500 ms
        for spec in farm["hosts"].values() for key, i in spec["items"].items() if key in KEYS}
    store.close()


def test_host_map_labels_and_clock_skew(zbx, farm, login, tmp_path):
    """Farm host names via host_map; a farmwatch clock far from Zabbix's changes nothing but the skew series."""
    store = SQLiteStore(tmp_path / "fw.db")
    start = int(time.time()) - 30
    expected = push_known(zbx, farm, start, 2, keys=("system.cpu.util",))
    wk01, wk02 = sorted(farm["hosts"])
    skewed = SimClock(time.time() - 3 * 86400)  # farmwatch's clock three days behind
    source = make_source(zbx, farm, login, clock=skewed, host_map={wk01: "hltwk01"}, items=["system.cpu.*"])
    Runner([source], store, clock=skewed).run_once()
    renamed = {(n, "hltwk01" if h == wk01 else h, i, t, v) for n, h, i, t, v in expected}
    assert sorted(stored(store)) == sorted(renamed)
    skew = store.latest("zabbix.clock_skew")["value"].iloc[0]
    assert skew == pytest.approx(3 * 86400, abs=5)
    store.close()


def test_api_frontend_outage_is_caught_up_without_gaps(zbx, farm, login, tmp_path, caplog):
    if zbx.managed is None:
        pytest.skip("needs the Zabbix started by scripts/zabbix_testenv.py (stops its PHP frontend)")
    store = SQLiteStore(tmp_path / "fw.db")
    start = int(time.time()) - 30
    before = push_known(zbx, farm, start, 2)
    source = make_source(zbx, farm, login)
    Runner([source], store).run_once()

    zbx.stop_api()
    try:
        during = set()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="farmwatch.sources.zabbix"):
            # The server keeps receiving values while the frontend is down.
            rows_start = start + 2
            during = push_known_without_api(zbx, farm, rows_start, 3)
            Runner([source], store).run_once()
            time.sleep(0.15)
            Runner([source], store).run_once()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]  # one line per episode, not per retry
        assert "unreachable" in errors[0].getMessage() and zbx.url in errors[0].getMessage()
        assert store.latest("up", {"source": "zbx", "host": ""})["value"].iloc[0] == 0.0
    finally:
        zbx.start_api()
    zbx.api = zbx.login()
    for host, spec in farm["hosts"].items():
        for vt in (0, 3):
            ids = [spec["items"][k] for k in KEYS if KEYS[k] == vt]
            zbx.wait_history(ids, len(ids) * 5, value_type=vt, since=start)
    time.sleep(0.15)  # past the backoff
    Runner([source], store).run_once()
    assert source.up is True
    assert sorted(stored(store)) == sorted(before | during)
    store.close()


def push_known_without_api(zbx, farm, start, seconds):
    """Like push_known, but without reading back through the (stopped) API."""
    rows, expected = [], set()
    for h, (host, spec) in enumerate(sorted(farm["hosts"].items())):
        for k, key in enumerate(KEYS):
            for s in range(seconds):
                value = 7.25 + s if KEYS[key] == 0 else 50 + h + k + s
                rows.append((host, key, start + s, 0, value))
                expected.add((f"zabbix.{key.split('[')[0]}", host, key, (start + s) * 1000, float(value)))
    zbx.push(rows)
    return expected


def test_revoked_token_is_one_clear_line_then_retried_until_a_new_token_works(zbx, farm, tmp_path, caplog):
    admin_id = zbx.api.user.get(filter={"username": zbx.user}, output=["userid"])[0]["userid"]
    tid = zbx.api.token.create(name=zbx.unique("fw"), userid=admin_id)["tokenids"][0]
    secret = zbx.api.token.generate(tid)[0]["token"]
    token_file = tmp_path / "zabbix-token"
    token_file.write_text(secret + "\n")
    store = SQLiteStore(tmp_path / "fw.db")
    start = int(time.time()) - 30
    first = push_known(zbx, farm, start, 2)
    source = make_source(zbx, farm, {"token_file": str(token_file)})
    Runner([source], store).run_once()
    assert sorted(stored(store)) == sorted(first)

    zbx.api.token.delete(tid)
    second = push_known(zbx, farm, start + 2, 2)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        Runner([source], store).run_once()
        time.sleep(0.15)
        Runner([source], store).run_once()  # retried after the backoff: fails again, logs nothing new
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "credentials were refused" in errors[0], errors
    assert secret not in caplog.text
    assert source.up is False and sorted(stored(store)) == sorted(first)

    tid2 = zbx.api.token.create(name=zbx.unique("fw"), userid=admin_id)["tokenids"][0]
    token_file.write_text(zbx.api.token.generate(tid2)[0]["token"])  # rotated: read again at the next login
    time.sleep(0.25)
    Runner([source], store).run_once()
    assert source.up is True
    assert sorted(stored(store)) == sorted(first | second)
    store.close()


def test_an_expired_password_session_is_renewed_quietly(zbx, farm, login, tmp_path, caplog):
    store = SQLiteStore(tmp_path / "fw.db")
    start = int(time.time()) - 30
    first = push_known(zbx, farm, start, 1)
    source = make_source(zbx, farm, login)
    Runner([source], store).run_once()
    other = zbx.login()
    other.auth = source.api.zapi.auth  # end farmwatch's session, as Zabbix' auto-logout would
    other.user.logout()
    second = push_known(zbx, farm, start + 1, 1)
    with caplog.at_level(logging.WARNING, logger="farmwatch"):
        Runner([source], store).run_once()
    assert source.up is True and not caplog.records
    assert sorted(stored(store)) == sorted(first | second)
    store.close()


def test_deleted_item_and_renamed_host(zbx, farm, login, tmp_path, caplog):
    store = SQLiteStore(tmp_path / "fw.db")
    start = int(time.time()) - 30
    first = push_known(zbx, farm, start, 2)
    source = make_source(zbx, farm, login, rediscover="1ms")
    Runner([source], store).run_once()
    assert sorted(stored(store)) == sorted(first)

    wk01, wk02 = sorted(farm["hosts"])
    gone = farm["hosts"][wk02]["items"]["proc.num[basf2]"]
    zbx.api.item.delete(gone)
    zbx.api.host.update(hostid=farm["hosts"][wk01]["hostid"], host=wk01 + "-new")
    farm["hosts"][wk01 + "-new"] = farm["hosts"].pop(wk01)
    del farm["hosts"][wk02]["items"]["proc.num[basf2]"]
    rows = []
    for host, spec in farm["hosts"].items():  # per host: the new name is refused until the server's next sync
        mine = [(host, key, start + 5, 0, 42) for key in spec["items"] if key in KEYS]
        zbx.push(mine)
        rows += mine
    for host, spec in farm["hosts"].items():
        ids = [spec["items"][k] for k in spec["items"] if KEYS.get(k) == 3]
        zbx.wait_history(ids, len(ids), value_type=3, since=start + 5)
    with caplog.at_level(logging.WARNING, logger="farmwatch.sources.zabbix"):
        Runner([source], store).run_once()
    text = caplog.text
    assert f"item proc.num[basf2] on {wk02} (itemid {gone}) is gone" in text
    assert f"host {wk01} was renamed to {wk01}-new" in text
    assert f"item:{gone}" not in store.cursors("zbx")
    new_values = [v for v in stored(store) if v[3] == (start + 5) * 1000]
    assert sorted((h, i) for _, h, i, _, _ in new_values) == sorted(
        (h, k) for h, spec in farm["hosts"].items() for k in spec["items"] if k in KEYS)
    assert source.stats.values == len(first) + len(rows)  # the renamed host's items were not read again
    store.close()


def test_problems_become_series_and_alert_context(zbx, farm, login, tmp_path):
    store = SQLiteStore(tmp_path / "fw.db")
    wk01, wk02 = sorted(farm["hosts"])
    zbx.api.trigger.create(description="High CPU temperature on {HOST.NAME}", priority=4,
                           expression=f"last(/{wk01}/system.cpu.util)>90", tags=[{"tag": "scope", "value": "hlt"}])
    deadline = time.monotonic() + 20
    while True:  # a value fires the trigger once the server has synced it (within ~2 s)
        zbx.push([(wk01, "system.cpu.util", int(time.time()), 0, 95.5)])
        time.sleep(0.5)
        fired = zbx.api.problem.get(hostids=[farm["hosts"][wk01]["hostid"]], output=["clock"])
        if fired or time.monotonic() > deadline:
            break
    assert fired, "the trigger did not fire"
    now = int(fired[0]["clock"])
    source = make_source(zbx, farm, login)
    Runner([source], store).run_once()

    problems = store.latest("zabbix.problem")
    assert len(problems) == 1
    row = problems.iloc[0]
    assert row["host"] == wk01 and row["severity"] == "high" and row["tags"] == "scope:hlt"
    assert row["problem"] == f"High CPU temperature on {wk01}" and int(row["value"]) == now
    assert set(store.latest("zabbix.problems").set_index("host")["value"].items()) == {(wk01, 1.0), (wk02, 0.0)}
    since = time.strftime("%H:%M", time.localtime(row["value"]))
    assert problem_context(store, wk01) == [f"Zabbix reports: High CPU temperature on {wk01} since {since} (high)"]
    assert problem_context(store, wk01, at=now - 3600) == []  # nothing stored back then
    assert problem_context(store, wk02) == []

    zbx.push([(wk01, "system.cpu.util", int(time.time()) + 1, 0, 20.0)])  # resolves the problem
    deadline = time.monotonic() + 20
    while zbx.api.problem.get(hostids=[farm["hosts"][wk01]["hostid"]]) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.01)
    Runner([source], store).run_once()
    assert problem_context(store, wk01) == []
    store.close()


def test_gap_beyond_the_horizon_is_filled_with_hourly_trends(zbx, farm, login, tmp_path):
    """farmwatch was down for five hours; with horizon = 20m it reads trends for the gap, history after."""
    if zbx.managed is None:
        pytest.skip("needs the Zabbix started by scripts/zabbix_testenv.py (writes trend rows into its database)")
    store = SQLiteStore(tmp_path / "fw.db")
    wk01 = sorted(farm["hosts"])[0]
    itemid = farm["hosts"][wk01]["items"]["system.cpu.util"]
    now = int(time.time())
    hour = now - now % 3600
    store.save_cursors("zbx", {f"item:{itemid}": [hour - 5 * 3600 + 10, 0]})  # the last value read, 5 h ago
    # The hourly trends Zabbix's trend syncer would have written meanwhile (a fresh server has none).
    trends = [(hour - h * 3600, 60, 10.0 + h, 20.0 + h, 30.0 + h) for h in range(5, 0, -1)]
    zbx.testenv._psql(zbx.managed, "INSERT INTO trends(itemid, clock, num, value_min, value_avg, value_max) VALUES "
                      + ",".join(f"({itemid}, {c}, {n}, {lo}, {avg}, {hi})" for c, n, lo, avg, hi in trends),
                      db="zabbix", user="zabbix")
    zbx.push([(wk01, "system.cpu.util", now - 1500, 0, 99.0),  # before the horizon: covered by the trends
              (wk01, "system.cpu.util", now - 100, 0, 1.0), (wk01, "system.cpu.util", now - 50, 0, 2.0)])
    zbx.wait_history([itemid], 3, since=now - 1500)
    if now - 1500 < hour:  # the server adds a value with an old clock to that hour's trend row: wait for it
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and zbx.api.trend.get(itemids=[itemid], time_from=hour - 3600,
                                                                 time_till=hour - 1, output=["num"])[0]["num"] != "61":
            time.sleep(0.2)
    trends = [(int(r["clock"]), int(r["num"]), float(r["value_min"]), float(r["value_avg"]), float(r["value_max"]))
              for r in zbx.api.trend.get(itemids=[itemid], output="extend")]
    assert len(trends) == 5
    source = make_source(zbx, farm, login, horizon="20m", items=["system.cpu.util"])
    Runner([source], store).run_once()

    got = store.query("zabbix.system.cpu.util*", {"host": wk01})
    series = {(r.name, round(r.ts.timestamp()), r.value) for r in got.itertuples(index=False)}
    expected = {("zabbix.system.cpu.util", now - 100, 1.0), ("zabbix.system.cpu.util", now - 50, 2.0)}
    for c, _, lo, avg, hi in trends:
        expected |= {("zabbix.system.cpu.util:min1h", c, lo), ("zabbix.system.cpu.util:avg1h", c, avg),
                     ("zabbix.system.cpu.util:max1h", c, hi)}
    assert series == expected
    assert source.stats.trend_rows == 5
    store.close()


def test_oversized_request_halves_the_chunk_and_loses_nothing(zbx, farm, login, tmp_path, caplog):
    """A PHP frontend with little memory fails (HTTP 500) on a big history.get; smaller calls pass."""
    if zbx.managed is None:
        pytest.skip("needs the Zabbix started by scripts/zabbix_testenv.py (starts a second, small frontend)")
    store = SQLiteStore(tmp_path / "fw.db")
    start = int(time.time()) - 1600
    expected = push_known(zbx, farm, start, 1500)  # 12,000 values: one call for all fails at 8 MB, a quarter passes
    port = zbx.testenv.free_port()
    zbx.start_api(port=port, memory_limit=os.environ.get("FARMWATCH_TEST_ZABBIX_SMALL_PHP", "8M"), name="php-small")
    try:
        source = make_source(zbx, farm, login, url=f"http://127.0.0.1:{port}", chunk_items=8, limit=100_000,
                             window="1h", backfill="30m")
        with caplog.at_level(logging.WARNING, logger="farmwatch.sources.zabbix"):
            Runner([source], store).run_once()
    finally:
        zbx.stop_api(name="php-small")
    assert source.stats.shrinks >= 1 and source.chunk_items < 8
    assert "too big for the server" in caplog.text
    assert source.up is True
    assert sorted(stored(store)) == sorted(expected)
    store.close()


def test_the_example_collector_config_collects_with_the_farmwatch_command(zbx, farm, tmp_path):
    """collectors/zabbix.toml, pointed at the test server, run twice by `farmwatch collect --once`."""
    admin_id = zbx.api.user.get(filter={"username": zbx.user}, output=["userid"])[0]["userid"]
    tid = zbx.api.token.create(name=zbx.unique("fw"), userid=admin_id)["tokenids"][0]
    token = zbx.api.token.generate(tid)[0]["token"]
    wk01, wk02 = sorted(farm["hosts"])
    text = (ROOT / "collectors" / "zabbix.toml").read_text()
    for old, new in ((r'^path = .*$', f'path = "{tmp_path / "fw.db"}"'), (r'^url = .*$', f'url = "{zbx.url}"'),
                     (r'^host_groups = .*$', f'host_groups = ["{farm["group"]}"]'), (r'^hosts = .*$', ''),
                     (r'^host_map = .*$', f'host_map = {{ "{wk01}" = "hltwk01" }}')):
        text, n = re.subn(old, lambda _m, new=new: new, text, count=1, flags=re.M)
        assert n == 1, old
    config = tmp_path / "zabbix.toml"
    config.write_text(text)
    env = {**os.environ, "FARMWATCH_ZABBIX_TOKEN": token}
    start = int(time.time()) - 30
    first = push_known(zbx, farm, start, 2)
    for expected in (first, push_known(zbx, farm, start + 2, 2)):
        proc = subprocess.run([sys.executable, "-m", "farmwatch", "collect", "-c", str(config), "--once"],
                              capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        assert token not in proc.stderr
    with SQLiteStore(tmp_path / "fw.db") as store:
        mapped = {(n, "hltwk01" if h == wk01 else h, i, t, v) for n, h, i, t, v in first | expected}
        assert sorted(stored(store)) == sorted(mapped)


@pytest.mark.parametrize("body, problem", [
    ({"token": "abc"}, "sources.zbx: token: secrets never go into the config"),
    ({"token_env": "T", "items": []}, "sources.zbx.items: List should have at least 1 item"),
    ({"token_env": "T", "url": "zabbix.example"}, "sources.zbx.url: expected http(s)://host"),
    ({"user": "farmwatch"}, "sources.zbx: needs an API token (token_env or token_file, preferred) or user with"),
    ({"token_env": "T", "host_groups": []}, "sources.zbx: needs host_groups and/or hosts"),
    ({"token_env": "T", "chunk_items": 0}, "sources.zbx.chunk_items: Input should be greater than or equal to 1"),
    ({"token_env": "T", "ca_file": "/nonexistent/ca.pem"}, "sources.zbx.ca_file: no such file: /nonexistent/ca.pem"),
    ({"token_env": "T", "text": "keep"}, "sources.zbx.text: Input should be 'skip' or 'state'"),
])
def test_config_errors_are_one_line_naming_the_key(body, problem):
    raw = {"kind": "zabbix", "url": "https://zabbix.example", "host_groups": ["HLT workers"],
           "items": ["system.cpu.util"], **body}
    with pytest.raises(ConfigError) as err:
        parse({"sources": {"zbx": raw}}, "farmwatch.toml")
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith("farmwatch.toml: " + problem), err.value.problems


def test_five_values_of_one_item_at_one_second_are_all_stored(zbx, farm, login, tmp_path):
    """Issue 15 item 5: values sent together in one second (Zabbix numbers their ns 0-4) are all kept."""
    host = sorted(farm["hosts"])[0]
    itemid = farm["hosts"][host]["items"]["system.cpu.util"]
    clock = int(time.time()) - 20
    zbx.push([(host, "system.cpu.util", clock, ns, 10.0 + ns) for ns in range(5)])
    zbx.wait_history([itemid], 5, value_type=0, since=clock)
    store = SQLiteStore(tmp_path / "fw.db")
    runner = Runner([make_source(zbx, farm, login)], store)
    written = runner.run_once()
    got = [v for n, h, i, ts, v in stored(store) if h == host and i == "system.cpu.util"]
    assert got == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert written == len(store.query())  # what the runner counts as written is what is stored


def test_cron_runs_reuse_the_cached_host_and_item_lists(zbx, farm, login, tmp_path):
    """Each ``collect --once`` is a new process: the lists come from the store until ``rediscover``."""
    store = SQLiteStore(tmp_path / "fw.db")
    start = int(time.time()) - 40
    first = push_known(zbx, farm, start, 3)
    one = make_source(zbx, farm, login, rediscover="1h")
    Runner([one], store).run_once()
    assert one.api.calls_by_method.get("item.get") == 1 and one.api.calls_by_method.get("host.get") == 1

    second = push_known(zbx, farm, start + 3, 3)
    two = make_source(zbx, farm, login, rediscover="1h")  # the next cron run
    Runner([two], store).run_once()
    assert "item.get" not in two.api.calls_by_method and "host.get" not in two.api.calls_by_method
    assert two.items.keys() == one.items.keys()
    assert [it.labels for it in two.items.values()] == [it.labels for it in one.items.values()]
    assert sorted(stored(store)) == sorted(first | second)

    other = make_source(zbx, farm, login, rediscover="1h", items=["system.cpu.util"])  # other settings: listed again
    Runner([other], SQLiteStore(tmp_path / "fw.db")).run_once()
    assert other.api.calls_by_method.get("item.get") == 1 and len(other.items) == 2
    time.sleep(2.1)
    three = make_source(zbx, farm, login, rediscover="2s")  # the cache is older than rediscover
    Runner([three], store).run_once()
    assert three.api.calls_by_method.get("item.get") == 1
