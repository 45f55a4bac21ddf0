"""SimUnit and SimFarm over real sockets: traffic with a SimClock, every fault, every reply mode,
and ``python -m farmwatch.sim`` as a process."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import tomllib

import pytest

from farmwatch.clock import SimClock
from farmwatch.sim import SimFarm, SimUnit
from sim_helpers import Client, flat, request

pytestmark = pytest.mark.timeout(30)

NODES, PER_NODE, RATE = 2, 4, 200.0


@pytest.fixture
def clock():
    return SimClock(1_700_000_000.0)


@pytest.fixture
def unit(clock):
    with SimUnit("hlt01", worker_nodes=NODES, workers_per_node=PER_NODE, input_rate=RATE,
                 clock=clock, seed=1) as u:
        yield u


def address(unit, app, node=None):
    return next(e["address"] for e in unit.endpoints if e["app"] == app and e.get("node") == node)


def get(unit, app, node=None) -> dict:
    return flat(address(unit, app, node))


def per_peer(values: dict, name: str) -> dict[str, int]:
    return {k[len(name) + 1:-1]: v for k, v in values.items() if k.startswith(name + "[") and k.endswith("]")}


def test_topology_endpoints_and_config(unit):
    eps = unit.endpoints
    assert [e["app"] for e in eps] == ["distributor", "collector", "finalcollector", "finalhistoserver",
                                       "proxyhistoserver", "proxyhistoserver"]
    assert unit.nodes == ["hltwk01", "hltwk02"] and [e.get("node") for e in eps[4:]] == unit.nodes
    assert all(re.fullmatch(r"tcp://127\.0\.0\.1:\d+", e["address"]) and e["unit"] == "hlt01" for e in eps)
    workers = unit.workers("hltwk01")
    assert len(workers) == PER_NODE and all(re.fullmatch(r"hltwk01_\d+", w) for w in workers)
    assert SimUnit("hlt01", worker_nodes=NODES, workers_per_node=PER_NODE, seed=1).workers("hltwk01") == workers
    cfg = tomllib.loads(unit.config_toml(source_name="hlt", interval="2s", timeout="300ms"))["sources"]["hlt"]
    assert cfg == {"kind": "hlt_zmq", "interval": "2s", "timeout": "300ms", "endpoints": eps}


def test_counters_move_with_the_clock(unit, clock):
    start = get(unit, "distributor")
    assert start["input.received_events"] == 0 and start["output.ready_queue_size"] == NODES * PER_NODE * 20
    clock.advance(10)
    dist, col, fc = get(unit, "distributor"), get(unit, "collector"), get(unit, "finalcollector")
    assert dist["input.received_events"] == dist["output.sent_events"] == 10 * RATE
    assert 80_000 < dist["input.data_size"] < 120_000  # the mean of the last 100 raw events
    sent = per_peer(dist, "output.sent_events")
    assert set(sent) == {w for n in unit.nodes for w in unit.workers(n)}
    assert sum(sent.values()) == dist["output.sent_events"] and min(sent.values()) > 0
    assert 0.3 * 10 * RATE < col["input.received_events"] < 0.5 * 10 * RATE
    assert sum(per_peer(col, "input.received_events").values()) == col["input.received_events"]
    assert col["output.sent_events"] == fc["input.received_events"] == fc["output.sent_events"] == col["input.received_events"]
    assert dist["monitor.output_state"] == col["monitor.output_state"] == fc["monitor.output_state"] == "ready"
    assert dist["monitor.monitoring_counter"] == 1  # one reply before this one
    clock.advance(5)
    assert get(unit, "distributor")["input.received_events"] == 15 * RATE

    clock.advance(70)  # DQM: hello on the first event, histograms every 30 s, merges every 30 s
    proxy = get(unit, "proxyhistoserver", "hltwk01")
    assert proxy["input.registered_workers"] == PER_NODE and proxy["input.received_events"] >= PER_NODE
    assert proxy["output.histogram_merges"] >= 1 and proxy["output.size_before_compression"] > 0
    final = get(unit, "finalhistoserver")
    assert final["input.registered_workers"] == NODES and final["output.histogram_merges"] >= 1
    assert final["output.last_written_file_name"] == "/dqm/hltdqm_e0030r00001.root"
    assert final["monitor.timeouts"] >= 2


def test_kill_workers(unit, clock):
    clock.advance(5)
    node = unit.nodes[0]
    killed = unit.kill_workers(node, 2)
    assert killed == unit.workers(node)[:2]
    col = get(unit, "collector")
    assert (col["input.registered_workers"], col["input.dead_workers"]) == (NODES * PER_NODE - 2, 2)
    parent_key = next(k for k in col if k.startswith("input.dead_worker_messaged_from["))
    assert col[parent_key] == 2 and node in parent_key
    assert get(unit, "proxyhistoserver", node)["input.dead_workers"] == 2
    clock.advance(5)
    dist = get(unit, "distributor")
    assert dist["output.registered_workers"] == NODES * PER_NODE  # the distributor keeps them
    assert all(dist[f"output.ready_messages[{w}]"] == 0 for w in killed)  # credits spent on lost events
    frozen = [dist[f"output.sent_events[{w}]"] for w in killed]
    clock.advance(5)
    dist = get(unit, "distributor")
    assert [dist[f"output.sent_events[{w}]"] for w in killed] == frozen
    assert dist["output.sent_events"] == 15 * RATE


def test_back_pressure_drains_the_chain(unit, clock):
    clock.advance(3)
    unit.back_pressure(True)
    clock.advance(10)
    dist, col, fc = get(unit, "distributor"), get(unit, "collector"), get(unit, "finalcollector")
    assert (dist["output.ready_queue_size"], dist["monitor.output_state"]) == (0, "not_ready")
    assert (col["output.ready_queue_size"], col["monitor.output_state"]) == (0, "not_ready")
    assert fc["monitor.output_state"] == "not_ready" and fc["output.socket_state"] == "connected"
    clock.advance(5)
    assert get(unit, "distributor")["input.received_events"] == dist["input.received_events"]
    assert get(unit, "finalcollector")["output.sent_events"] == fc["output.sent_events"]
    unit.back_pressure(False)
    clock.advance(5)
    after = get(unit, "distributor")
    assert after["input.received_events"] > dist["input.received_events"] and after["monitor.output_state"] == "ready"
    assert get(unit, "finalcollector")["output.sent_events"] > fc["output.sent_events"]


def test_stalled_input(unit, clock):
    clock.advance(2)
    unit.stall_input(True)
    clock.advance(1)
    stalled = get(unit, "distributor")["input.received_events"]
    clock.advance(5)
    dist = get(unit, "distributor")
    assert dist["input.received_events"] == stalled and dist["input.socket_state"] == "connected"
    assert dist["output.ready_queue_size"] == NODES * PER_NODE * 20  # all credits back, nothing to send
    unit.stall_input(False)
    clock.advance(1)
    assert get(unit, "distributor")["input.received_events"] == stalled + RATE


def test_slow_node_gets_fewer_events(unit, clock):
    slow, fast = unit.nodes
    unit.slow_node(slow, 0.5)  # with 2 nodes at 70 % load, the unit just keeps up
    clock.advance(2)
    before = get(unit, "distributor")
    clock.advance(20)
    dist = get(unit, "distributor")
    per_node = {n: sum(dist[f"output.sent_events[{w}]"] - before[f"output.sent_events[{w}]"] for w in unit.workers(n))
                for n in unit.nodes}
    assert per_node[slow] < 0.6 * per_node[fast]
    assert dist["input.received_events"] - before["input.received_events"] >= 0.98 * 20 * RATE
    unit.slow_node(slow, 1.0)
    clock.advance(20)
    again = get(unit, "distributor")
    recovered = {n: sum(again[f"output.sent_events[{w}]"] - dist[f"output.sent_events[{w}]"] for w in unit.workers(n))
                 for n in unit.nodes}
    assert recovered[slow] > 0.7 * recovered[fast]
    with pytest.raises(ValueError, match="factor"):
        unit.slow_node(slow, 0)


def test_stall_output_silences_the_final_collector_first(unit, clock):
    clock.advance(3)
    unit.stall_output(True)
    fc0, col0 = get(unit, "finalcollector"), get(unit, "collector")
    clock.advance(10)
    fc, col, dist = get(unit, "finalcollector"), get(unit, "collector"), get(unit, "distributor")
    assert fc["input.received_events"] == fc0["input.received_events"]
    assert fc["monitor.output_state"] == "ready" and fc["input.registered_workers"] == 1  # not storage, not a d
    assert col["output.sent_events"] - col0["output.sent_events"] <= 20  # only its credits went out
    assert (col["output.ready_queue_size"], col["monitor.output_state"]) == (0, "not_ready")
    assert dist["output.ready_queue_size"] == 0  # the back-pressure reaches the distributor
    unit.stall_output(False)
    clock.advance(3)
    assert get(unit, "finalcollector")["input.received_events"] > fc["input.received_events"]
    assert get(unit, "distributor")["output.ready_queue_size"] > 0


def test_drop_output_loses_events_between_collector_and_final_collector(unit, clock):
    clock.advance(3)
    unit.drop_output(0.25)
    col0, fc0 = get(unit, "collector"), get(unit, "finalcollector")
    clock.advance(20)
    col, fc = get(unit, "collector"), get(unit, "finalcollector")
    sent = col["output.sent_events"] - col0["output.sent_events"]
    arrived = fc["input.received_events"] - fc0["input.received_events"]
    assert sent > 1000 and arrived == sent - unit.lost_output_events and abs(arrived / sent - 0.75) < 0.01
    assert fc["output.sent_events"] == fc["input.received_events"]  # what arrives is stored
    unit.drop_output(0)
    clock.advance(5)
    col2, fc2 = get(unit, "collector"), get(unit, "finalcollector")
    assert col2["output.sent_events"] - col["output.sent_events"] == fc2["input.received_events"] - fc["input.received_events"]
    with pytest.raises(ValueError, match="fraction"):
        unit.drop_output(1.5)


def test_stop_dqm_starves_the_histogram_servers_after_the_next_run_start(unit, clock):
    clock.advance(70)
    node = unit.nodes[1]
    unit.stop_dqm(node=node)
    proxy0 = get(unit, "proxyhistoserver", node)
    clock.advance(40)  # within the run the servers keep merging what they hold
    assert get(unit, "proxyhistoserver", node)["output.histogram_merges"] > proxy0["output.histogram_merges"]
    assert get(unit, "proxyhistoserver", node)["input.received_events"] == proxy0["input.received_events"]
    unit.stop_run()
    clock.advance(5)
    unit.start_run()
    clock.advance(5)
    starved, healthy = get(unit, "proxyhistoserver", node), get(unit, "proxyhistoserver", unit.nodes[0])
    clock.advance(100)
    assert get(unit, "proxyhistoserver", node)["output.histogram_merges"] == starved["output.histogram_merges"]
    assert get(unit, "proxyhistoserver", unit.nodes[0])["output.histogram_merges"] > healthy["output.histogram_merges"]
    final = get(unit, "finalhistoserver")
    assert final["output.histogram_merges"] > 0 and final["output.last_merged_histograms"] == 1  # only the healthy node
    unit.stop_dqm(False)
    clock.advance(100)
    assert get(unit, "proxyhistoserver", node)["output.histogram_merges"] > starved["output.histogram_merges"]


def test_restart_app_resets_its_counters(unit, clock):
    client = Client(address(unit, "collector"))
    clock.advance(5)
    for _ in range(3):
        client.monitor()
    unit.restart_app("collector")
    col = client.flat()
    assert (col["monitor.monitoring_counter"], col["input.received_events"], col["input.dead_workers"]) == (0, 0, 0)
    assert col["input.registered_workers"] == NODES * PER_NODE  # the workers said hello again
    clock.advance(2)
    assert client.flat()["input.received_events"] > 0
    client.close()

    proxies = get(unit, "finalhistoserver")["input.registered_workers"]
    unit.restart_app("proxyhistoserver", node="hltwk02")  # a new pid: the final server sees a new peer
    assert get(unit, "finalhistoserver")["input.registered_workers"] == proxies + 1
    assert get(unit, "proxyhistoserver", "hltwk02")["monitor.monitoring_counter"] == 0
    with pytest.raises(ValueError, match="no worker node"):
        unit.restart_app("proxyhistoserver", node="hltwk99")
    with pytest.raises(ValueError, match="unknown app"):
        unit.restart_app("worker")


def test_kill_node_mutes_its_proxy(unit, clock):
    clock.advance(5)
    node = unit.nodes[1]
    unit.kill_node(node)
    assert request(address(unit, "proxyhistoserver", node), timeout=0.3) is None
    col = get(unit, "collector")
    assert (col["input.registered_workers"], col["input.dead_workers"]) == (NODES * PER_NODE, 0)  # no d
    clock.advance(5)
    dist = get(unit, "distributor")
    assert all(dist[f"output.ready_messages[{w}]"] == 0 for w in unit.workers(node))
    assert request(address(unit, "proxyhistoserver", unit.nodes[0]))[0] == b"c"


def test_stop_and_start_run(unit, clock):
    clock.advance(40)
    unit.stop_run()
    clock.advance(1)
    assert get(unit, "collector")["input.received_stop_messages"] == 0  # --stopWaitingTime not over
    clock.advance(3)
    dist, col, fc, final = (get(unit, a) for a in ("distributor", "collector", "finalcollector", "finalhistoserver"))
    assert (dist["output.all_stop_messages"], dist["output.sent_stop_messages"], dist["monitor.timeouts"]) == (1, 1, 1)
    assert (col["input.received_stop_messages"], col["input.all_stop_messages"]) == (NODES * PER_NODE, 1)
    assert (col["output.all_stop_messages"], col["output.sent_stop_messages"]) == (1, 1)
    assert (fc["input.received_stop_messages"], fc["input.all_stop_messages"]) == (1, 1)
    assert (final["input.received_stop_messages"], final["input.all_stop_messages"]) == (NODES, 1)
    assert final["output.histogram_clears"] == 1
    received = col["input.received_events"]
    clock.advance(5)
    assert get(unit, "distributor")["input.received_events"] == dist["input.received_events"]

    unit.start_run()
    for app in ("collector", "finalcollector", "finalhistoserver"):
        values = get(unit, app)
        assert (values["input.received_stop_messages"], values["input.all_stop_messages"]) == (0, 0), app
        assert values["input.last_clear"] != ""
    assert get(unit, "distributor")["output.all_stop_messages"] == 0
    clock.advance(5)
    assert get(unit, "collector")["input.received_events"] > received


# ------------------------------------------------------------------------ reply modes


def test_mute_garbage_late_twice(unit):
    addr = address(unit, "collector")
    with Client(addr) as client:
        unit.set_reply("collector", "mute")
        assert client.silent(0.3)
        assert request(address(unit, "distributor"))[0] == b"c"  # the others still answer

        unit.set_reply("collector", "garbage")
        client.send(b"m", b"", b"")
        frames = client.recv()
        assert len(frames) == 3 and frames[0] == b"c"
        with pytest.raises(ValueError):
            json.loads(frames[1])

        unit.set_reply("collector", "late", delay=0.6)
        client.send(b"m", b"", b"")
        assert client.recv(0.3) is None
        late = client.recv(2.0)
        assert late is not None and json.loads(late[1])["monitor"]["monitoring_counter"] >= 1

        unit.set_reply("collector", "twice")
        client.send(b"m", b"", b"")
        first, second = client.recv(), client.recv()
        counters = [json.loads(f[1])["monitor"]["monitoring_counter"] for f in (first, second)]
        assert counters[1] == counters[0] + 1
        assert client.recv(0.2) is None  # nothing unsolicited beyond that


def test_huge_bad_frames_and_nan(unit, clock):
    clock.advance(3)
    unit.set_reply("distributor", "huge", size=1_000_000)
    frames = request(address(unit, "distributor"))
    assert len(frames[1]) == 1_000_000 and json.loads(frames[1])["input"]["received_events"] == 3 * RATE

    unit.set_reply("collector", "bad_frames")
    frames = request(address(unit, "collector"))
    assert len(frames) == 2 and frames[0] == b"c" and json.loads(frames[1])["monitor"]

    unit.set_reply("finalcollector", "nan")
    raw = request(address(unit, "finalcollector"))[1]
    for token in (b"nan", b"-nan", b"inf"):
        assert re.search(rb'": ' + re.escape(token) + rb"[,}]", raw), token
    with pytest.raises(ValueError):
        json.loads(raw)


def test_type_change_unknown_section_binary_identity(unit, clock):
    clock.advance(3)
    normal = json.loads(request(address(unit, "collector"))[1])
    unit.set_reply("collector", "type_change")
    changed = json.loads(request(address(unit, "collector"))[1])
    for section in ("input", "output"):
        ints = sorted(k for k, v in normal[section].items() if type(v) is int)
        assert type(changed[section][ints[0]]) is float
        assert changed[section][ints[1]] == str(normal[section][ints[1]])

    unit.set_reply("finalcollector", "unknown_section")
    reply = json.loads(request(address(unit, "finalcollector"))[1])
    assert list(reply) == ["monitor", "input", "output", "debug", "version"] and reply["version"] == 2

    unit.set_reply("distributor", "binary_identity")
    raw = request(address(unit, "distributor"))[1]
    assert b'"ready_messages[\x00k\x8bEg]": 1' in raw
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    with pytest.raises(ValueError, match="unknown reply mode"):
        unit.set_reply("distributor", "rude")


def test_signals_get_no_reply_and_bad_frames_end_the_app(unit):
    with Client(address(unit, "finalcollector")) as client:
        client.send(b"n", b"", b"")
        assert client.recv(0.3) is None
        client.send(b"m")  # one frame instead of three: the app dies (B2FATAL)
        assert client.recv(0.3) is None
        assert client.silent(0.3)
    unit.restart_app("finalcollector")
    assert request(address(unit, "finalcollector"))[0] == b"c"


# ------------------------------------------------------------------------------- farm


def test_farm_serves_all_units_from_one_thread_and_lists_dead_endpoints():
    threads = threading.active_count()
    with SimFarm(units=3, worker_nodes=2, workers_per_node=2, dead_fraction=0.2, input_rate=50) as farm:
        assert threading.active_count() == threads + 1
        live = [e for u in farm.units for e in u.endpoints]
        assert len(live) == 3 * (4 + 2)
        dead = farm.dead_endpoints
        assert len(dead) == 4 and farm.endpoints == live + dead  # 20 % of 22 entries
        nodes = {e["node"] for e in farm.endpoints if "node" in e}
        assert len(nodes) == 3 * 2 + 4  # every node name is distinct
        assert all(request(e["address"])[0] == b"c" for e in live)
        assert request(dead[0]["address"], timeout=0.3) is None
        cfg = tomllib.loads(farm.config_toml())["sources"]["hlt"]
        assert cfg["endpoints"] == farm.endpoints


def test_python_dash_m_farmwatch_sim(tmp_path):
    path = tmp_path / "sim.toml"
    proc = subprocess.Popen([sys.executable, "-m", "farmwatch.sim", "--units", "2", "--nodes", "2",
                             "--workers", "2", "--dead-fraction", "0.1", "--input-rate", "100",
                             "--seed", "5", "--write-config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1" in line and str(path) in line, line
        cfg = tomllib.loads(path.read_text())
        assert cfg["store"] == {"path": "farmwatch.db"}
        eps = cfg["sources"]["hlt"]["endpoints"]
        assert len(eps) == 2 * 6 + 1 and cfg["sources"]["hlt"]["kind"] == "hlt_zmq"
        assert request(eps[0]["address"])[0] == b"c"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
