"""The simulator's apps reproduce the conformance cases of the spec (section 4, taken from basf2's
``HB/tests``) and the JSON form of ``ZMQLogger`` (section 2), read over real monitor sockets.

Apps are driven message by message; peers without a monitor socket (workers, the output worker,
storage, the event builder) are played by the tests. Time is a SimClock so timers are exact.
"""

from __future__ import annotations

import json
import re
import struct
import time
from collections import deque

import pytest

from farmwatch.clock import SimClock
from farmwatch.sim.apps import Collector, Distributor, FinalCollector, FinalHistoServer, ProxyHistoServer
from farmwatch.sim.protocol import (
    COMPRESSED, DELETE, HELLO, LAST, RAW_EVENT, READY, STREAM, TERMINATE, LoadBalancedInput, Message,
    byte_order,
)
from farmwatch.sim.sockets import AppHost
from sim_helpers import Client

pytestmark = pytest.mark.timeout(30)

EVENT_SIZE = 122_640


def raw_event(size: int = EVENT_SIZE) -> bytes:
    """An event as the event builder sends it: first word = length in 32-bit words incl. itself."""
    return struct.pack("<i", size // 4) + bytes(size - 4)


@pytest.fixture
def clock():
    return SimClock(1_700_000_000.0)


class Served:
    """Apps on real monitor sockets, one client each."""

    def __init__(self, **apps):
        self.apps = apps
        self.host = AppHost(apps).start()
        self.clients = {key: Client(self.host.address(key)) for key in apps}

    def flat(self, key: str) -> dict:
        return self.clients[key].flat()

    def values(self, key: str, *names: str) -> tuple:
        got = self.flat(key)
        return tuple(got[name] for name in names)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.host.stop()


@pytest.fixture
def serve():
    served = []

    def start(**apps) -> Served:
        served.append(Served(**apps))
        return served[-1]

    yield start
    for s in served:
        s.close()


# ------------------------------------------------------------------ case 1: collectors


def make_ready(app) -> list[Message]:
    """Downstream becomes ready: the output worker's ``r`` / the storage connecting."""
    if isinstance(app, Collector):
        return app.output_message(Message(READY, "socket"))
    return app.output_message(Message(STREAM, "storage"))


@pytest.mark.parametrize("cls", [Collector, FinalCollector], ids=["collector", "finalcollector"])
def test_case1_collector_registration_stop_and_delete(cls, clock, serve):
    app = cls(clock)
    s = serve(c=app)
    stop = ("input.received_stop_messages", "input.all_stop_messages")

    assert app.deliver(Message(HELLO, "A")) == []  # not read: the output is not ready
    assert s.values("c", "input.registered_workers", "monitor.output_state") == (0, "not_ready")
    make_ready(app)
    assert s.values("c", "input.registered_workers", "monitor.output_state") == (1, "ready")
    app.deliver(Message(HELLO, "B"))
    assert s.values("c", "input.registered_workers", *stop) == (2, 0, 0)

    assert app.deliver(Message(LAST, "A")) == []
    assert s.values("c", *stop) == (1, 0)
    passed = app.deliver(Message(LAST, "B"))
    assert s.values("c", *stop) == (2, 1)
    # the collector passes the stop on to its workers; the final collector keeps it from storage
    assert passed == ([Message(LAST, "socket")] if cls is Collector else [])
    assert app.deliver(Message(LAST, "A")) == []
    assert s.values("c", *stop) == (2, 1)

    s.clients["c"].signal(b"n")
    flat = s.flat("c")
    assert (flat["input.received_stop_messages"], flat["input.all_stop_messages"]) == (0, 0)
    assert flat["input.last_clear"] == time.ctime(clock.time()) + "\n"

    app.deliver(Message(LAST, "A"))
    passed = app.deliver(Message(DELETE, "B", data=b"B"))  # B's death completes the set
    flat = s.flat("c")
    assert (flat["input.registered_workers"], *[flat[k] for k in stop]) == (1, 1, 1)
    assert flat["input.dead_workers"] == 1 and flat["input.dead_worker_messaged_from[B]"] == 1
    assert passed == ([Message(LAST, "socket")] if cls is Collector else [])

    # terminate counters work alike, and all terminates end the app
    app.deliver(Message(HELLO, "B"))
    s.clients["c"].signal(b"n")
    term = ("input.received_terminate_messages", "input.all_terminate_messages")
    assert s.values("c", "input.registered_workers", *term) == (2, 0, 0)
    app.deliver(Message(TERMINATE, "A"))
    app.deliver(Message(TERMINATE, "A"))
    assert s.values("c", *term) == (1, 0)
    s.clients["c"].signal(b"n")
    assert s.values("c", *term) == (0, 0)
    app.deliver(Message(TERMINATE, "A"))
    passed = app.deliver(Message(TERMINATE, "B"))
    assert passed == ([Message(TERMINATE, "socket")] if cls is Collector else [])
    assert app.exited and s.clients["c"].silent()


@pytest.mark.parametrize("cls", [Collector, FinalCollector], ids=["collector", "finalcollector"])
def test_case1_message_from_unregistered_peer_ends_the_app(cls, clock, serve):
    app = cls(clock)
    s = serve(c=app)
    make_ready(app)
    app.deliver(Message(HELLO, "A"))
    assert s.values("c", "input.registered_workers") == (1,)
    app.deliver(Message(LAST, "other_socket"))
    assert app.exited and "registration" in app.exit_reason
    assert s.clients["c"].silent()


def test_case1_collector_output_credits_and_fifo(clock, serve):
    app = Collector(clock)
    s = serve(c=app)
    app.output_message(Message(READY, "socket"))
    app.output_message(Message(READY, "socket"))
    assert s.values("c", "output.ready_queue_size", "output.registered_workers") == (2, 1)
    app.output_message(Message(READY, "other_socket"))
    app.output_message(Message(READY, "other_socket"))
    assert s.values("c", "output.ready_queue_size", "output.registered_workers") == (4, 2)

    app.deliver(Message(HELLO, "A"))
    app.deliver(Message(HELLO, "B"))
    got = [app.deliver(Message(RAW_EVENT, who, 10)) for who in ("A", "B", "A")]
    assert got == [[Message(RAW_EVENT, "socket", 10)], [Message(RAW_EVENT, "socket", 10)],
                   [Message(RAW_EVENT, "other_socket", 10)]]
    flat = s.flat("c")
    assert flat["output.sent_events[socket]"] == 2 and flat["output.sent_events[other_socket]"] == 1
    assert flat["output.ready_messages[socket]"] == 0 and flat["output.ready_queue_size"] == 1
    assert flat["input.received_events[A]"] == 2 and flat["input.total_number_messages_from[A]"] == 3


def test_case1_final_collector_sends_events_to_storage(clock, serve):
    app = FinalCollector(clock)
    s = serve(c=app)
    make_ready(app)
    app.deliver(Message(HELLO, "A"))
    assert app.deliver(Message(RAW_EVENT, "A", 1234)) == [Message(RAW_EVENT, "storage", 1234)]
    flat = s.flat("c")
    assert (flat["output.sent_events"], flat["output.data_size"], flat["output.socket_state"]) == (1, 1234.0, "connected")
    app.output_message(Message(STREAM, "storage"))  # storage goes away: the output is not ready
    assert s.values("c", "output.socket_state", "output.socket_disconnects", "monitor.output_state") == (
        "disconnected", 1, "not_ready")


def test_l_signal_forces_the_stop_after_input_idleness(clock, serve):
    """Section 1: collector/finalcollector arm ``--stopWaitingTime`` and then force the stop
    (``stop_overwrites``); only the collector passes it on. ``x`` is ignored by both."""
    col, fc = Collector(clock), FinalCollector(clock)
    s = serve(c=col, f=fc)
    for app in (col, fc):
        make_ready(app)
        app.deliver(Message(HELLO, "A"))
        app.deliver(Message(HELLO, "B"))
        app.deliver(Message(LAST, "A"))
    for key in ("c", "f"):
        s.clients[key].signal(b"x")
        s.clients[key].signal(b"l")
    clock.advance(1.0)
    col.deliver(Message(RAW_EVENT, "B", 10))  # input resets the timer
    clock.advance(1.5)
    assert col.tick(clock.time()) == []
    assert fc.tick(clock.time()) == []
    clock.advance(0.5)
    assert col.tick(clock.time()) == [Message(LAST, "socket")]
    for key in ("c", "f"):
        flat = s.flat(key)
        assert (flat["input.all_stop_messages"], flat["input.stop_overwrites"], flat["input.received_stop_messages"]) == (1, 1, 1)
        assert flat["input.last_stop_overwrite"] == flat["input.last_stop_sent"] != ""
        assert flat["monitor.timeouts"] == 1
    assert s.values("c", "output.all_stop_messages") == (1,)
    assert not col.exited and not fc.exited


def test_l_and_n_signals_at_a_histogram_server(clock, serve):
    """Section 1: ``l`` forces the stop and a final merge at once, ``n`` clears input and histograms."""
    final = FinalHistoServer(clock)
    s = serve(h=final)
    for proxy in ("hltwk01_1", "hltwk02_2"):
        final.deliver(Message(HELLO, proxy))
    final.deliver(Message(COMPRESSED, "hltwk01_1", 5_000, meta=(3, 9)))
    s.clients["h"].signal(b"l")
    flat = s.flat("h")
    assert (flat["input.all_stop_messages"], flat["input.stop_overwrites"]) == (1, 1)
    assert (flat["output.histogram_merges"], flat["output.histogram_clears"]) == (1, 1)
    assert flat["output.last_written_file_name"] == "/dqm/hltdqm_e0003r00009.root"
    s.clients["h"].signal(b"n")
    flat = s.flat("h")
    assert (flat["input.all_stop_messages"], flat["output.histogram_clears"]) == (0, 2)
    # a different run in between clears everything (different_event_meta_data)
    final.deliver(Message(COMPRESSED, "hltwk01_1", 5_000, meta=(3, 10)))
    final.deliver(Message(COMPRESSED, "hltwk02_2", 5_000, meta=(3, 11)))
    flat = s.flat("h")
    assert (flat["output.different_event_meta_data"], flat["output.histogram_clears"]) == (1, 3)


# ------------------------------------------------------------------ case 2: distributor


def test_case2_distributor_input_connects_and_disconnects(clock, serve):
    app = Distributor(clock)
    s = serve(d=app)
    sock = ("input.socket_state", "input.socket_connects", "input.socket_disconnects")
    assert s.values("d", *sock) == ("disconnected", 0, 0)
    for _ in range(5):  # without a ready worker the input is not even read
        app.output_message(Message(READY, "socket"))
    app.deliver_raw("eb", b"")
    assert s.values("d", *sock) == ("connected", 1, 0)
    app.deliver_raw("eb", b"")
    assert s.values("d", *sock) == ("disconnected", 1, 1)
    app.deliver_raw("eb", b"")
    assert s.values("d", *sock) == ("connected", 2, 1)
    for _ in range(4):
        app.deliver_raw("eb", raw_event())
    assert s.values("d", "input.received_events", *sock) == (4, "connected", 2, 1)
    # an event split over two packages is reassembled
    event = raw_event()
    app.deliver_raw("eb", event[:1000])
    assert s.values("d", "input.received_events", "input.write_address", "input.current_size") == (4, 1000, EVENT_SIZE)
    app.deliver_raw("eb", event[1000:])
    assert s.values("d", "input.received_events", "input.write_address", "input.current_size") == (5, 0, 0)


def test_case2_distributor_credits_events_stop_and_terminate(clock, serve):
    app = Distributor(clock)
    s = serve(d=app)
    out = ("output.ready_queue_size", "output.registered_workers")
    app.deliver_raw("eb", b"")
    assert s.values("d", *out, "input.socket_state") == (0, 0, "disconnected")  # not read yet

    app.output_message(Message(READY, "socket"))
    assert s.values("d", *out, "output.ready_messages[socket]", "input.socket_state") == (1, 1, 1, "connected")
    assert app.deliver_raw("eb", raw_event()) == [Message(RAW_EVENT, "socket", EVENT_SIZE)]
    assert s.values("d", *out, "output.ready_messages[socket]") == (0, 1, 0)
    assert app.deliver_raw("eb", raw_event()) == []  # no credit: it waits
    assert app.output_message(Message(READY, "other_socket")) == [Message(RAW_EVENT, "other_socket", EVENT_SIZE)]
    assert s.values("d", *out) == (0, 2)
    for who in ("socket", "socket", "other_socket", "other_socket"):
        app.output_message(Message(READY, who))
    assert s.values("d", *out, "output.sent_events") == (4, 2, 2)

    s.clients["d"].signal(b"l")  # arms --stopWaitingTime
    assert app.tick(clock.time()) == []
    clock.advance(2.0)
    assert sorted(app.tick(clock.time())) == [Message(LAST, "other_socket"), Message(LAST, "socket")]
    flat = s.flat("d")
    assert (flat["output.all_stop_messages"], flat["output.sent_stop_messages"], flat["monitor.timeouts"]) == (1, 1, 1)
    assert flat["output.last_stop_sent"] == time.ctime(clock.time()) + "\n"
    # events after the stop are not forwarded; a worker turning up late is told at once
    assert app.deliver_raw("eb", raw_event()) == []
    assert s.values("d", "output.sent_events", "output.dismissed_events") == (2, 1)
    assert app.output_message(Message(READY, "late_socket")) == [Message(LAST, "late_socket")]

    s.clients["d"].send(b"x", b"", b"")
    assert s.clients["d"].silent(1.0) and app.exited
    assert sorted(s.host.sent["d"]) == [Message(TERMINATE, w) for w in ("late_socket", "other_socket", "socket")]


def test_stop_timer_waits_for_input_idleness(clock, serve):
    app = Distributor(clock)
    s = serve(d=app)
    app.output_message(Message(READY, "socket"))
    app.deliver_raw("eb", b"")
    s.clients["d"].signal(b"l")
    clock.advance(1.5)
    app.deliver_raw("eb", raw_event())  # input resets the timer
    clock.advance(1.5)
    assert app.tick(clock.time()) == []
    clock.advance(0.5)
    assert app.tick(clock.time()) == [Message(LAST, "socket")]
    clock.advance(10)
    assert app.tick(clock.time()) == []  # the timer is off again
    assert s.values("d", "monitor.timeouts") == (1,)


# ------------------------------------------------------------------------ case 3: chain


class Chain:
    """Distributor → worker processes (bufferSize 20) → [collector → output worker] → final
    collector → storage. The test plays the workers: a worker reads an event (and sends ``r``
    for it at once), passes it on, and passes on a stop after its events."""

    def __init__(self, clock, workers=("wk_1",), collector=True, buffer_size=20):
        self.dist = Distributor(clock)
        self.col = Collector(clock) if collector else None
        self.fc = FinalCollector(clock)
        self.dying: set[str] = set()
        self.dead: set[str] = set()
        self.stored = 0
        self.todo: deque = deque()
        self.fc.output_message(Message(STREAM, "storage"))
        if self.col:
            for _ in range(buffer_size):
                self.col.output_message(Message(READY, "out_1"))
            self.fc.deliver(Message(HELLO, "out_1"))
        downstream = self.col or self.fc
        for w in workers:
            downstream.deliver(Message(HELLO, w))
        for _ in range(buffer_size):
            for w in workers:
                self.dist.output_message(Message(READY, w))
        self.dist.deliver_raw("eb", b"")

    def push(self, n: int) -> None:
        for _ in range(n):
            self._queue("dist", self.dist.deliver_raw("eb", raw_event()))

    def tick(self, now: float) -> None:
        self._queue("dist", self.dist.tick(now))

    def kill(self, worker: str) -> None:
        """The worker exits on its next event; its parent then sends ``d``."""
        self.dying.add(worker)

    def _queue(self, source: str, msgs: list[Message]) -> None:
        self.todo.extend((source, m) for m in msgs)
        while self.todo:
            source, msg = self.todo.popleft()
            getattr(self, "_from_" + source)(msg)

    def _from_dist(self, msg: Message) -> None:
        w = msg.identity
        if w in self.dead:
            return
        downstream, name = (self.col, "col") if self.col else (self.fc, "fc")
        if msg.type == LAST:
            self.todo.extend((name, m) for m in downstream.deliver(Message(LAST, w)))
            return
        self.todo.extend(("dist", m) for m in self.dist.output_message(Message(READY, w)))
        if w in self.dying:
            self.dying.discard(w)
            self.dead.add(w)
            self.todo.extend((name, m) for m in downstream.deliver(Message(DELETE, w + "_parent", data=w.encode())))
            return
        self.todo.extend((name, m) for m in downstream.deliver(Message(RAW_EVENT, w, msg.size)))

    def _from_col(self, msg: Message) -> None:
        if msg.type == LAST:
            self.fc.deliver(Message(LAST, "out_1"))
            return
        self.todo.extend(("col", m) for m in self.col.output_message(Message(READY, "out_1")))
        self.todo.extend(("fc", m) for m in self.fc.deliver(Message(RAW_EVENT, "out_1", msg.size)))

    def _from_fc(self, msg: Message) -> None:
        self.stored += 1


def test_case3_chain_events_stop_and_new_run(clock, serve):
    chain = Chain(clock)
    s = serve(d=chain.dist, c=chain.col, f=chain.fc)
    assert s.values("d", "output.ready_queue_size", "output.registered_workers", "input.socket_state") == (20, 1, "connected")
    assert s.values("c", "input.registered_workers", "output.ready_queue_size", "output.registered_workers") == (1, 20, 1)
    assert s.values("f", "input.registered_workers") == (1,)

    chain.push(20)
    assert s.values("d", "input.received_events", "output.sent_events", "output.ready_queue_size") == (20, 20, 20)
    assert s.values("c", "input.received_events", "output.sent_events", "output.ready_queue_size") == (20, 20, 20)
    assert s.values("f", "input.received_events", "output.sent_events") == (20, 20)
    assert chain.stored == 20

    stop = ("input.received_stop_messages", "input.all_stop_messages")
    for _ in range(2):  # a second stop reaches the workers and the collector, no further
        s.clients["d"].signal(b"l")
        clock.advance(2.0)
        chain.tick(clock.time())
        assert s.values("c", *stop, "input.received_events") == (1, 1, 20)
        assert s.values("f", *stop, "input.received_events") == (1, 1, 20)
    assert s.values("c", "input.sent_stop_messages", "output.sent_stop_messages") == (1, 1)
    assert s.values("f", "input.total_received_stop_messages") == (1,)

    for key in ("d", "c", "f"):
        s.clients[key].signal(b"n")
    assert s.values("c", *stop, "input.received_events") == (0, 0, 20)
    assert s.values("f", *stop, "input.received_events") == (0, 0, 20)
    chain.push(20)
    assert s.values("d", "output.sent_events", "output.ready_queue_size") == (40, 20)
    assert s.values("c", "input.received_events", "output.sent_events") == (40, 40)
    assert s.values("f", "input.received_events", "output.sent_events") == (40, 40)


def test_case3_dying_worker(clock, serve):
    chain = Chain(clock, workers=("wk_1", "wk_2"), collector=False)
    s = serve(d=chain.dist, f=chain.fc)
    assert s.values("d", "output.ready_queue_size", "output.registered_workers") == (40, 2)
    assert s.values("f", "input.registered_workers") == (2,)
    chain.push(100)
    assert s.values("d", "output.sent_events", "output.ready_queue_size") == (100, 40)
    assert s.values("f", "input.received_events", "output.sent_events") == (100, 100)

    chain.kill("wk_2")
    chain.push(100)
    # 100 - 20 (the dying worker's credits) - 1 (the event it died on) arrive
    assert s.values("f", "input.registered_workers", "input.received_events", "input.dead_workers") == (1, 179, 1)
    assert s.values("d", "output.registered_workers", "output.ready_queue_size", "output.sent_events") == (2, 20, 200)
    assert s.values("d", "output.ready_messages[wk_2]") == (0,)

    s.clients["d"].signal(b"l")
    clock.advance(2.0)
    chain.tick(clock.time())
    assert s.values("f", "input.received_stop_messages", "input.all_stop_messages") == (1, 1)
    s.clients["d"].signal(b"n")
    s.clients["f"].signal(b"n")
    assert s.values("f", "input.received_stop_messages", "input.all_stop_messages", "input.received_events") == (0, 0, 179)
    chain.push(100)
    assert s.values("d", "output.sent_events", "output.ready_queue_size", "output.registered_workers") == (300, 20, 2)
    assert s.values("f", "input.received_events", "output.sent_events") == (279, 279)


# ------------------------------------------------------------------- case 4: histograms


def test_case4_histogram_servers(clock, serve):
    final = FinalHistoServer(clock, merge_interval=1)
    proxies = {"p1": ProxyHistoServer(clock, identity="hltwk01_100", merge_interval=1),
               "p2": ProxyHistoServer(clock, identity="hltwk02_200", merge_interval=1)}
    clients = {"p1": ("1", "2"), "p2": ("3", "4", "5")}
    s = serve(f=final, **proxies)

    def to_final(msgs):
        for msg in msgs:
            final.deliver(msg)

    for key, proxy in proxies.items():
        to_final(proxy.start())
        for c in clients[key]:
            proxy.deliver(Message(HELLO, c))
    stop = ("input.received_stop_messages", "input.all_stop_messages")
    assert s.values("p1", "input.registered_workers", *stop) == (2, 0, 0)
    assert s.values("p2", "input.registered_workers", *stop) == (3, 0, 0)
    assert s.values("f", "input.registered_workers", *stop) == (2, 0, 0)

    for _ in range(10):
        for key, proxy in proxies.items():
            for c in clients[key]:
                to_final(proxy.deliver(Message(COMPRESSED, c, 40_000, meta=(1, 1))))
    clock.advance(1)
    for proxy in proxies.values():
        to_final(proxy.tick(clock.time()))
    final.tick(clock.time())
    assert s.values("p1", "input.received_events", "output.histogram_merges", "output.last_merged_histograms") == (20, 1, 2)
    assert s.values("p2", "input.received_events", "output.sent_events") == (30, 2)  # hello + one merge
    flat = s.flat("f")
    assert (flat["input.received_events"], flat["output.histogram_merges"], flat["output.stored_identities"]) == (2, 1, 2)
    assert flat["output.last_written_file_name"] == "/dqm/hltdqm_e0001r00001.root"

    for key, proxy in proxies.items():
        for c in clients[key]:
            to_final(proxy.deliver(Message(LAST, c)))
    assert s.values("p1", *stop) == (2, 1)
    assert s.values("p2", *stop) == (3, 1)
    assert s.values("f", *stop, "output.histogram_clears") == (2, 1, 1)

    for key in ("p1", "p2", "f"):
        s.clients[key].signal(b"n")
    for key in ("p1", "p2", "f"):
        assert s.values(key, *stop) == (0, 0)

    for key, proxy in proxies.items():
        for c in clients[key]:
            to_final(proxy.deliver(Message(TERMINATE, c)))
    assert final.exited and all(p.exited for p in proxies.values())


def test_load_balanced_input_sends_credits(clock):
    """Section 3: ``bufferSize`` ``r`` at start and one per event (outputadapter, worker mimic)."""
    conn = LoadBalancedInput(clock, buffer_size=20)
    assert conn.values["sent_ready"] == 20
    assert conn.on_message(RAW_EVENT, 1000) == 1 and conn.on_message(LAST) == 0
    assert json.loads(conn.render()) == {"data_size": 1000.0, "event_rate": round(2000 / clock.time(), 6),
                                         "event_rate_last_measurement": time.ctime(clock.time()) + "\n",
                                         "received_events": 1, "sent_ready": 21}


# ----------------------------------------------------------------------- JSON form


CTIME = re.compile(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\n$")


def test_json_is_written_like_zmqlogger(clock, serve):
    chain = Chain(clock)
    final = FinalHistoServer(clock, merge_interval=1)
    final.deliver(Message(HELLO, "hltwk01_100"))
    final.deliver(Message(COMPRESSED, "hltwk01_100", 10_000, meta=(7, 42)))
    clock.advance(1)
    final.tick(clock.time())
    s = serve(d=chain.dist, c=chain.col, h=final)
    before = s.clients["d"].raw()
    chain.push(3)
    raws = {key: s.clients[key].raw() for key in ("d", "c", "h")}

    # layout: fillMonitoringJSON's newlines, every section ends with getMonitoringJSON's endl
    text = raws["d"].decode()
    assert text.startswith('{\n"monitor": {"monitoring_counter": 1, "output_state": "ready", "waiting_since": "')
    assert '}\n,\n"input": {' in text and '}\n,\n"output": {' in text and text.endswith("}\n\n}\n")
    # an int that the C++ initialises as long 0 turns into a double once averaged
    assert b'"average_number_of_events_per_package": 0,' in before
    assert b'"average_number_of_events_per_package": 1.000000,' in raws["d"]
    # strings are escaped like boost's create_escapes: '/' too
    assert b'"last_written_file_name": "\\/dqm\\/hltdqm_e0007r00042.root"' in raws["h"]

    for key, raw in raws.items():
        sections = json.loads(raw, object_pairs_hook=lambda pairs: pairs)
        assert [name for name, _ in sections] == ["monitor", "input", "output"]
        for name, pairs in sections:
            keys = [k for k, _ in pairs]
            assert keys == sorted(keys, key=byte_order), (key, name)
            for k, v in pairs:
                assert not isinstance(v, bool)
                if isinstance(v, float):  # every double is printed with %f
                    assert re.search(rb'"' + re.escape(k.encode()) + rb'": -?\d+\.\d{6}[,}]', raw), k
                if k in ("waiting_since", "last_received_message", "last_stop_sent", "last_merge",
                         "event_rate_last_measurement") and v:
                    assert CTIME.match(v), (k, v)
                if k.startswith("all_") and k.endswith("_messages"):
                    assert v in (0, 1) and type(v) is int
    flat = s.flat("c")
    assert flat["input.last_received_message"] == time.ctime(clock.time()) + "\n"
    assert flat["input.event_rate"] == pytest.approx(2000 / clock.time(), abs=1e-6)  # first timeit: since the epoch
    assert flat["output.last_stop_sent"] == ""


def test_monitoring_counter_counts_previous_replies(clock, serve):
    s = serve(d=Distributor(clock))
    counters = [s.clients["d"].monitor()["monitor"]["monitoring_counter"] for _ in range(4)]
    assert counters == [0, 1, 2, 3]
    s.clients["d"].send(b"n", b"", b"")  # a signal is not answered and not counted
    assert s.clients["d"].monitor()["monitor"]["monitoring_counter"] == 4
    s.clients["d"].send(b"q", b"", b"")  # any other type gets a reply
    assert s.clients["d"].recv()[0] == b"c"
