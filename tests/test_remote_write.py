"""Remote write against real receivers: Debian's VictoriaMetrics (single node) and Prometheus with
``--web.enable-remote-write-receiver``, installed and started by scripts/tsdb_testenv.py; the
protocol's faults (429 with Retry-After, 5xx, 400) from a loopback HTTP server."""

from __future__ import annotations

import http.server
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from farmwatch import analysis
from farmwatch.model import Batch, labels
from farmwatch.sim import SimUnit
from farmwatch.store import SQLiteStore
from farmwatch.store.remote import RemoteWriter, RemoteWriteSettings, wire
from farmwatch.store.remote.naming import Relabel, prometheus_labels
from farmwatch.store.remote.reader import PrometheusReader, selector

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import tsdb_testenv  # noqa: E402  (scripts/ is not a package)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module", params=["victoria", "prometheus"])
def tsdb(request, tmp_path_factory):
    env = tsdb_testenv
    try:
        env.install()
        server = getattr(env, request.param)(tmp_path_factory.mktemp(request.param)).start()
    except env.TestEnvError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{request.param} could not be started in CI: {exc}")
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def unit():
    with SimUnit("hlt01", worker_nodes=2, workers_per_node=2, input_rate=300.0, seed=5) as u:
        yield u


def farmwatch(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "farmwatch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def stored(db: Path) -> Counter:
    """Every sample and state of the store as the TSDB should hold it: (labels, ts ms, value)."""
    with SQLiteStore(db, readonly=True) as store:
        frame = store.query()
    out: Counter = Counter()
    for name, lbls, ts, value, state in zip(frame["name"], frame["labels"], frame["ts"], frame["value"], frame["state"]):
        key = prometheus_labels(name, tuple(sorted(lbls.items())), prefix="", external={"site": "test"}, rules=[],
                                state=state)
        out[(key, ts.value // 1_000_000, "nan" if state is None and math.isnan(value) else 1.0 if state else value)] += 1
    return out


def _keys(samples: Counter) -> Counter:
    """(labels, ts) → how often: each must be there exactly once."""
    out: Counter = Counter()
    for (labels_, ts, _), n in samples.items():
        out[(labels_, ts)] += n
    return out


def _values(samples: Counter) -> dict[tuple, list[float]]:
    out: dict[tuple, list[float]] = {}
    for (labels_, ts, value), n in samples.items():
        out.setdefault((labels_, ts), []).extend([value] * n)
    return {k: sorted(v) for k, v in out.items()}


def in_tsdb(server, since: float, until: float) -> Counter:
    """Every raw sample the TSDB holds in [since, until]."""
    span = int((until - since) * 1000) + 1
    result = server.query("query", query=f'{{__name__=~".+",site="test"}}[{span}ms]', time=f"{until:.3f}")["result"]
    out: Counter = Counter()
    for series in result:
        key = tuple(sorted(series["metric"].items()))
        for t, v in series["values"]:
            value = float(v)
            out[(key, round(float(t) * 1000), "nan" if math.isnan(value) else value)] += 1
    return out


def queued(db: Path) -> int:
    with SQLiteStore(db, readonly=True) as store, store.transaction("look") as conn:
        return conn.execute("SELECT count(*) FROM remote_queue").fetchone()[0]


def wait_for(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


OUTAGE_S = 30.0  # how long the receiver is away


@pytest.mark.real
@pytest.mark.slow
def test_every_sample_arrives_once_across_an_outage_and_a_kill_9(tsdb, unit, tmp_path) -> None:
    config = tmp_path / "farmwatch.toml"
    config.write_text('[store]\npath = "fw.db"\n\n' + unit.config_toml(source_name="hlt", interval="1s", timeout="300ms")
                      + f'\n[remote_write]\nurl = "{tsdb.write_url}"\nquery_url = "{tsdb.url}"\nbackoff = "200ms"\n'
                        'backoff_max = "1s"\nexternal_labels = { site = "test" }\n')
    db = tmp_path / "fw.db"
    started = time.time()
    collector = farmwatch("collect", "-c", str(config))
    wait_for(lambda: sum(in_tsdb(tsdb, started - 5, time.time() + 1).values()) > 100, 60)  # it sends
    outage = time.monotonic()
    tsdb.stop()  # the receiver goes away (cleanly: what it acknowledged it keeps) ...
    wait_for(lambda: queued(db) >= 10)  # ... cycles queue in the store
    time.sleep(max(0.0, OUTAGE_S / 2 - (time.monotonic() - outage)))
    collector.send_signal(signal.SIGKILL)  # farmwatch dies with a queue, in the middle of the outage
    collector.wait(30)
    assert queued(db) >= 10
    collector = farmwatch("collect", "-c", str(config))  # back while the receiver is still away: it queues on
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage)))
    assert collector.poll() is None
    tsdb.start()
    wait_for(lambda: queued(db) == 0, 60)  # the backlog is sent after the restart
    collector.send_signal(signal.SIGHUP)  # a reload: the next generation's writer takes over the queue
    time.sleep(3)
    collector.send_signal(signal.SIGTERM)  # a clean stop sends what is queued first
    _, err = collector.communicate(timeout=60)
    assert collector.returncode == 0, err
    assert "reloaded" in err, err
    assert queued(db) == 0, err
    until = time.time() + 1
    expected = stored(db)
    assert sum(expected.values()) > 500
    if tsdb.kind == "victoria":  # VictoriaMetrics keeps no NaN samples
        expected = Counter({k: n for k, n in expected.items() if k[2] != "nan"})
    deadline = time.monotonic() + 30
    while (got := in_tsdb(tsdb, started - 5, until)) != expected and time.monotonic() < deadline:
        if tsdb.kind == "victoria" and _keys(got) == _keys(expected):
            break  # VictoriaMetrics keeps floats as decimals of ~12 digits: values compared below
        time.sleep(0.5)
    missing, extra = _keys(expected) - _keys(got), _keys(got) - _keys(expected)
    # The right names, labels and times, each exactly once ...
    assert not missing and not extra, (f"{sum(missing.values())} missing, e.g. {list(missing)[:3]}; "
                                       f"{sum(extra.values())} extra, e.g. {list(extra)[:3]}")
    # ... and the right values.
    if tsdb.kind == "victoria":
        want, have = _values(expected), _values(got)
        assert all(np.allclose(want[k], have[k], rtol=1e-10, atol=0) for k in want)
    else:
        assert got == expected

    # Read back through the query API: the same frames as the embedded store.
    reader = PrometheusReader(tsdb.url)
    name = "hlt.input.received_events:rate"
    with SQLiteStore(db, readonly=True) as store:
        local = store.query(name, ["app=distributor"], since=started - 5, until=until)
        local_frame = analysis.frame(store, name, ["app=distributor"], since=started - 5, until=until, by="host",
                                     resolution="raw")
    remote = reader.query(name, ["app=distributor"], since=started - 5, until=until)
    remote["labels"] = [{k: v for k, v in lb.items() if k != "site"} for lb in remote["labels"]]
    pd.testing.assert_frame_equal(remote.drop(columns="site"), local)
    remote_frame = analysis.frame(analysis.open_prometheus(tsdb.url), name, ["app=distributor"], since=started - 5, until=until, by="host",
                                  resolution="raw")
    pd.testing.assert_frame_equal(remote_frame, local_frame)
    out = subprocess.run([sys.executable, "-m", "farmwatch", "query", "-c", str(config), name, "--store", "remote",
                          "--label", "app=distributor", "--since", "10m", "--format", "json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == len(local) and {r["name"] for r in rows} == {name}


class Receiver(http.server.BaseHTTPRequestHandler):
    """A receiver with faults: answers the statuses in ``plan`` in turn, then 204; keeps the bodies."""

    plan: list[tuple[int, dict[str, str]]] = []
    bodies: list[bytes] = []
    times: list[float] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.headers["Content-Encoding"] == "snappy"
        assert self.headers["Content-Type"] == "application/x-protobuf"
        assert self.headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
        Receiver.times.append(time.monotonic())
        status, headers = Receiver.plan.pop(0) if Receiver.plan else (204, {})
        if status < 300:
            Receiver.bodies.append(body)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"no")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.plan, Receiver.bodies, Receiver.times = [], [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/write"
    server.shutdown()
    server.server_close()


def cycles(n: int, first: int = 0) -> list[Batch]:
    return [Batch(1_704_067_200 + i, [("hlt.output.sent_events", labels(unit="hlt01")), ("zabbix.net.if.in",
                                      labels(host="hltwk07", item="net.if.in[eth0]"))], [float(i), 10.0 * i])
            for i in range(first, first + n)]


def test_429_and_5xx_are_retried_in_order_and_400_is_counted(tmp_path, receiver) -> None:
    Receiver.plan = [(429, {"Retry-After": "1"}), (503, {}), (204, {}), (400, {})]
    settings = RemoteWriteSettings(url=receiver, backoff="50ms", backoff_max="200ms", max_samples_per_request=4)
    with SQLiteStore(tmp_path / "fw.db") as store:
        writer = RemoteWriter(settings, store, "test")
        batches = cycles(6)
        store.write(batches, also=[writer.stage(batches)])  # 12 samples: 3 requests of 4
        writer.start()
        wait_for(lambda: writer.pending() == (0, 0))
        writer.close()
        stats = writer.stats()
    assert (stats["sent_samples"], stats["sent_requests"], stats["retries"]) == (8, 2, 2)
    assert (stats["rejected_samples"], stats["rejected_requests"]) == (4, 1)
    assert Receiver.times[1] - Receiver.times[0] >= 0.95  # Retry-After: 1
    sent = [s for body in Receiver.bodies for s in wire.decode(body)]
    assert [(lb["__name__"], t) for lb, samples in sent for t, _ in samples] == [
        (name, 1_704_067_200_000 + i * 1000) for i in (0, 1, 4, 5)  # the second request (2, 3): 400
        for name in ("hlt_output_sent_events", "zabbix_net_if_in")]


def test_a_full_queue_drops_counted_and_the_store_keeps_everything(tmp_path, receiver, caplog) -> None:
    settings = RemoteWriteSettings(url=receiver.replace("/api", "/nowhere-but-503"), queue_max_bytes=4096,
                                   max_samples_per_request=10)
    Receiver.plan = [(503, {})] * 1000
    with SQLiteStore(tmp_path / "fw.db") as store:
        writer = RemoteWriter(settings, store, "test")
        written = 0
        for i in range(40):
            batches = cycles(50, first=50 * i)
            written += store.write(batches, also=[writer.stage(batches)])
        stats = writer.stats()
        assert written == 4000 and len(store.query()) == 4000
        assert stats["queue_bytes"] <= 4096
        assert stats["dropped_samples"] + stats["queue_samples"] == 4000 and stats["dropped_samples"] > 0
    assert sum("the queue is full" in r.message for r in caplog.records) == 1  # once per episode


def test_naming_relabelling_and_the_library_agree() -> None:
    rules = [Relabel(action="drop", regex="farmwatch_.*"),
             Relabel(action="replace", source_labels=["zabbix_item"], regex=r"net\.if\.in\[(.*)\]", target_label="iface"),
             Relabel(action="labeldrop", regex="pid")]
    kw = {"prefix": "", "external": {"site": "kek"}, "rules": rules}
    assert prometheus_labels("zabbix.net.if.in", (("host", "hltwk07"), ("zabbix.item", "net.if.in[eth0]")), **kw) == (
        ("__name__", "zabbix_net_if_in"), ("host", "hltwk07"), ("iface", "eth0"), ("site", "kek"),
        ("zabbix_item", "net.if.in[eth0]"))
    assert prometheus_labels("hlt.output.sent_events:rate", (("pid", "12"), ("unit", "hlt01")), **kw) == (
        ("__name__", "hlt_output_sent_events:rate"), ("site", "kek"), ("unit", "hlt01"))
    assert prometheus_labels("farmwatch.dropped_samples", (), **kw) is None
    assert prometheus_labels("daq.run_state", (("node", "RC"),), prefix="fw_", external={}, rules=[], state="RUNNING") == (
        ("__name__", "fw_daq_run_state"), ("node", "RC"), ("state", "RUNNING"))
    labels_ = wire.encode_labels([("b", "c"), ("__name__", "a")])
    values = np.array([0.0, -0.0, math.inf, 1.5, math.nan])
    for ts in (1_704_067_200_000, 1, 0, -5):  # varints of every length, proto3's default 0 left out
        body = wire.snappy(wire.one_sample_each([wire.series_prefix(labels_, ts)] * len(values), values, ts))
        message = wire.WriteRequest()
        message.ParseFromString(wire.cramjam.snappy.decompress_raw(body).read())  # the library reads it
        assert [(list(map(tuple, ((lb.name, lb.value) for lb in series.labels))), [(x.timestamp, x.value) for x in series.samples])
                for series in message.timeseries][:4] == [([("__name__", "a"), ("b", "c")], [(ts, v)]) for v in values[:4]]
        assert math.isnan(message.timeseries[4].samples[0].value)
        assert wire.decode(body)[3] == ({"__name__": "a", "b": "c"}, [(ts, 1.5)])
    assert selector("hlt.output.*", ["unit*=hlt0[12]", "host!=", "app=~dist.*", "item=net.if.in[eth0]",
                                     "pv!*=B2_*?"]) == (
        '{__name__=~"hlt_output_.*",unit=~"hlt0[12]",host!="",app=~"dist.*",item="net.if.in[eth0]",pv!~"B2_.*."}')
    assert selector("hlt.out[!p]ut.x", prefix="fw.") == '{__name__=~"fw_hlt_out[^p]ut_x"}'
