"""The HLT source's protocol guarantees, against hand-driven ROUTER sockets on loopback.

These cases need exact control over *when* and *what* an endpoint answers, which is why they use a
scripted ROUTER rather than the simulator (the simulator-based cases are in test_hlt_zmq.py).
"""

import logging
import threading
import time

import pytest
import zmq

from farmwatch.config.loader import parse
from farmwatch.model import labels
from farmwatch.sources.hlt_zmq.source import HltZmqSource, decode_reply, split_identity

pytestmark = pytest.mark.timeout(60)


class ScriptedRouter:
    """A monitor endpoint whose answer to request n is ``script(n)``: (delay seconds, reply frames) or None."""

    def __init__(self, script):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.script = script
        self.received: list[list[bytes]] = []
        self.identities: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        pending = []  # (due, frames)
        while not self._stop.is_set():
            if self.sock.poll(5):
                ident, *frames = self.sock.recv_multipart()
                self.received.append(frames)
                self.identities.add(ident)
                answer = self.script(len(self.received))
                if answer is not None:
                    delay, reply = answer
                    pending.append((time.monotonic() + delay, [ident, *reply]))
            now = time.monotonic()
            for item in [p for p in pending if p[0] <= now]:
                pending.remove(item)
                try:
                    self.sock.send_multipart(item[1], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close(0)


def reply(counter: int, **output) -> list[bytes]:
    body = ", ".join(f'"{k}": {v}' for k, v in sorted(output.items()))
    return [b"c", ('{"monitor": {"monitoring_counter": %d, "output_state": "ready"}, "output": {%s}}' % (counter, body)).encode(), b""]


def make_source(*endpoints, timeout="300ms", **extra):
    cfg = {"kind": "hlt_zmq", "interval": "1s", "timeout": timeout, "endpoints": list(endpoints), **extra}
    return HltZmqSource("hlt", parse({"sources": {"hlt": cfg}}).sources["hlt"])


def values(batches, name):
    return {dict(k[1]).get("app"): v for b in batches for k, v in zip(b.keys, b.values) if k[0] == name}


@pytest.fixture
def routers():
    made = []

    def make(script):
        r = ScriptedRouter(script)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_a_late_reply_is_never_taken_for_the_next_cycles_answer(routers):
    # request 1 is answered after 0.6 s (after the 0.3 s deadline), request 2 at once
    r = routers(lambda n: (0.6 if n == 1 else 0.0, reply(n, sent_events=n * 100)))
    src = make_source({"unit": "u", "app": "distributor", "address": r.address})
    try:
        first = src.poll()
        assert values(first, "up") == {"distributor": 0.0}
        time.sleep(0.5)  # the late answer to request 1 arrives now; it must not count
        second = src.poll()
        assert values(second, "up") == {"distributor": 1.0}
        assert values(second, "hlt.monitor.monitoring_counter") == {"distributor": 2.0}
        assert values(second, "hlt.output.sent_events") == {"distributor": 200.0}
        assert len(r.identities) == 2  # the socket was reopened after the timeout
    finally:
        src.close()


def test_a_second_answer_is_discarded_and_counted(routers):
    r = routers(lambda n: (0.0, reply(n, sent_events=n)))
    src = make_source({"unit": "u", "app": "distributor", "address": r.address})
    try:
        src.poll()
        # an extra, unsolicited reply (as from an app answering twice)
        r.sock.send_multipart([next(iter(r.identities)), *reply(99, sent_events=99)])
        time.sleep(0.1)
        second = src.poll()
        assert values(second, "hlt.output.sent_events") == {"distributor": 2.0}
        assert values(second, "hlt.poll.duplicate_replies") == {"distributor": 1.0}
    finally:
        src.close()


def test_only_the_monitoring_request_is_ever_sent(routers):
    # answers late, twice, garbage and fine in turn, to exercise every path that touches a socket
    script = {1: (0.5, reply(1)), 2: (0.0, [b"c", b"{not json", b""]), 3: (0.0, [b"x", b"", b""]), 4: (0.0, reply(4))}
    r = routers(lambda n: script.get(n, (0.0, reply(n))))
    src = make_source({"unit": "u", "app": "distributor", "address": r.address})
    try:
        for _ in range(6):
            src.poll()
            time.sleep(0.05)
    finally:
        src.close()
    time.sleep(0.1)
    assert len(r.received) >= 6
    assert all(frames == [b"m", b"", b""] for frames in r.received), r.received


def test_dead_and_mute_endpoints_do_not_delay_or_corrupt_the_others(routers, caplog):
    good = routers(lambda n: (0.0, reply(n, sent_events=7)))
    mute = routers(lambda n: None)
    dead_port = zmq.Context.instance().socket(zmq.ROUTER)
    port = dead_port.bind_to_random_port("tcp://127.0.0.1")
    dead_port.close(0)
    src = make_source(
        {"unit": "u", "app": "distributor", "address": good.address},
        {"unit": "u", "app": "collector", "address": mute.address},
        {"unit": "u", "app": "finalcollector", "address": f"tcp://127.0.0.1:{port}"},
        timeout="400ms",
    )
    caplog.set_level(logging.INFO, logger="farmwatch")
    try:
        for _ in range(4):
            t0 = time.monotonic()
            batches = src.poll()
            took = time.monotonic() - t0
            assert took < 0.4 + 0.15  # one deadline for all, never one per endpoint
            assert values(batches, "up") == {"distributor": 1.0, "collector": 0.0, "finalcollector": 0.0}
            assert values(batches, "hlt.output.sent_events") == {"distributor": 7.0}
    finally:
        src.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # logged once per state change, not once per cycle
    assert sum("collector at" in w and "no reply within" in w for w in warnings) == 1, warnings
    assert sum("finalcollector at" in w and "not connected" in w for w in warnings) == 1, warnings


def test_reply_size_limit(routers):
    big = "1" * 300_000
    r = routers(lambda n: (0.0, [b"c", ('{"output": {"x": %s}}' % big).encode(), b""]))
    ok = routers(lambda n: (0.0, reply(n)))
    src = make_source({"unit": "u", "app": "distributor", "address": r.address},
                      {"unit": "u", "app": "collector", "address": ok.address}, max_reply_size="100KiB")
    try:
        assert values(src.poll(), "up") == {"distributor": 0.0, "collector": 1.0}
    finally:
        src.close()


def test_identities_split_at_the_last_underscore():
    assert split_identity("hltwk03_4711") == {"host": "hltwk03", "pid": "4711"}
    assert split_identity("hlt_wk_03_4711") == {"host": "hlt_wk_03", "pid": "4711"}
    assert split_identity("socket") == {"peer": "socket"}
    assert split_identity("wk_x") == {"peer": "wk_x"}
    assert split_identity("\x00k\xa7\x01") == {"peer": "\\x00k\\xa7\\x01"}


def test_decode_reply_tolerates_what_cpp_printf_produces():
    doc = decode_reply(b'{"output": {"a": nan, "b": -nan, "c": inf, "d": -inf, "e": 1.500000}}')
    out = doc["output"]
    assert out["a"] != out["a"] and out["b"] != out["b"]
    assert out["c"] == float("inf") and out["d"] == float("-inf") and out["e"] == 1.5
    raw = b'{"output": {"sent_events[\x00\xff\x01]": 3}}'
    assert decode_reply(raw)["output"] == {"sent_events[\x00\xff\x01]": 3}
    with pytest.raises(ValueError, match="invalid JSON"):
        decode_reply(b'{"output": ')
    with pytest.raises(ValueError, match="not an object"):
        decode_reply(b"[1, 2]")


def test_labels_of_per_peer_keys_and_exclusion(routers):
    body = b'{"monitor": {"monitoring_counter": 1}, "output": {"event_rate": 0.000001, "event_rate_to[hltwk01_11]": 5.0, "sent_events[hltwk01_11]": 3, "sent_events[socket]": 4}}'
    r = routers(lambda n: (0.0, [b"c", body, b""]))
    src = make_source({"unit": "u", "app": "distributor", "address": r.address})
    try:
        keys = {k for b in src.poll() for k in b.keys}
    finally:
        src.close()
    assert ("hlt.output.sent_events", labels(unit="u", app="distributor", host="hltwk01", pid="11")) in keys
    assert ("hlt.output.sent_events", labels(unit="u", app="distributor", peer="socket")) in keys
    assert not any("event_rate" in k[0] for k in keys)
