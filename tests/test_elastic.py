"""The Elasticsearch store against real servers on loopback.

Three servers, each for what it can show (see ``specs/elasticsearch.md``: no real Elasticsearch
runs on these machines):

- ``farmwatch.sim.es_cluster.ElasticSim``, a protocol-level Elasticsearch written for these tests,
  for every fault: whole-request 429/503, per-item 429/503/400/409, short responses, outages
  (connection refused), a cluster of another major version, API keys;
- ``osmem-server`` (PyPI), an OpenSearch emulator nobody here wrote, as an interop check that the
  templates, bulk bodies and queries farmwatch sends are accepted and mean the same there;
- a real cluster when ``FARMWATCH_TEST_ES_URL`` is set (opt-in, skipped otherwise, also in CI).

Every fault test checks the invariant that matters: every record is stored exactly once.
Backoff sleeps run on a simulated clock, so retries cost no wall time.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from farmwatch.clock import SimClock
from farmwatch.model import Alert, AlertState, Batch, LogRecord, labels
from farmwatch.sim.es_cluster import Delay, ElasticSim, ItemErrors, Reject, Truncate
from farmwatch.store import StoreError
from farmwatch.store.elastic import (ElasticConfig, ElasticStore, SpoolFull, bulk_body, record_from_source,
                                     log_document)

T0 = 1_764_496_800.0  # 2025-11-30 10:00:00 UTC
MESSAGES = ["worker died: segmentation violation", "input stall on ring buffer", "event processed",
            "ZMQ connection to hltout01 lost", "histogram server restarted"]


def make_records(n: int, start: int = 0, path: str = "/var/log/hlt/worker.log") -> list[LogRecord]:
    """Records as the log-file source produces them: identified by file and offset."""
    out = []
    for i in range(start, start + n):
        out.append(LogRecord(
            ts=T0 + i * 0.5 + 0.123456, host=f"hltwk{i % 4 + 1:02d}", service="basf2" if i % 3 else "zmq-proxy",
            level=("ERROR", "INFO", "WARNING")[i % 3], message=f"{MESSAGES[i % len(MESSAGES)]} #{i}",
            fields={"log.file.path": path, "log.file.fingerprint": "dev1-ino42-abcd", "log.offset": i * 120,
                    "process.pid": 4000 + i % 7, "log.logger": "framework", "event.original": f"[ERROR] raw line {i}"}))
    return out


def ids(records: list[LogRecord]) -> list[str]:
    return [r.doc_id() for r in records]


@pytest.fixture
def sim():
    with ElasticSim() as server:
        yield server


@pytest.fixture
def clock() -> SimClock:
    return SimClock(T0)


@pytest.fixture
def make_store(tmp_path: Path, clock: SimClock):
    stores: list[ElasticStore] = []

    def make(url: str, **overrides: object) -> ElasticStore:
        settings = {"hosts": [url], "spool_dir": tmp_path / "spool", "dead_letter": tmp_path / "dead.ndjson",
                    "timeout": "2s", "retry_interval": "10s", **overrides}
        store = ElasticStore(ElasticConfig.model_validate(settings), clock=clock)
        stores.append(store)
        return store

    yield make
    for s in stores:
        s.close()


def stored_once(sim: ElasticSim, records: list[LogRecord], pattern: str = "farmwatch-logs*") -> None:
    """Every record is in the index, exactly once, and nothing else is."""
    assert sorted(sim.arrivals) == sorted(ids(records)), "some record is missing or was stored twice"
    assert sorted(sim.documents(pattern)) == sorted(ids(records))


# --- documents, templates, idempotency -------------------------------------------------------


def test_documents_are_ecs_and_templates_are_installed(sim: ElasticSim, make_store) -> None:
    store = make_store(sim.url)
    records = make_records(6)
    store.write_logs(records)

    stored_once(sim, records)
    assert not store.config.spool_dir.exists()  # made only when needed (a search needs no write access)
    doc = sim.documents()[records[1].doc_id()]
    assert doc == {
        "@timestamp": "2025-11-30T10:00:00.623456Z", "message": "input stall on ring buffer #1",
        "host.name": "hltwk02", "service.name": "basf2", "log.level": "INFO", "ecs.version": "8.11.0",
        "log.file.path": "/var/log/hlt/worker.log", "log.file.fingerprint": "dev1-ino42-abcd", "log.offset": 120,
        "process.pid": 4001, "log.logger": "framework", "event.original": "[ERROR] raw line 1"}
    assert record_from_source(doc) == records[1]
    nested = {"@timestamp": doc["@timestamp"], "message": doc["message"], "host": {"name": "hltwk02"},
              "service": {"name": "basf2"}, "log": {"level": "INFO", "logger": "framework", "offset": 120,
              "file": {"path": "/var/log/hlt/worker.log", "fingerprint": "dev1-ino42-abcd"}},
              "process": {"pid": 4001}, "event": {"original": "[ERROR] raw line 1"}}
    assert record_from_source(nested) == records[1]  # as Filebeat would have written it

    template = sim.index_templates["farmwatch-logs"]
    assert template["data_stream"] == {} and template["priority"] > 100  # above the built-in logs-*-*
    assert template["composed_of"] == ["farmwatch-base", "farmwatch-logs-mappings"]
    mappings = sim.component_templates["farmwatch-logs-mappings"]["template"]["mappings"]["properties"]
    assert mappings["event"]["properties"]["original"] == {"type": "keyword", "index": False, "doc_values": False}
    assert sim.data_streams == {"farmwatch-logs": sim.data_streams["farmwatch-logs"]}
    assert sim.bulk_bodies == [bulk_body(records)]  # the benchmark's function is the real code path


def test_daily_indices_are_named_by_the_records_utc_day(sim: ElasticSim, make_store) -> None:
    store = make_store(sim.url, index_mode="daily")
    late = LogRecord(T0 + 14 * 3600 + 0.5, "hltwk01", "basf2", "INFO", "after midnight UTC", {"log.offset": 1})
    store.write_logs([*make_records(2), late])
    assert set(sim.indices) == {"farmwatch-logs-2025.11.30", "farmwatch-logs-2025.12.01"}
    assert "data_stream" not in sim.index_templates["farmwatch-logs"]


def test_sending_the_same_records_again_stores_nothing_twice(sim: ElasticSim, make_store) -> None:
    store = make_store(sim.url)
    records = make_records(20)
    store.write_logs(records[:12])
    store.write_logs(records)  # e.g. a restart before the file offsets were saved
    stored_once(sim, records)
    assert store.stats()["duplicates"] == 12 and store.stats()["indexed"] == 20


def test_odd_field_values_are_shipped_not_fatal(sim: ElasticSim, make_store, caplog) -> None:
    # documents something else wrote into an index farmwatch searches, before farmwatch's templates
    sim.write("create", "farmwatch-logs-imported", "foreign", {"@timestamp": "2025-11-30T10:00:00Z", "note": "not ours"})
    sim.write("create", "farmwatch-logs-imported", "no-time", {"message": "no timestamp"})
    store = make_store(sim.url)
    odd = LogRecord(T0, "hltwk01", "basf2", "INFO", "odd values",
                    {"log.offset": 1, "labels.counter": 2**70, "basf2.stats": {1: "int key"}, "event.ingested": T0})
    store.write_logs([odd, *make_records(2)])
    doc = sim.documents()[odd.doc_id()]
    assert doc["labels.counter"] == str(2**70) and doc["basf2.stats"] == {"1": "int key"}

    with caplog.at_level(logging.WARNING, logger="farmwatch.store.elastic"):
        found = store.search("")
    # the foreign document has a time: it comes back as a record without host; the other is skipped
    assert sorted(r.message for r in found) == ["", "input stall on ring buffer #1", "odd values",
                                                "worker died: segmentation violation #0"]
    assert "1 of 5 search hits" in caplog.text


def test_bulk_requests_respect_doc_and_byte_limits(sim: ElasticSim, make_store) -> None:
    store = make_store(sim.url, bulk_docs=7, bulk_bytes=2048)
    records = make_records(40)
    store.write_logs(records)
    stored_once(sim, records)
    assert all(len(b) <= 2048 and b.count(b"\n") <= 14 for b in sim.bulk_bodies)
    assert b"".join(sim.bulk_bodies) == bulk_body(records)  # chunks in order, nothing reordered


# --- faults ----------------------------------------------------------------------------------


def test_whole_request_429_and_503_are_retried_with_backoff(sim: ElasticSim, make_store, clock: SimClock) -> None:
    store = make_store(sim.url)
    sim.faults.extend([Reject(429, retry_after=3), Reject(503)])
    records = make_records(10)
    started = clock.monotonic()
    store.write_logs(records)
    stored_once(sim, records)
    stats = store.stats()
    assert stats["retried_requests"] == 2 and stats["bulk_requests"] == 3 and stats["spool_docs"] == 0
    assert clock.monotonic() - started >= 3  # Retry-After honoured (on the farmwatch clock)


def test_a_request_that_times_out_after_the_cluster_stored_it_is_not_stored_twice(sim: ElasticSim, make_store) -> None:
    store = make_store(sim.url, timeout="200ms")
    sim.faults.append(Delay(0.6))  # the client gives up at 0.2 s; the cluster stores the documents anyway
    records = make_records(5)
    store.write_logs(records)
    stats = store.stats()
    assert stats["retried_requests"] == 1 and stats["spool_docs"] == 0
    for _ in range(50):  # wait for the slow request to finish on the server side
        if len(sim.bulk_bodies) == 2 and sim.bulk_items == 10:
            break
        time.sleep(0.05)
    stored_once(sim, records)  # whichever of the two requests came first, the other got 409s


def test_a_request_too_large_is_halved_and_nothing_is_lost_when_a_half_fails(sim: ElasticSim, make_store,
                                                                             clock: SimClock) -> None:
    store = make_store(sim.url, retries=1)
    sim.faults.extend([Reject(413), Reject(503), Reject(503)])  # the first half then fails for good
    records = make_records(10)
    store.write_logs(records)
    assert [b.count(b"\n") // 2 for b in sim.bulk_bodies] == [10, 5, 5]
    assert store.stats()["spool_docs"] == 10 and sim.arrivals == []  # both halves kept, in order
    clock.advance(10)
    store.flush()
    stored_once(sim, records)
    assert sim.arrivals == ids(records)


def test_per_item_429_and_503_resend_only_the_failed_documents(sim: ElasticSim, make_store) -> None:
    store = make_store(sim.url)
    sim.faults.extend([ItemErrors({1: 429, 4: 503, 8: 429}), ItemErrors({0: 429})])
    records = make_records(10)
    store.write_logs(records)
    stored_once(sim, records)
    # 10 documents, then the 3 that failed, then the 1 that failed again
    assert [b.count(b"\n") // 2 for b in sim.bulk_bodies] == [10, 3, 1]
    assert store.stats()["retried"] == 4


def test_409_from_a_document_already_stored_counts_as_delivered(sim: ElasticSim, make_store) -> None:
    store = make_store(sim.url)
    records = make_records(5)
    store.write_logs(records[2:3])
    store.write_logs(records)  # the cluster answers 409 for record 2: it is there
    stored_once(sim, records)
    assert store.stats()["duplicates"] == 1 and not store.config.dead_letter.exists()


def test_mapping_conflicts_go_to_the_dead_letter_file(sim: ElasticSim, make_store, caplog) -> None:
    store = make_store(sim.url)
    records = make_records(4)
    bad = LogRecord(T0, "hltwk01", "basf2", "ERROR", "pid is not a number", {"process.pid": "worker-3", "log.offset": 9})
    injected = make_records(1, start=50)
    sim.faults.append(ItemErrors({5: 400}))  # a second, injected 400 for the last document
    with caplog.at_level(logging.ERROR, logger="farmwatch.store.elastic"):
        store.write_logs([*records, bad, *injected])

    stored_once(sim, records)
    letters = [orjson.loads(line) for line in store.config.dead_letter.read_bytes().splitlines()]
    assert [d["id"] for d in letters] == [bad.doc_id(), injected[0].doc_id()]
    assert letters[0]["status"] == 400 and "process.pid" in letters[0]["error"]["reason"]
    assert letters[0]["document"] == orjson.loads(orjson.dumps(log_document(bad)))  # enough to re-send by hand
    assert store.stats()["dead_lettered"] == 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "2 documents rejected" in lines[0] and str(store.config.dead_letter) in lines[0]


def test_a_short_bulk_response_resends_the_missing_documents(sim: ElasticSim, make_store, caplog) -> None:
    store = make_store(sim.url)
    sim.faults.append(Truncate(keep=4))  # all 10 stored, 6 not reported: the helpers would lose track of them
    records = make_records(10)
    with caplog.at_level(logging.WARNING, logger="farmwatch.store.elastic"):
        store.write_logs(records)
    stored_once(sim, records)
    stats = store.stats()
    assert stats["items_missing"] == 6 and stats["duplicates"] == 6 and stats["indexed"] == 4
    assert any("4 items for 10 documents" in r.getMessage() for r in caplog.records)


def test_outage_spools_then_replays_in_order_before_new_records(sim: ElasticSim, make_store, clock: SimClock,
                                                                caplog) -> None:
    store = make_store(sim.url)
    a, b, c, d = (make_records(5, start=k * 5) for k in range(4))
    store.write_logs(a)
    sim.stop()  # connection refused from now on
    with caplog.at_level(logging.INFO, logger="farmwatch.store.elastic"):
        store.write_logs(b)  # retried, then spooled: write_logs returns, the records are safe on disk
        store.write_logs(c)  # spool not empty: goes straight behind b, no waiting
        assert store.stats()["spool_docs"] == 10 and not store.stats()["online"]
        sim.start()
        store.write_logs(d[:1])  # the replay is not due yet: spooled behind c
        assert len(sim.arrivals) == 5
        clock.advance(10)
        store.write_logs(d[1:])
    stored_once(sim, a + b + c + d)
    assert sim.arrivals == ids(a + b + c + d)  # in order: the spool first, then the new records
    stats = store.stats()
    assert stats["spool_docs"] == 0 and stats["spool_bytes"] == 0 and stats["replayed"] == 11 and stats["online"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m and "spooling" in m for m in messages) == 1  # one line per outage
    assert any("reachable again" in m for m in messages)


def test_a_large_spool_is_replayed_in_steps_that_keep_each_call_short(sim: ElasticSim, tmp_path: Path) -> None:
    from farmwatch.clock import RealClock

    config = ElasticConfig(hosts=[sim.url], spool_dir=tmp_path / "spool", dead_letter=tmp_path / "dead.ndjson",
                           spool_segment_bytes=2048, replay_budget="1ms", retry_interval="1ms", retries=0)
    store = ElasticStore(config, clock=RealClock())  # the budget is wall time, so a real clock here
    sim.stop()
    records = make_records(30)
    for k in range(0, 30, 3):
        store.write_logs(records[k:k + 3])
    segments = store.stats()["spool_segments"]
    assert segments >= 3
    sim.start()
    time.sleep(0.01)
    store.flush()  # one segment, then the budget is spent
    assert store.stats()["spool_segments"] == segments - 1
    while store.stats()["spool_docs"]:
        store.flush()
    stored_once(sim, records)
    assert sim.arrivals == ids(records)
    store.close()


def test_the_spool_survives_a_restart(sim: ElasticSim, make_store, tmp_path: Path) -> None:
    records = make_records(8)
    sim.stop()
    first = make_store(sim.url)
    first.write_logs(records[:5])
    first.write_logs(records[5:])
    first.close()
    assert len(list((tmp_path / "spool").glob("*.ndjson"))) == 1

    sim.start()
    second = make_store(sim.url)  # a new process: the spool is found on disk and sent first
    assert second.stats()["spool_docs"] == 8
    second.flush()
    stored_once(sim, records)
    assert sim.arrivals == ids(records) and not list((tmp_path / "spool").glob("*"))


def test_a_torn_spool_write_is_cut_and_the_rest_replayed(sim: ElasticSim, make_store, tmp_path: Path) -> None:
    records = make_records(6)
    sim.stop()
    first = make_store(sim.url)
    first.write_logs(records)
    first.close()
    segment = next((tmp_path / "spool").glob("*.ndjson"))
    with open(segment, "ab") as f:
        f.write(b'{"create":{"_index":"farmwatch-logs","_id":"torn"}}\n{"@timestamp":"2025-')  # crash mid-write

    sim.start()
    second = make_store(sim.url)
    assert second.stats()["spool_torn"] == 1 and second.stats()["spool_docs"] == 6
    more = make_records(2, start=6)
    second.write_logs(more)
    stored_once(sim, records + more)


def test_a_full_spool_refuses_whole_batches_counted_and_logged_once(sim: ElasticSim, make_store, clock: SimClock,
                                                                    caplog) -> None:
    store = make_store(sim.url, spool_max_bytes=8192, spool_segment_bytes=2048)
    sim.stop()
    accepted: list[LogRecord] = []
    refused = 0
    with caplog.at_level(logging.WARNING, logger="farmwatch.store.elastic"):
        for k in range(12):
            batch = make_records(3, start=k * 3)
            try:
                store.write_logs(batch)
                accepted += batch
            except SpoolFull as exc:
                assert isinstance(exc, StoreError) and exc.not_accepted == 3
                refused += 3
        assert refused >= 6 and store.stats()["dropped"] == refused
        assert store.stats()["spool_bytes"] <= 8192 and store.stats()["spool_segments"] > 1
        full_lines = [r for r in caplog.records if "is full" in r.getMessage()]
        assert len(full_lines) == 1 and full_lines[0].levelno == logging.ERROR

        sim.start()
        clock.advance(10)
        again = make_records(2, start=100)
        store.write_logs(again)  # the spool drains, then the new records go straight through
    stored_once(sim, accepted + again)
    assert sim.arrivals == ids(accepted + again)


def test_a_cluster_of_another_major_version_is_reported_and_compatible_with_fixes_it(make_store, caplog, tmp_path) -> None:
    with ElasticSim(version="8.15.3") as es8:
        records = make_records(3)
        with caplog.at_level(logging.WARNING, logger="farmwatch.store.elastic"):
            wrong = make_store(es8.url, retries=0)
            wrong.write_logs(records)  # refused: spooled, nothing lost, one clear line
        assert wrong.stats()["spool_docs"] == 3
        assert any("compatible_with" in r.getMessage() for r in caplog.records)
        wrong.close()

        right = make_store(es8.url, compatible_with=8, spool_dir=tmp_path / "spool8")
        right.write_logs(records)
        stored_once(es8, records)


def test_api_key_comes_from_the_environment_and_never_reaches_the_logs(monkeypatch, make_store, caplog, tmp_path) -> None:
    secret = "Zmlyc3QtaWQ6c2VjcmV0LXBhcnQ="
    with ElasticSim(api_key=secret) as es:
        monkeypatch.delenv("FW_TEST_ES_KEY", raising=False)
        with pytest.raises(StoreError, match="FW_TEST_ES_KEY is not set"):
            make_store(es.url, api_key_env="FW_TEST_ES_KEY")
        monkeypatch.setenv("FW_TEST_ES_KEY", secret)
        with caplog.at_level(logging.DEBUG):
            store = make_store(es.url, api_key_env="FW_TEST_ES_KEY")
            store.write_logs(make_records(3))
            store.search("worker")
        assert len(es.arrivals) == 3
        assert secret not in caplog.text and "c2VjcmV0" not in caplog.text

        monkeypatch.setenv("FW_TEST_ES_KEY", "wrong")
        with caplog.at_level(logging.WARNING, logger="farmwatch.store.elastic"):
            denied = make_store(es.url, api_key_env="FW_TEST_ES_KEY", spool_dir=tmp_path / "spool-denied")
            denied.write_logs(make_records(1, start=9))  # 401: kept in the spool until the key is fixed
        assert denied.stats()["spool_docs"] == 1 and "401" in caplog.text and "wrong" not in caplog.text


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command line tool."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is needed to make the TLS test certificate")
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return str(cert), str(key)


def test_tls_with_the_ca_file_from_the_config(certificate, make_store, tmp_path: Path) -> None:
    with ElasticSim(tls=certificate) as es:
        assert es.url.startswith("https://")
        untrusted = make_store(es.url, retries=0, spool_dir=tmp_path / "untrusted")
        untrusted.write_logs(make_records(2))  # certificate not verifiable: nothing sent, kept in the spool
        assert untrusted.stats()["spool_docs"] == 2 and "unreachable" in untrusted.stats()["last_error"]
        assert es.arrivals == []

        trusted = make_store(es.url, ca_file=certificate[0])
        records = make_records(3)
        trusted.write_logs(records)
        stored_once(es, records)


def test_config_rejects_secrets_in_urls_and_incomplete_auth() -> None:
    ElasticConfig(hosts=["https://es01.example.org:9200"], api_key_file=Path("/etc/farmwatch/es.key"))
    bad = [
        {"hosts": ["https://elastic:changeme@es01:9200"]},
        {"hosts": ["es01:9200"]},
        {"username": "farmwatch"},
        {"password_env": "ES_PASSWORD"},
        {"api_key_env": "A", "api_key_file": "/k"},
        {"username": "u", "password_env": "P", "api_key_env": "A"},
        {"index_prefix": "FarmWatch"},
        {"index_mode": "hourly"},
        {"api_key": "inline-secret"},
    ]
    for settings in bad:
        with pytest.raises(ValidationError):
            ElasticConfig.model_validate(settings)


def test_the_documented_example_config_is_valid() -> None:
    import re
    import tomllib

    logs = (Path(__file__).resolve().parent.parent / "docs" / "logs.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```toml\n(.*?)```", logs, re.S) if b.lstrip().startswith("[elastic]")]
    config = ElasticConfig.model_validate(tomllib.loads(block)["elastic"])
    assert config.resolved(Path("/etc/farmwatch")).spool_dir == Path("/etc/farmwatch/elastic-spool")


# --- search ----------------------------------------------------------------------------------


def test_search_filters_globs_and_returns_newest_first(sim: ElasticSim, make_store) -> None:
    store = make_store(sim.url)
    records = make_records(30)
    store.write_logs(records)

    found = store.search("worker died")
    expected = [r for r in records if "worker died" in r.message]
    assert found == sorted(expected, key=lambda r: r.ts, reverse=True)

    def want(pred) -> list[LogRecord]:
        return sorted((r for r in records if pred(r)), key=lambda r: r.ts, reverse=True)

    assert store.search("", host="hltwk0[12]") == want(lambda r: r.host in ("hltwk01", "hltwk02"))
    assert store.search("*", service="zmq-*", level="error") == want(lambda r: r.service == "zmq-proxy" and r.level == "ERROR")
    assert store.search("*", service="zmq-*", level="err,WARN") == \
        want(lambda r: r.service == "zmq-proxy" and r.level in ("ERROR", "WARNING"))
    assert store.search('"ring buffer"', since=T0 + 5, until=T0 + 12) == \
        want(lambda r: "ring buffer" in r.message and T0 + 5 <= r.ts <= T0 + 12)
    assert store.search("stall -ring") == []
    assert store.search("segment*") == want(lambda r: "segmentation" in r.message)
    assert store.search("connection", limit=2) == want(lambda r: "connection" in r.message)[:2]
    assert store.search("", host="hltwk09") == []


def test_follow_yields_new_records_oldest_first(sim: ElasticSim, make_store) -> None:
    store = make_store(sim.url)
    records = make_records(6)
    store.write_logs(records[:3])
    tail = store.follow("", since=T0, poll=1.0)
    assert [next(tail) for _ in range(3)] == records[:3]
    store.write_logs(records[3:])
    assert [next(tail) for _ in range(3)] == records[3:]
    tail.close()


def test_search_reports_an_unreachable_cluster_in_one_line(sim: ElasticSim, make_store) -> None:
    store = make_store(sim.url)
    sim.stop()
    with pytest.raises(StoreError, match=r"^elastic: search: cluster http://127\.0\.0\.1:\d+ unreachable"):
        store.search("worker")


# --- samples and alerts ----------------------------------------------------------------------


def test_samples_and_alerts_are_shipped_when_configured(sim: ElasticSim, make_store) -> None:
    store = make_store(sim.url, ship=["logs", "samples", "alerts"])
    batch = Batch(T0)
    batch.add(("hlt.output.ready_queue_size", labels(unit="hlt01", app="collector")), 17.0)
    batch.add(("socket_state", labels(unit="hlt01")), "connected")
    store.write_samples([batch])
    store.write_samples([batch])  # a re-send stores nothing twice
    alert = Alert("WorkersDied", labels(unit="hlt01"), AlertState.FIRING, "critical", "3 workers died",
                  starts_at=T0, active_since=T0 - 30, value=3.0)
    store.write_alerts([alert])
    samples = sim.documents("farmwatch-samples*")
    assert sorted(samples.values(), key=lambda d: d["farmwatch"]["series"]) == [
        {"@timestamp": "2025-11-30T10:00:00.000000Z", "labels": {"app": "collector", "unit": "hlt01"},
         "farmwatch": {"series": "hlt.output.ready_queue_size", "value": 17.0}},
        {"@timestamp": "2025-11-30T10:00:00.000000Z", "labels": {"unit": "hlt01"},
         "farmwatch": {"series": "socket_state", "state": "connected"}},
    ]
    (doc,) = sim.documents("farmwatch-alerts*").values()
    assert doc["rule"]["name"] == "WorkersDied" and doc["labels"] == {"unit": "hlt01"} and doc["event"]["action"] == "firing"

    logs_only = make_store(sim.url, spool_dir=store.config.spool_dir / "other")
    logs_only.write_samples([Batch(T0 + 1, [("x", ())], [1.0])])
    assert len(sim.documents("farmwatch-samples*")) == 2


# --- interop: osmem-server (an OpenSearch emulator from PyPI) --------------------------------


@pytest.fixture(scope="module")
def osmem():
    """osmem-server on a free loopback port, started by the test. It answers with
    ``X-Elastic-Product: Elasticsearch`` (so the client's product check passes) but refuses the
    client's ``compatible-with=9`` media types with 406, as OpenSearch does: the store is run with
    ``compatible_with = "none"`` (plain ``application/json``, which real 8.x/9.x clusters accept too)."""
    try:
        from osmem_server import OsmemServer

        server = OsmemServer.start(japanese=False, addr="127.0.0.1:0")
    except Exception as exc:  # noqa: BLE001 - any failure to start is reported the same way
        if os.environ.get("CI") == "true":
            pytest.fail(f"osmem-server could not be started: {exc}")
        pytest.skip(f"osmem-server could not be started: {exc} (pip install -e '.[test]')")
    yield server
    server.close()
    if server.process.stdout is not None:
        server.process.stdout.close()


@pytest.mark.real
def test_interop_with_osmem_templates_bulk_and_search(osmem, make_store) -> None:
    import requests

    prefix = f"fw{uuid.uuid4().hex[:8]}"
    store = make_store(osmem.url, compatible_with="none", index_mode="daily", index_prefix=prefix)
    records = make_records(12)
    bad = LogRecord(T0, "hltwk01", "basf2", "ERROR", "pid is not a number", {"process.pid": "worker-3", "log.offset": 9})
    store.write_logs([*records, bad])
    store.write_logs(records[:4])  # re-sent: osmem answers 409, nothing stored twice
    store.refresh()

    stats = store.stats()
    assert stats["indexed"] == 12 and stats["duplicates"] == 4 and stats["dead_lettered"] == 1
    (letter,) = [orjson.loads(line) for line in store.config.dead_letter.read_bytes().splitlines()]
    assert letter["status"] == 400 and "process.pid" in letter["error"]["reason"]

    template = requests.get(f"{osmem.url}/_index_template/{prefix}-logs", timeout=5).json()
    assert template["index_templates"][0]["index_template"]["composed_of"] == [f"{prefix}-base", f"{prefix}-logs-mappings"]
    mapping = requests.get(f"{osmem.url}/{prefix}-logs-2025.11.30/_mapping", timeout=5).json()
    props = mapping[f"{prefix}-logs-2025.11.30"]["mappings"]["properties"]
    assert props["message"]["type"] == "text" and props["host"]["properties"]["name"]["type"] == "keyword"
    assert props["log"]["properties"]["offset"]["type"] == "long"

    def want(pred) -> list[LogRecord]:
        return sorted((r for r in records if pred(r)), key=lambda r: r.ts, reverse=True)

    assert store.search("worker died") == want(lambda r: "worker died" in r.message)
    assert store.search("segment* -hltout01") == want(lambda r: "segmentation" in r.message)
    assert store.search("", host="hltwk0[12]", level="error") == \
        want(lambda r: r.host in ("hltwk01", "hltwk02") and r.level == "ERROR")
    assert store.search('"ring buffer"', service="bas*", since=T0 + 1, until=T0 + 5) == \
        want(lambda r: "ring buffer" in r.message and r.service == "basf2" and T0 + 1 <= r.ts <= T0 + 5)


# --- a real cluster, when one is given -------------------------------------------------------


@pytest.mark.skipif(not os.environ.get("FARMWATCH_TEST_ES_URL"),
                    reason="opt-in: set FARMWATCH_TEST_ES_URL (and FARMWATCH_TEST_ES_API_KEY_ENV / _CA_FILE) to run against a real cluster")
def test_real_cluster(make_store) -> None:
    """Data stream mode on a real Elasticsearch of the client's major version; cleans up after itself."""
    prefix = f"farmwatch-test-{uuid.uuid4().hex[:8]}"
    settings: dict[str, object] = {"index_prefix": prefix, "compatible_with": int(os.environ.get("FARMWATCH_TEST_ES_MAJOR", "9"))}
    if os.environ.get("FARMWATCH_TEST_ES_API_KEY_ENV"):
        settings["api_key_env"] = os.environ["FARMWATCH_TEST_ES_API_KEY_ENV"]
    if os.environ.get("FARMWATCH_TEST_ES_CA_FILE"):
        settings["ca_file"] = Path(os.environ["FARMWATCH_TEST_ES_CA_FILE"])
    store = make_store(os.environ["FARMWATCH_TEST_ES_URL"], **settings)
    records = make_records(20)
    try:
        store.write_logs(records)
        store.write_logs(records[:5])
        store.refresh()
        assert store.stats()["indexed"] == 20 and store.stats()["duplicates"] == 5
        assert store.search("", limit=100) == sorted(records, key=lambda r: r.ts, reverse=True)
        assert store.search("worker died", host="hltwk0[12]") == sorted(
            (r for r in records if "worker died" in r.message and r.host in ("hltwk01", "hltwk02")),
            key=lambda r: r.ts, reverse=True)
    finally:
        es = store.client
        es.options(ignore_status=404).indices.delete_data_stream(name=f"{prefix}-*")
        for kind in ("logs", "samples", "alerts"):
            es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-{kind}")
        for name in (f"{prefix}-base", f"{prefix}-logs-mappings"):
            es.options(ignore_status=404).cluster.delete_component_template(name=name)
