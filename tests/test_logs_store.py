"""The embedded log store (SQLite + FTS5): idempotent writes, search, retention, the feed that
gives alert rules their log records, and the ``farmwatch logs search`` command end to end
(``farmwatch collect --once`` over real files, then searching, also with ``--follow``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farmwatch.service.assemble import build_alerting
from farmwatch.clock import SimClock
from farmwatch.config.loader import parse
from farmwatch.model import LogRecord
from farmwatch.store import SQLiteStore
from farmwatch.store.logs import LogFeed, LogStore, fts_query

T0 = 1_764_478_800.0  # 2025-11-30 05:00 UTC


def rec(i: int, message: str, *, host: str = "hltwk01", service: str = "hltapp", level: str = "info",
        ts: float | None = None, path: str = "/var/log/hlt/app.log") -> LogRecord:
    return LogRecord(T0 + i if ts is None else ts, host, service, level, message,
                     {"log.file.path": path, "log.offset": i * 100, "log.file.fingerprint": "1:2:1024:abcd",
                      "log.logger": "HLTZMQ2Ds"})


@pytest.fixture
def logs(tmp_path: Path):
    store = SQLiteStore(tmp_path / "s.db", retention=3600.0, clock=SimClock(T0 + 100))
    yield LogStore(store)
    store.close()


@pytest.fixture
def sample(logs):
    logs.write_logs([
        rec(0, "Starting event processing"),
        rec(1, "No event from tcp://hltin01:5000 for 12 s; worker may be stuck", level="error"),
        rec(2, "worker process 4711 died", host="hltwk02", level="error"),
        rec(3, "Ready queue below 4 slots", host="hltwk11", level="warning"),
        rec(4, "worker restarted", host="hltwk02", service="rc"),
        rec(5, "Exception in event processing\nTraceback (most recent call last):\nValueError: bad header",
            host="hltwk03", level="error"),
    ])
    return logs


def messages(records) -> list[str]:
    return [r.message.split("\n")[0] for r in records]


def test_records_round_trip_and_resends_are_stored_once(logs):
    first = [rec(i, f"message {i}") for i in range(10)]
    assert logs.write_logs(first) == 10
    assert logs.write_logs(first[5:] + [rec(10, "message 10")]) == 1  # a retry after a crash: only the new one
    assert logs.count() == 11
    newest = logs.search(limit=1)[0]
    assert newest == rec(10, "message 10")  # every field survives, fields included


def test_search_words_are_anded_over_message_level_host_and_service(sample):
    assert messages(sample.search("worker")) == ["worker restarted", "worker process 4711 died",
                                                  "No event from tcp://hltin01:5000 for 12 s; worker may be stuck"]
    assert messages(sample.search("ERROR worker")) == ["worker process 4711 died",
                                                        "No event from tcp://hltin01:5000 for 12 s; worker may be stuck"]
    assert messages(sample.search("hltwk02 worker")) == ["worker restarted", "worker process 4711 died"]
    assert messages(sample.search("traceback")) == ["Exception in event processing"]  # any line of a record


def test_search_phrases_prefixes_exclusions_and_log_text_with_syntax_characters(sample):
    assert messages(sample.search('"process 4711"')) == ["worker process 4711 died"]
    assert messages(sample.search('"4711 process"')) == []
    assert messages(sample.search("restart*")) == ["worker restarted"]
    assert messages(sample.search("worker -died -stuck")) == ["worker restarted"]
    assert messages(sample.search("tcp://hltin01:5000")) == ["No event from tcp://hltin01:5000 for 12 s; worker may be stuck"]
    assert messages(sample.search("-worker", limit=10)) == ["Exception in event processing", "Ready queue below 4 slots",
                                                            "Starting event processing"]
    for odd in ('worker" AND (', "NEAR(", "*", "-", '"', "col:umn"):
        sample.search(odd)  # never an FTS5 syntax error
    assert fts_query('a "b c" d* -e') == ('"a" AND "b c" AND "d"*', '"e"')


def test_terms_made_only_of_underscores_or_punctuation_are_ignored(sample):
    """Issue 15 item 11: FTS5 keeps letters and digits only, so ``_`` became an empty phrase
    that nothing matches and ``worker _`` found nothing while ``worker`` found three."""
    worker = messages(sample.search("worker"))
    assert len(worker) == 3
    for extra in ("_", "__", "-_", '"_"', "_*", "·", "…", "_-_", "'"):
        assert messages(sample.search(f"worker {extra}")) == worker, extra
    assert fts_query("worker _ __ -_ x_y") == ('"worker" AND "x_y"', "")
    assert messages(sample.search("4711_")) == ["worker process 4711 died"]  # a word with an underscore still counts


def test_search_filters(sample):
    assert messages(sample.search(host="hltwk0*", level="error")) == [
        "Exception in event processing", "worker process 4711 died", "No event from tcp://hltin01:5000 for 12 s; worker may be stuck"]
    assert messages(sample.search(host="hltwk1?")) == ["Ready queue below 4 slots"]
    assert messages(sample.search(service="rc")) == ["worker restarted"]
    assert messages(sample.search(level="warning,ERROR", since=T0 + 2, until=T0 + 3)) == [
        "Ready queue below 4 slots", "worker process 4711 died"]
    # levels as logs spell them: WARN and err are warning and error (the stored, normalised names)
    assert messages(sample.search(level="WARN, err", since=T0 + 2, until=T0 + 3)) == [
        "Ready queue below 4 slots", "worker process 4711 died"]
    assert len(sample.search(limit=2)) == 2
    frame = sample.search_frame("worker", host="hltwk02")
    assert list(frame["message"]) == ["worker restarted", "worker process 4711 died"]
    assert str(frame["ts"].dt.tz) == "UTC"


def test_retention_deletes_old_records_and_their_index_entries(logs):
    logs.write_logs([rec(i, f"old worker {i}", ts=T0 - 7200 + i) for i in range(5)] + [rec(9, "new worker")])
    assert logs.apply_retention() == 5  # the store's clock says T0 + 100, retention 1 h
    assert messages(logs.search("worker")) == ["new worker"]
    with logs.store.transaction("check") as conn:
        assert conn.execute("SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'old'").fetchone()[0] == 0


def test_after_returns_each_new_record_once_in_storage_order(logs):
    logs.write_logs([rec(0, "a")])
    none, last = logs.after(None)
    assert none == []
    logs.write_logs([rec(1, "b", level="error"), rec(2, "c"), rec(3, "late", ts=T0 - 500)])
    new, last = logs.after(last)
    assert messages(new) == ["b", "c", "late"]
    assert logs.after(last) == ([], last)
    logs.write_logs([rec(4, "d", level="error"), rec(5, "e")])
    errors, _ = logs.after(last, level="error")
    assert messages(errors) == ["d"]


def test_log_count_rules_get_the_stored_records(tmp_path: Path):
    """``farmwatch run`` and ``watch`` alike: the engine reads new records from the store each
    evaluation, so a burst of errors on one node fires, per node."""
    rules = tmp_path / "rules.toml"
    rules.write_text('''
[[rule]]
name = "WorkerErrorBurst"
kind = "log_count"
level = "error"
pattern = "(?i)worker"
by = ["host"]
window = "5m"
value = 2
summary = "{count} worker errors on {host}"
''')
    settings = parse({"alerting": {"rules": [str(rules)], "shipped_rules": False}}, "test")
    clock = SimClock(T0)
    store = SQLiteStore(tmp_path / "s.db", clock=clock)
    alerting = build_alerting(settings, store, clock=clock, notifiers={})
    assert isinstance(alerting.engine.log_feed, LogFeed)
    logs = LogStore(store)
    logs.write_logs([rec(i, f"worker {i} died", level="error", host="hltwk07", ts=T0 - 10 + i) for i in range(3)]
                    + [rec(9, "worker 9 died", level="error", host="hltwk08", ts=T0 - 5),
                       rec(10, "worker fine", level="info", host="hltwk08", ts=T0 - 4)])
    result = alerting.engine.evaluate(T0)
    fired = {(event, dict(a.labels).get("host"), a.value) for _, event, a in result.events}
    assert ("firing", "hltwk07", 3.0) in fired and not any(h == "hltwk08" for _, h, _ in fired)
    logs.write_logs([rec(20 + i, "worker crash", level="error", host="hltwk08", ts=T0 + 1) for i in range(2)])
    result = alerting.engine.evaluate(T0 + 5)
    assert any(e == "firing" and dict(a.labels).get("host") == "hltwk08" for _, e, a in result.events)
    store.close()


# -- the command ------------------------------------------------------------------------------------

def farmwatch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "farmwatch", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def collected(tmp_path: Path):
    """Real files collected by ``farmwatch collect --once`` into a store, as a cron job would."""
    (tmp_path / "hlt01").mkdir()
    (tmp_path / "hlt01" / "hltwk01.log").write_text(
        "2026-11-30 05:00:00.000Z [INFO] Starting event processing  { module: HLTZMQ2Ds }\n"
        "2026-11-30 05:00:01.000Z [ERROR] No event from worker hltwk01 for 12 s  { module: ZMQDistributor }\n"
        "2026-11-30 05:00:02.000Z [ERROR] \x1b[31m worker died\x1b]0;pwned\x07  { module: ZMQDistributor }\n\n")
    (tmp_path / "hlt01" / "hltwk11.log").write_text(
        "2026-11-30 05:00:03.000Z [ERROR] worker process 12 died\n\n")
    (tmp_path / "farmwatch.toml").write_text(f'''
[store]
path = "fw.db"

[sources.hlt]
kind = "logfiles"
paths = ["{tmp_path}/hlt*/*.log"]
path_pattern = '/(?P<host>hltwk\\d+)\\.log$'
service = "hltapp"
multiline_wait = "0s"
''')
    done = farmwatch("collect", "--once", "-c", "farmwatch.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path


def test_cli_search_text_and_json(collected: Path):
    out = farmwatch("logs", "search", "ERROR worker", "--host", "hltwk0*", "-c", "farmwatch.toml", cwd=collected)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines == [
        "2026-11-30T05:00:01.000Z hltwk01 hltapp ERROR   No event from worker hltwk01 for 12 s",
        "2026-11-30T05:00:02.000Z hltwk01 hltapp ERROR   \\x1b[31m worker died\\x1b]0;pwned\\x07",  # escaped, not obeyed
    ]
    out = farmwatch("logs", "search", "died", "--format", "json", "--since", "3650d", "-c", "farmwatch.toml", cwd=collected)
    docs = [json.loads(line) for line in out.stdout.splitlines()]
    assert [d["host.name"] for d in docs] == ["hltwk01", "hltwk11"]
    assert docs[1]["@timestamp"] == "2026-11-30T05:00:03Z" and docs[1]["log.level"] == "error"
    assert docs[1]["log.file.path"].endswith("hlt01/hltwk11.log") and docs[1]["log.offset"] == 0
    assert farmwatch("logs", "search", "nothing-like-this", "-c", "farmwatch.toml", cwd=collected).stdout == ""
    alone = farmwatch("logs", "search", "died", "--since", "3650d", "-c", "farmwatch.toml", cwd=collected).stdout
    underscored = farmwatch("logs", "search", "died _", "--since", "3650d", "-c", "farmwatch.toml", cwd=collected)
    assert len(alone.splitlines()) == 2 and underscored.stdout == alone, underscored.stderr
    bad = farmwatch("logs", "search", "x", "--since", "yesterday-ish", "-c", "farmwatch.toml", cwd=collected)
    assert bad.returncode == 2 and "yesterday-ish" in bad.stderr


def test_cli_follow_prints_new_records_as_they_are_stored(collected: Path):
    proc = subprocess.Popen([sys.executable, "-m", "farmwatch", "logs", "search", "crash", "--follow", "--interval", "0.1",
                             "--format", "json", "-c", "farmwatch.toml"], cwd=collected, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # started, the initial (empty) search printed
        store = SQLiteStore(collected / "fw.db")
        LogStore(store).write_logs([rec(1, "worker crash one"), rec(2, "all fine"), rec(3, "second crash")])
        store.close()
        seen = [json.loads(proc.stdout.readline())["message"] for _ in range(2)]
        assert seen == ["worker crash one", "second crash"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode in (0, -15)


@pytest.mark.slow
def test_collect_ships_to_elasticsearch_too_and_search_reads_it_back(collected: Path):
    """With an ``[elastic]`` section the same records also go to Elasticsearch (here the
    protocol-level server of ``farmwatch.sim.es_cluster`` on loopback), with the same ids, and
    ``logs search`` asks Elasticsearch instead of the embedded index."""
    from farmwatch.sim.es_cluster import ElasticSim

    with ElasticSim() as es:
        config = collected / "farmwatch.toml"
        config.write_text(config.read_text() + f'''
[elastic]
hosts = ["{es.url}"]
index_mode = "daily"
spool_dir = "spool"
''')
        (collected / "hlt01" / "hltwk02.log").write_text("2026-11-30 05:00:04.000Z [FATAL] worker pool exhausted\n")
        done = farmwatch("collect", "--once", "-c", "farmwatch.toml", cwd=collected)
        assert done.returncode == 0, done.stderr
        docs = es.documents("farmwatch-logs-*")
        embedded = {r.doc_id(): r for r in LogStore(SQLiteStore(collected / "fw.db", readonly=True)).search(limit=100)}
        assert len(docs) == 1 and set(docs) <= set(embedded)  # what was new in this run, the same id in both
        out = farmwatch("logs", "search", "worker", "--store", "elastic", "--format", "json", "--since", "3650d",
                        "-c", "farmwatch.toml", cwd=collected)
        assert out.returncode == 0, out.stderr
        found = [json.loads(line) for line in out.stdout.splitlines()]
        assert [(d["host.name"], d["log.level"], d["message"]) for d in found] == [
            ("hltwk02", "fatal", "worker pool exhausted")]


def test_the_logs_are_documented():
    text = (Path(__file__).resolve().parent.parent / "docs" / "logs.md").read_text(encoding="utf-8")
    assert "## Logs" in text and text.index("## Logs") < text.index("## Elasticsearch")
    assert os.path.exists(Path(__file__).resolve().parent.parent / "collectors" / "logfiles.toml")
