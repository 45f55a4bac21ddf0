"""The connection state machines of basf2's HLT ZeroMQ apps, with their monitoring values.

Each class mirrors one C++ connection (``framework/pcore/zmq/connections``,
``daq/hbasf2/connections``): it keeps exactly the keys the C++ ``ZMQLogger`` keeps, changes them in
the same order and on the same messages, and renders them the way ``ZMQLogger::getMonitoringJSON``
does (byte-sorted unescaped keys, ``%f`` doubles, escaped strings, ``ctime()`` times). The JSON is
built from string pieces rather than with ``json.dumps`` so that the odd cases real apps produce
(bare ``nan``, raw bytes in keys, type changes) can be reproduced exactly.

Every handler exists twice in effect: a message-level method (``on_message``, ``on_ready``,
``send_event``) used by the conformance tests, and a bulk method (``receive_events``,
``send_events``) used by the traffic model, which applies *n* messages at once with the same result
as *n* single calls spread evenly over ``[t0, t1]``. The single-message methods are thin wrappers
around the bulk ones so that both paths share one implementation.

Identities and keys are ``str``; identities that arrive as bytes are decoded with
``surrogateescape`` so that non-UTF-8 bytes survive and are written back byte for byte.
"""

from __future__ import annotations

import math
import struct
import time
from collections import deque
from typing import NamedTuple, Sequence

from farmwatch.clock import Clock, RealClock

# Message types (FZ/messages/include/ZMQDefinitions.h, enum EMessageTypes).
CONFIRM, HELLO, DELETE, LAST, READY, TERMINATE = b"c", b"h", b"d", b"l", b"r", b"x"
RAW_EVENT, EVENT, COMPRESSED, MONITOR, NEW_RUN = b"u", b"w", b"v", b"m", b"n"
STREAM = b""
"""Pseudo type for a frame on a raw (ZMQ_STREAM) socket; empty data = (dis)connect."""

AVERAGE_SIZE = 100
RATE_EVERY = 2000
PEER_RATE_EVERY = 200


class AppExit(Exception):
    """The C++ app would end here (B2FATAL or a failed B2ASSERT); the message says which."""


class Message(NamedTuple):
    """One message between simulated peers. ``size`` stands in for the data frame's length so that
    events need no payload; ``data`` carries real content where it matters (raw packages, the
    identity in a ``d``); ``meta`` is (experiment, run) for histogram messages."""

    type: bytes
    identity: str = ""
    size: int = 0
    data: bytes = b""
    meta: tuple[int, int] | None = None


class Raw(str):
    """A token written verbatim into the JSON (``nan``, ``-nan``, ``inf`` as printf prints them)."""


def identity_str(identity: str | bytes) -> str:
    """ZeroMQ identities are bytes; keep any non-UTF-8 byte round-trippable."""
    if isinstance(identity, bytes):
        return identity.decode("utf-8", "surrogateescape")
    return identity


_ctime_cache: dict[int, str] = {}


def ctime(ts: float) -> str:
    """``std::ctime`` of ``ts``: local time, ``"Tue Jun  4 12:00:07 2024\\n"`` (trailing newline)."""
    sec = int(ts)
    text = _ctime_cache.get(sec)
    if text is None:
        if len(_ctime_cache) > 4096:
            _ctime_cache.clear()
        text = _ctime_cache[sec] = time.ctime(sec) + "\n"
    return text


# boost::property_tree::json_parser::create_escapes: control characters, '"', '\\' and '/' are
# escaped; every byte >= 0x20 otherwise (including DEL and bytes >= 0x80) is written raw.
_ESCAPES = {c: "\\u%04X" % c for c in range(0x20)}
_ESCAPES.update({0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t",
                 0x2F: "\\/", 0x22: '\\"', 0x5C: "\\\\"})
_quoted_cache: dict[str, str] = {}


def quote(value: str) -> str:
    """A JSON string literal escaped the way boost's ``create_escapes`` does it."""
    text = _quoted_cache.get(value)
    if text is None:
        if len(_quoted_cache) > 8192:
            _quoted_cache.clear()
        text = _quoted_cache[value] = '"' + value.translate(_ESCAPES) + '"'
    return text


def render_value(value: int | float | str) -> str:
    """One value as ``ZMQLogger::toJSON`` prints it (``std::to_string`` for numbers)."""
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is float:
        return "%f" % value
    if kind is str:
        return quote(value)
    return value  # Raw


def render_items(items: Sequence[tuple[str, int | float | str]]) -> str:
    """``{"k": v, ...}\\n`` for already sorted items (the slow path, used for fault variants)."""
    return "{" + ", ".join('"' + k + '": ' + render_value(v) for k, v in items) + "}\n"


def byte_order(key: str) -> bytes:
    """Sort key equal to ``std::map<std::string>`` order (unsigned bytes)."""
    return key.encode("utf-8", "surrogateescape")


def assemble(sections: Sequence[tuple[str, str]]) -> str:
    """The whole reply as ``ZMQStandardApp::fillMonitoringJSON`` writes it: each section body ends
    with a newline and sections are joined with ``",\\n"``."""
    return "{\n" + ",\n".join('"' + name + '": ' + body for name, body in sections) + "\n}\n"


class _Average:
    """Mean of the last ``AVERAGE_SIZE`` values with a running sum (sizes are ints, so exact)."""

    __slots__ = ("values", "total")

    def __init__(self) -> None:
        self.values: deque[float] = deque(maxlen=AVERAGE_SIZE)
        self.total = 0.0

    def push(self, values: Sequence[float]) -> float:
        buf = self.values
        total = self.total
        for x in values[-AVERAGE_SIZE:] if len(values) > AVERAGE_SIZE else values:
            if len(buf) == AVERAGE_SIZE:
                total -= buf[0]
            buf.append(x)
            total += x
        self.total = total
        return total / len(buf)


class Logger:
    """``ZMQLogger``: a flat key → value store plus the average/rate helpers, rendered on request.

    Keys are never removed (the C++ ``std::map`` only grows), so the sorted key order is cached and
    rebuilt only when the number of keys changes.
    """

    __slots__ = ("values", "_order", "_count", "_averages", "_rates")

    def __init__(self) -> None:
        self.values: dict[str, int | float | str] = {}
        self._order: list[tuple[str, str]] = []
        self._count = -1
        self._averages: dict[str, _Average] = {}
        self._rates: dict[str, list] = {}

    def log(self, key: str, value: int | float | str) -> None:
        self.values[key] = value

    def increment(self, key: str, n: int = 1) -> None:
        # A missing key default-constructs the variant's first alternative, a long 0.
        self.values[key] = self.values.get(key, 0) + n

    def log_time(self, key: str, ts: float) -> None:
        self.values[key] = ctime(ts)

    def average(self, key: str, values: Sequence[float]) -> None:
        avg = self._averages.get(key)
        if avg is None:
            avg = self._averages[key] = _Average()
        self.values[key] = avg.push(values)

    def timeit(self, key: str, n: int, t0: float, t1: float, every: int = RATE_EVERY) -> None:
        """``timeit<every>`` called ``n`` times, the calls spread evenly over ``(t0, t1]``.

        As in C++ the rate is measured on call 1, every+1, ... as ``every / elapsed``; the first
        elapsed time runs from the clock's epoch, so the first value is ~0. Equal timestamps give
        ``inf`` like the C++ division by zero.
        """
        state = self._rates.get(key)
        if state is None:
            state = self._rates[key] = [0, 0.0, key + "_last_measurement"]
        calls = state[0]
        i = (-calls) % every
        if i < n:
            last = state[1]
            span = t1 - t0
            values = self.values
            while i < n:
                t = t0 + span * (i + 1) / n
                elapsed = t - last
                values[key] = every / elapsed if elapsed > 0 else math.inf
                values[state[2]] = ctime(t)
                last = t
                i += every
            state[1] = last
        state[0] = (calls + n) % every

    def render(self) -> str:
        """``getMonitoringJSON``: ``{"key": value, ...}`` plus the ``std::endl``.

        ``render_value`` is inlined here: this runs for every key of every reply."""
        values = self.values
        if len(values) != self._count:
            keys = sorted(values, key=byte_order)
            self._order = [(k, '"' + k + '": ') for k in keys]
            self._count = len(keys)
        parts = []
        append = parts.append
        for key, prefix in self._order:
            value = values[key]
            kind = type(value)
            if kind is int:
                append(prefix + str(value))
            elif kind is float:
                append(prefix + "%f" % value)
            elif kind is str:
                append(prefix + quote(value))
            else:
                append(prefix + value)
        return "{" + ", ".join(parts) + "}\n"

    def sorted_items(self) -> list[tuple[str, int | float | str]]:
        return [(k, self.values[k]) for k in sorted(self.values, key=byte_order)]


class Connection(Logger):
    """Base of all connections: ``isReady()`` is true unless a subclass says otherwise."""

    __slots__ = ("clock",)

    def __init__(self, clock: Clock | None = None) -> None:
        super().__init__()
        self.clock = clock or RealClock()

    @property
    def is_ready(self) -> bool:
        return True

    def now(self) -> float:
        return self.clock.time()


class MonitorSection(Connection):
    """``ZMQSimpleConnection`` on ``--monitor`` plus what the main loop logs into it."""

    __slots__ = ()

    def __init__(self, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self.log("monitoring_counter", 0)


# --------------------------------------------------------------------------------------- raw


class RawInput(Connection):
    """``ZMQRawInput`` (distributor, inputadapter): a ZMQ_STREAM socket reading length-prefixed
    events from the event builder; the first 32-bit word is the length in words incl. itself."""

    __slots__ = ("peer", "_buffer", "_current")

    def __init__(self, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self.peer = ""
        self._buffer = bytearray()
        self._current = 0
        for key, value in (("data_size", 0.0), ("received_events", 0), ("event_rate", 0.0),
                           ("average_received_byte_packages", 0.0), ("socket_state", "disconnected"),
                           ("socket_connects", 0), ("socket_disconnects", 0), ("current_size", 0),
                           ("write_address", 0), ("average_number_of_events_per_package", 0)):
            self.log(key, value)

    @property
    def connected(self) -> bool:
        return bool(self.peer)

    def on_stream(self, identity: str | bytes, data: bytes) -> list[int]:
        """One STREAM frame pair; returns the sizes of the events it completed."""
        identity = identity_str(identity)
        if self.peer and identity != self.peer:
            raise AppExit("The app can only handle a single connection!")
        if not data:
            if not self.peer:
                self.peer = identity
                self.log("socket_state", "connected")
                self.increment("socket_connects")
            else:
                self.peer = ""
                self.log("socket_state", "disconnected")
                self.increment("socket_disconnects")
            return []
        now = self.now()
        self.average("average_received_byte_packages", (len(data),))
        buf = self._buffer
        buf += data
        self.log("write_address", len(buf))
        sizes = []
        while len(buf) >= 4:
            if self._current == 0:
                (words,) = struct.unpack_from("<i", buf)
                if words <= 0:
                    raise AppExit("Strange size in the data!")
                self._current = words * 4
                self.log("current_size", self._current)
            if len(buf) < self._current:
                break
            size = self._current
            del buf[:size]
            self._current = 0
            self.average("data_size", (size,))
            self.increment("received_events")
            self.timeit("event_rate", 1, now, now)
            self.log("write_address", len(buf))
            self.log("current_size", 0)
            sizes.append(size)
        self.average("average_number_of_events_per_package", (len(sizes),))
        return sizes

    def receive_events(self, sizes: Sequence[int], t0: float, t1: float) -> None:
        """Bulk: each event arrived as one complete package."""
        n = len(sizes)
        if not n:
            return
        self.average("average_received_byte_packages", sizes)
        self.average("data_size", sizes)
        self.increment("received_events", n)
        self.timeit("event_rate", n, t0, t1)
        self.log("write_address", 0)
        self.log("current_size", 0)
        self.average("average_number_of_events_per_package", (1,) * min(n, AVERAGE_SIZE))

    def clear(self) -> None:
        """On ``n``/``x``: forget a partial event (not logged, as in C++)."""
        self._buffer.clear()
        self._current = 0


class RawOutput(Connection):
    """``ZMQRawOutput`` (finalcollector → storage): ready only while the storage is connected.

    ``blocked`` stands for a storage that stopped reading (the simulator's back pressure); the C++
    app would sit in a blocking send instead, which monitoring cannot tell apart from not ready.
    """

    __slots__ = ("peer", "blocked")

    def __init__(self, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self.peer = ""
        self.blocked = False
        for key, value in (("data_size", 0.0), ("sent_events", 0), ("event_rate", 0.0),
                           ("socket_state", "disconnected"), ("socket_connects", 0),
                           ("socket_disconnects", 0)):
            self.log(key, value)

    @property
    def is_ready(self) -> bool:
        return bool(self.peer) and not self.blocked

    def on_stream(self, identity: str | bytes) -> None:
        """The only thing a raw output receives: its peer connecting or disconnecting."""
        identity = identity_str(identity)
        if not self.peer:
            self.peer = identity
            self.log("socket_state", "connected")
            self.increment("socket_connects")
        else:
            if identity != self.peer:
                raise AppExit("The app can only handle a single connection!")
            self.peer = ""
            self.log("socket_state", "disconnected")
            self.increment("socket_disconnects")

    def send_events(self, sizes: Sequence[int], t0: float, t1: float) -> None:
        if not sizes:
            return
        if not self.peer:
            raise AppExit("Data Socket needs to be connected")
        self.average("data_size", sizes)
        self.increment("sent_events", len(sizes))
        self.timeit("event_rate", len(sizes), t0, t1)

    def send_event(self, size: int) -> None:
        now = self.now()
        self.send_events((size,), now, now)


# ------------------------------------------------------------------------------ load balanced


class LoadBalancedOutput(Connection):
    """``ZMQLoadBalancedOutput`` (distributor, collector): a FIFO of credits (one per ``r``).

    ``registered_workers`` counts every identity that ever sent ``r`` and never decreases;
    ``ready_messages[id]`` is that worker's credits still in the queue.
    """

    __slots__ = ("lax", "queue", "workers", "stopped", "terminated", "_keys")

    def __init__(self, clock: Clock | None = None, *, lax: bool = False) -> None:
        super().__init__(clock)
        self.lax = lax
        self.queue: deque[str] = deque()
        self.workers: dict[str, None] = {}
        self.stopped = False
        self.terminated = False
        self._keys: dict[str, tuple[str, str, str, str]] = {}
        for key, value in (("ready_queue_size", 0), ("registered_workers", 0), ("data_size", 0.0),
                           ("dismissed_events", 0), ("event_rate", 0.0), ("sent_events", 0),
                           ("all_stop_messages", 0), ("sent_stop_messages", 0), ("last_stop_sent", ""),
                           ("all_terminate_messages", 0), ("sent_terminate_messages", 0),
                           ("last_terminate_sent", "")):
            self.log(key, value)

    @property
    def is_ready(self) -> bool:
        return self.lax or bool(self.queue)

    def _peer_keys(self, identity: str) -> tuple[str, str, str, str]:
        keys = self._keys.get(identity)
        if keys is None:
            keys = self._keys[identity] = (
                f"ready_messages[{identity}]", f"data_size_to[{identity}]",
                f"sent_events[{identity}]", f"event_rate_to[{identity}]")
        return keys

    def on_ready(self, identity: str | bytes, n: int = 1) -> list[Message]:
        """``n`` ready messages from ``identity``; a worker turning up after a stop or terminate
        gets that message at once (returned)."""
        return self.on_ready_many(((identity_str(identity), n),))

    def on_ready_many(self, credits: Sequence[tuple[str, int]]) -> list[Message]:
        """Ready messages from several workers, fair-queued: one credit of each in turn, as a
        ROUTER reads peers that all have messages waiting."""
        out = []
        queue, workers, values = self.queue, self.workers, self.values
        most = max((n for _, n in credits), default=0)
        if most == 1 or len(credits) == 1:
            for identity, n in credits:
                queue.extend((identity,) * n)
        else:
            for i in range(most):
                queue.extend([identity for identity, n in credits if n > i])
        for identity, n in credits:
            if identity not in workers:
                workers[identity] = None
                if self.stopped:
                    out.append(Message(LAST, identity))
                if self.terminated:
                    out.append(Message(TERMINATE, identity))
            key = self._peer_keys(identity)[0]
            values[key] = values.get(key, 0) + n
        values["ready_queue_size"] = len(queue)
        values["registered_workers"] = len(workers)
        return out

    def broadcast(self, mtype: bytes, now: float | None = None) -> list[Message]:
        """``handleEvent`` of an ``l`` or ``x``: tell every known worker, then dismiss events."""
        now = self.now() if now is None else now
        out = [Message(mtype, w) for w in self.workers]
        word = "stop" if mtype == LAST else "terminate"
        if mtype == LAST:
            self.stopped = True
        else:
            self.terminated = True
        self.log(f"all_{word}_messages", 1)
        self.increment(f"sent_{word}_messages")
        self.log_time(f"last_{word}_sent", now)
        return out

    def send_events(self, sizes: Sequence[int], t0: float, t1: float) -> dict[str, int]:
        """Hand ``len(sizes)`` events to the workers at the front of the queue; returns how many
        each worker got. The caller must not send more events than there are credits."""
        n = len(sizes)
        if not n:
            return {}
        if (self.lax and not self.queue) or self.stopped:
            self.increment("dismissed_events", n)
            return {}
        if n > len(self.queue):
            raise AppExit("Must be > 0")  # the C++ B2ASSERT on an empty ready queue
        pop = self.queue.popleft
        per_worker: dict[str, list[int]] = {}
        for size in sizes:
            ident = pop()
            got = per_worker.get(ident)
            if got is None:
                per_worker[ident] = [size]
            else:
                got.append(size)
        self.average("data_size", sizes)
        self.increment("sent_events", n)
        self.timeit("event_rate", n, t0, t1)
        counts = {}
        values = self.values
        for ident, got in per_worker.items():
            ready, size_key, sent_key, rate_key = self._peer_keys(ident)
            c = len(got)
            counts[ident] = c
            self.average(size_key, got)
            values[sent_key] = values.get(sent_key, 0) + c
            self.timeit(rate_key, c, t0, t1, PEER_RATE_EVERY)
            values[ready] = values.get(ready, 0) - c
        values["ready_queue_size"] = len(self.queue)
        return counts

    def send_event(self, size: int) -> str | None:
        """One event; returns the worker it went to, or None if it was dismissed."""
        now = self.now()
        got = self.send_events((size,), now, now)
        return next(iter(got), None)

    def clear(self) -> None:
        """On ``n``: forget that a stop/terminate was sent."""
        self.stopped = False
        self.terminated = False
        self.log("all_stop_messages", 0)
        self.log("all_terminate_messages", 0)


class LoadBalancedInput(Connection):
    """``ZMQLoadBalancedInput`` (outputadapter, worker mimic, readysender): sends ``bufferSize``
    ``r`` at start and one more per event received."""

    __slots__ = ()

    def __init__(self, clock: Clock | None = None, *, buffer_size: int = 2) -> None:
        super().__init__(clock)
        for key, value in (("sent_ready", 0), ("data_size", 0.0), ("received_events", 0),
                           ("event_rate", 0.0)):
            self.log(key, value)
        self.increment("sent_ready", buffer_size)

    def receive_events(self, sizes: Sequence[int], t0: float, t1: float) -> int:
        """Events received; returns the number of ``r`` sent back."""
        n = len(sizes)
        if n:
            self.increment("sent_ready", n)
            self.average("data_size", sizes)
            self.increment("received_events", n)
            self.timeit("event_rate", n, t0, t1)
        return n

    def on_message(self, mtype: bytes, size: int = 0) -> int:
        if mtype not in (RAW_EVENT, EVENT):
            return 0
        now = self.now()
        return self.receive_events((size,), now, now)


# -------------------------------------------------------------------------------- confirmed


class ConfirmedInput(Connection):
    """``ZMQConfirmedInput`` (collectors, histogram servers): every message is confirmed; ``h``
    registers the sender, ``d`` unregisters the identity in its data frame; a stop (``l``) or
    terminate (``x``) is passed on once every registered sender has sent one."""

    __slots__ = ("registered", "stops", "terminates", "all_stop", "all_terminate", "_keys")

    def __init__(self, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self.registered: set[str] = set()
        self.stops: set[str] = set()
        self.terminates: set[str] = set()
        self.all_stop = False
        self.all_terminate = False
        self._keys: dict[str, tuple[str, ...]] = {}
        for key, value in (
                ("last_received_message", ""), ("total_number_messages", 0), ("registered_workers", 0),
                ("hello_messages", 0), ("dead_workers", 0), ("all_stop_messages", 0),
                ("sent_stop_messages", 0), ("last_stop_sent", ""), ("received_stop_messages", 0),
                ("all_terminate_messages", 0), ("sent_terminate_messages", 0),
                ("last_terminate_sent", ""), ("received_terminate_messages", 0),
                ("received_messages_after_stop", 0), ("last_received_event_message", ""),
                ("last_clear", ""), ("stop_overwrites", 0), ("last_stop_overwrite", ""),
                ("data_size", 0.0), ("received_events", 0), ("event_rate", 0.0)):
            self.log(key, value)

    def _peer_keys(self, identity: str) -> tuple[str, ...]:
        keys = self._keys.get(identity)
        if keys is None:
            keys = self._keys[identity] = (
                f"total_number_messages_from[{identity}]", f"data_size_from[{identity}]",
                f"received_events[{identity}]", f"event_rate_from[{identity}]")
        return keys

    def _complete(self, mtype: bytes, sender: str, now: float) -> Message | None:
        """Pass on a stop/terminate if now every registered sender has sent one."""
        if mtype == LAST:
            if self.all_stop or self.stops != self.registered:
                return None
            self.all_stop = True
            word = "stop"
        else:
            if self.all_terminate or self.terminates != self.registered:
                return None
            self.all_terminate = True
            word = "terminate"
        self.log(f"all_{word}_messages", 1)
        self.increment(f"sent_{word}_messages")
        self.log_time(f"last_{word}_sent", now)
        return Message(mtype, sender)

    def on_message(self, identity: str | bytes, mtype: bytes, data: bytes = b"", *,
                   size: int | None = None, meta: tuple[int, int] | None = None) -> Message | None:
        """One message from ``identity``; returns what the app passes on (an event, or the
        ``l``/``x`` that completed the set), else None. Raises ``AppExit`` where C++ dies."""
        identity = identity_str(identity)
        now = self.now()
        if mtype not in (HELLO, DELETE, LAST, TERMINATE):
            size = len(data) if size is None else size
            self.receive_events(identity, (size,), now, now)
            return Message(mtype, identity, size, data, meta)
        self.log_time("last_received_message", now)
        self.increment("total_number_messages")
        self.increment(self._peer_keys(identity)[0])
        if mtype == HELLO:
            self.registered.add(identity)
            self.log("registered_workers", len(self.registered))
            self.increment("hello_messages")
            self.increment(f"hello_messages_from[{identity}]")
            return None
        if mtype == DELETE:
            killed = identity_str(data)
            self.registered.discard(killed)
            self.log("registered_workers", len(self.registered))
            self.increment("dead_workers")
            self.increment(f"dead_worker_messaged_from[{identity}]")
            if not self.registered:
                return None  # B2ERROR: not a single worker registered anymore
            return self._complete(LAST, killed, now) or self._complete(TERMINATE, killed, now)
        if identity not in self.registered:
            raise AppExit("Worker without proper registration!")
        if mtype == LAST:
            self.stops.add(identity)
            self.log("received_stop_messages", len(self.stops))
            self.increment("total_received_stop_messages")
        else:
            self.terminates.add(identity)
            self.log("received_terminate_messages", len(self.terminates))
            self.increment("total_received_terminate_messages")
        return self._complete(mtype, identity, now)

    def receive_events(self, identity: str, sizes: Sequence[int], t0: float, t1: float) -> None:
        """Bulk: ``len(sizes)`` data messages from one registered sender."""
        n = len(sizes)
        if not n:
            return
        if identity not in self.registered:
            raise AppExit("Worker without proper registration!")
        if self.all_stop:
            raise AppExit("Received an event after having received stop messages from every worker.")
        total_key, size_key, events_key, rate_key = self._peer_keys(identity)
        values = self.values
        self.log_time("last_received_message", t1)
        values["total_number_messages"] += n
        values[total_key] = values.get(total_key, 0) + n
        self.average("data_size", sizes)
        self.average(size_key, sizes)
        values["received_events"] += n
        values[events_key] = values.get(events_key, 0) + n
        self.timeit("event_rate", n, t0, t1)
        self.timeit(rate_key, n, t0, t1, PEER_RATE_EVERY)
        self.log_time("last_received_event_message", t1)

    def clear(self, now: float | None = None) -> None:
        """On ``n``: forget this run's stop/terminate messages."""
        self.stops.clear()
        self.terminates.clear()
        self.all_stop = False
        self.all_terminate = False
        for key in ("received_stop_messages", "all_stop_messages", "received_terminate_messages",
                    "all_terminate_messages"):
            self.log(key, 0)
        self.log_time("last_clear", self.now() if now is None else now)

    def overwrite_stop(self, now: float | None = None) -> Message | None:
        """An external stop while not every sender has stopped: force it (``stop_overwrites``)."""
        if self.all_stop:
            return None
        now = self.now() if now is None else now
        self.increment("stop_overwrites")
        self.log_time("last_stop_overwrite", now)
        self.all_stop = True
        self.log("all_stop_messages", 1)
        self.increment("sent_stop_messages")
        self.log_time("last_stop_sent", now)
        return Message(LAST, "")


class ConfirmedOutput(Connection):
    """``ZMQConfirmedOutput`` (inputadapter, proxycollector, proxy histogram server): says hello on
    construction and waits for each confirmation before the next send; ``sent_events`` counts the
    hello and ``l``/``x`` too. ``identity`` is what the receiving ROUTER sees as the sender."""

    __slots__ = ("identity", "hello")

    def __init__(self, clock: Clock | None = None, *, identity: str = "") -> None:
        super().__init__(clock)
        self.identity = identity
        for key, value in (("no_confirmation_message", 0), ("last_sent_event_message", 0),
                           ("data_size", 0.0), ("sent_events", 0), ("event_rate", 0.0),
                           ("timespan_waiting_for_confirmation", 0)):
            self.log(key, value)
        now = self.now()
        self.log_time("last_hello_sent", now)
        self.hello = self.send(HELLO, 0, now)

    def send(self, mtype: bytes, size: int = 0, now: float | None = None, *,
             meta: tuple[int, int] | None = None) -> Message:
        """``handleEvent``. The receivers in the simulator confirm at once, so no time is spent
        waiting and ``timespan_waiting_for_confirmation`` stays 0."""
        now = self.now() if now is None else now
        self.average("data_size", (size,))
        self.increment("sent_events")
        self.timeit("event_rate", 1, now, now)
        self.log_time("last_sent_event_message", now)
        return Message(mtype, self.identity, size, meta=meta)


# ------------------------------------------------------------------------------- histograms


class _HistogramStore:
    """What ``ZMQHistogramOutput`` keeps besides monitoring: the latest histograms per sender and
    the experiment/run they belong to."""

    __slots__ = ("stored", "meta")

    def __init__(self) -> None:
        self.stored: dict[str, int] = {}
        self.meta: tuple[int, int] | None = None

    def accept(self, msg: Message, uncompressed: int) -> bool:
        """Keep ``msg`` as this sender's latest histograms (``uncompressed`` bytes once unpacked);
        False on an experiment/run mismatch, after which the caller clears everything."""
        if self.meta is not None and msg.meta is not None and msg.meta != self.meta:
            return False
        if msg.meta is not None:
            self.meta = msg.meta
        self.stored[msg.identity] = uncompressed
        return True

    def merged_size(self) -> int:
        # Merging adds bin contents of the same histograms: the size stays that of one set.
        return max(self.stored.values(), default=0)


def _log_merge(conn: Logger, now: float) -> None:
    """The merge bookkeeping both histogram outputs share (``ZMQHistogramOutput::mergeAndSend``)."""
    count = len(conn.store.stored)  # type: ignore[attr-defined]
    conn.increment("histogram_merges")
    conn.log("last_merged_histograms", count)
    conn.average("average_merged_histograms", (float(count),))
    conn.log_time("last_merge", now)


class HistogramProxyOutput(ConfirmedOutput):
    """``ZMQHistogramOutput<ZMQHistoServerToZMQOutput>`` (proxyhistoserver): merged histograms go
    LZ4-compressed over a confirmed output. Its JSON is only the confirmed output's, so the
    bookkeeping keys the wrapper logs on itself (``stored_identities``, ``histogram_clears``, ...)
    are invisible, exactly as in C++."""

    __slots__ = ("store", "compression")

    def __init__(self, clock: Clock | None = None, *, identity: str = "",
                 compression: float = 0.25) -> None:
        super().__init__(clock, identity=identity)
        self.store = _HistogramStore()
        self.compression = compression
        for key, value in (("histogram_merges", 0), ("last_merged_histograms", 0),
                           ("average_merged_histograms", 0), ("last_merge", ""),
                           ("size_before_compression", 0.0), ("size_after_compression", 0.0)):
            self.log(key, value)

    def on_message(self, msg: Message, now: float | None = None) -> list[Message]:
        """An event, stop or terminate passed on by the input; returns what is sent onwards."""
        now = self.now() if now is None else now
        if msg.type in (LAST, TERMINATE):
            out = self.merge_and_send(now)
            out.append(self.send(msg.type, 0, now))
            self.clear(now)
            return out
        if not self.store.accept(msg, int(msg.size / self.compression)):
            self.clear(now)
        return []

    def merge_and_send(self, now: float | None = None) -> list[Message]:
        if not self.store.stored:
            return []
        now = self.now() if now is None else now
        _log_merge(self, now)
        before = self.store.merged_size()
        after = max(1, int(before * self.compression))
        self.average("size_before_compression", (before,))
        self.average("size_after_compression", (after,))
        return [self.send(COMPRESSED, after, now, meta=self.store.meta or (0, 0))]

    def clear(self, now: float | None = None) -> None:
        """``ZMQHistogramOutput::clear``; its ``histogram_clears``/``last_clear`` are not shown."""
        self.store = _HistogramStore()


class HistogramFinalOutput(Connection):
    """``ZMQHistogramOutput<ZMQHistoServerToFileOutput>`` (finalhistoserver): merges into shared
    memory and a ROOT file whose name may contain ``{run_number}``/``{experiment_number}``."""

    __slots__ = ("store", "root_file_name", "expansion")

    def __init__(self, clock: Clock | None = None, *,
                 root_file_name: str = "/dqm/hltdqm_e{experiment_number}r{run_number}.root",
                 expansion: float = 4.0) -> None:
        super().__init__(clock)
        self.store = _HistogramStore()
        self.root_file_name = root_file_name
        self.expansion = expansion
        for key, value in (("histogram_merges", 0), ("last_merged_histograms", 0),
                           ("average_merged_histograms", 0), ("last_merge", ""),
                           ("last_written_file_name", ""), ("memory_file_size", 0),
                           ("uncompressed_size", 0.0), ("stored_identities", 0),
                           ("histogram_clears", 0), ("last_clear", "")):
            self.log(key, value)

    def on_message(self, msg: Message, now: float | None = None) -> list[Message]:
        now = self.now() if now is None else now
        if msg.type in (LAST, TERMINATE):
            self.merge_and_send(now)
            self.clear(now)
            return []
        uncompressed = int(msg.size * self.expansion)
        if not self.store.accept(msg, uncompressed):
            self.increment("different_event_meta_data")
            self.clear(now)
            return []
        self.average("uncompressed_size", (uncompressed,))
        self.log("stored_identities", len(self.store.stored))
        return []

    def merge_and_send(self, now: float | None = None) -> list[Message]:
        if not self.store.stored:
            return []
        now = self.now() if now is None else now
        _log_merge(self, now)
        self.average("memory_file_size", (int(self.store.merged_size() * 0.6),))
        exp, run = self.store.meta or (0, 0)
        self.log("last_written_file_name", self.root_file_name
                 .replace("{run_number}", "%05d" % run)
                 .replace("{experiment_number}", "%04d" % exp))
        return []

    def clear(self, now: float | None = None) -> None:
        self.increment("histogram_clears")
        self.log_time("last_clear", self.now() if now is None else now)
        self.store = _HistogramStore()


__all__ = ["AVERAGE_SIZE", "PEER_RATE_EVERY", "RATE_EVERY", "STREAM", "AppExit", "ConfirmedInput",
           "ConfirmedOutput", "Connection", "HistogramFinalOutput", "HistogramProxyOutput", "LoadBalancedInput",
           "LoadBalancedOutput", "Logger", "Message", "MonitorSection", "Raw", "RawInput", "RawOutput",
           "assemble", "byte_order", "ctime", "identity_str", "quote", "render_items", "render_value"]
