"""The monitor sockets of simulated HLT apps: real ROUTER sockets answering the monitoring
protocol (spec ``specs/hlt-zmq-monitoring.md``), served many to a thread.

The server answers only requests: ``n``/``l``/``x`` are signals without reply, anything else gets
one ``c`` reply. ``set_reply`` makes an endpoint misbehave in the ways real apps and networks do.
What answers is an owner: a ``SimUnit`` (its traffic model, ``farmwatch.sim.unit``) or an
``AppHost`` (hand-driven apps, for the conformance tests).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from typing import Iterable, Protocol

import zmq

from farmwatch.sim.apps import SIGNALS, App
from farmwatch.sim.protocol import CONFIRM, Message, Raw, assemble, byte_order, render_items

REPLY_MODES = ("normal", "mute", "garbage", "late", "twice", "huge", "nan", "type_change",
               "unknown_section", "bad_frames", "binary_identity")
GARBAGE = b"\x00\xde\xad\xbe\xef<html>502 Bad Gateway</html> {\"monitor\": "
BINARY_IDENTITY = b"\x00k\x8bEg".decode("utf-8", "surrogateescape")
"""A ZeroMQ auto-generated identity (0x00 + 4 random bytes): a NUL and a byte that is not UTF-8."""

log = logging.getLogger(__name__)


def _nan(app: App, sections: list) -> list[tuple[str, str]]:
    """The first three doubles of input and output print as printf prints NaN and infinity."""
    for name, items in sections[1:]:
        floats = [i for i, (_, v) in enumerate(items) if type(v) is float]
        for i, token in zip(floats, ("nan", "-nan", "inf")):
            items[i] = (items[i][0], Raw(token))
    return []


def _type_change(app: App, sections: list) -> list[tuple[str, str]]:
    """In input and output the first int becomes a double, the second a string (``"0"``)."""
    for name, items in sections[1:]:
        ints = [i for i, (_, v) in enumerate(items) if type(v) is int]
        if ints:
            items[ints[0]] = (items[ints[0]][0], float(items[ints[0]][1]))
        if len(ints) > 1:
            items[ints[1]] = (items[ints[1]][0], str(items[ints[1]][1]))
    return []


def _unknown_section(app: App, sections: list) -> list[tuple[str, str]]:
    """A section and a top-level scalar no app of today sends."""
    return [("debug", '{"loop_iterations": 42, "mode": "sim"}\n'), ("version", "2")]


def _binary_identity(app: App, sections: list) -> list[tuple[str, str]]:
    """A per-peer key of a peer with a ZeroMQ auto identity, written raw as the C++ does."""
    target, family = (("output", "ready_messages") if app.kind == "distributor"
                      else ("input", "total_number_messages_from"))
    for name, items in sections:
        if name == target:
            items.append((f"{family}[{BINARY_IDENTITY}]", 1))
            items.sort(key=lambda kv: byte_order(kv[0]))
    return []


_EDITS = {"nan": _nan, "type_change": _type_change, "unknown_section": _unknown_section,
          "binary_identity": _binary_identity}


def build_reply(app: App, now: float, mode: str = "normal", size: int = 0) -> bytes:
    """The JSON frame ``app`` answers with in reply ``mode`` (the counter moves in every mode)."""
    if mode == "garbage":
        app.answered(now)
        return GARBAGE
    edit = _EDITS.get(mode)
    if edit is None:
        body = app.reply(now)
        if mode == "huge" and len(body) < size:
            body = body[:-2] + b" " * (size - len(body)) + body[-2:]
        return body
    sections = [(name, conn.sorted_items()) for name, conn in app.sections()]
    extra = edit(app, sections)
    text = assemble([(name, render_items(items)) for name, items in sections] + extra)
    app.answered(now)
    return text.encode("utf-8", "surrogateescape")


# -------------------------------------------------------------------------------- server


class _Owner(Protocol):
    def answer(self, key: str, mode: str, size: int) -> bytes | None: ...
    def signal(self, key: str, mtype: bytes) -> None: ...
    def crash(self, key: str, reason: str) -> None: ...


class Endpoint:
    """One monitor socket: the app answering on it and how it answers (see ``set_reply``)."""

    __slots__ = ("owner", "key", "info", "reply")

    def __init__(self, owner: _Owner, key: str, info: dict[str, str]) -> None:
        self.owner = owner
        self.key = key
        self.info = info
        self.reply: tuple[str, float, int] = ("normal", 2.0, 2_000_000)

    def set_reply(self, mode: str, delay: float, size: int) -> None:
        if mode not in REPLY_MODES:
            raise ValueError(f"unknown reply mode {mode!r}; expected one of: {', '.join(REPLY_MODES)}")
        self.reply = (mode, float(delay), int(size))


class MonitorServer:
    """One thread serving many ROUTER sockets through one ``zmq.Poller``, so hundreds of endpoints
    cost one thread. Sockets are bound in ``start`` (ports read back) and used only by the thread."""

    POLL_MS = 50

    def __init__(self, endpoints: list[Endpoint], host: str = "127.0.0.1") -> None:
        self.endpoints = endpoints
        self.host = host
        self._ctx: zmq.Context | None = None
        self._sockets: list[zmq.Socket] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._late: list = []
        self._seq = itertools.count()

    def start(self) -> MonitorServer:
        self._ctx = zmq.Context()
        for ep in self.endpoints:
            sock = self._ctx.socket(zmq.ROUTER)
            sock.linger = 0
            sock.bind(f"tcp://{self.host}:*")
            ep.info["address"] = sock.last_endpoint.decode()
            self._sockets.append(sock)
        self._thread = threading.Thread(target=self._run, name="farmwatch-sim-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        poller = zmq.Poller()
        by_socket = {}
        for sock, ep in zip(self._sockets, self.endpoints):
            poller.register(sock, zmq.POLLIN)
            by_socket[sock] = ep
        try:
            while not self._stopping.is_set():
                wait = self.POLL_MS
                if self._late:
                    wait = max(0, min(wait, int((self._late[0][0] - time.monotonic()) * 1000) + 1))
                for sock, _ in poller.poll(wait):
                    self._drain(sock, by_socket[sock])
                self._send_late()
        finally:
            for sock in self._sockets:
                sock.close(0)
            self._ctx.term()

    def _drain(self, sock: zmq.Socket, ep: Endpoint) -> None:
        for _ in range(64):  # bounded, so one flooded socket cannot starve the others
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(sock, ep, frames)

    def _handle(self, sock: zmq.Socket, ep: Endpoint, frames: list[bytes]) -> None:
        try:
            self._dispatch(sock, ep, frames)
        except Exception:  # a bug behind one endpoint must not silence all the others
            log.exception("simulated %s failed on a request", ep.info)

    def _dispatch(self, sock: zmq.Socket, ep: Endpoint, frames: list[bytes]) -> None:
        if len(frames) != 4:
            # ZMQMessageFactory::fromSocket asserts three frames: B2FATAL, the app exits.
            ep.owner.crash(ep.key, f"expected 3 frames, got {len(frames) - 1}")
            return
        identity, mtype = frames[0], frames[1]
        if mtype in SIGNALS:
            ep.owner.signal(ep.key, mtype)
            return
        mode, delay, _ = ep.reply
        if mode == "mute":
            return
        if mode == "late":
            heapq.heappush(self._late, (time.monotonic() + delay, next(self._seq), sock, ep, identity))
            return
        self._answer(sock, ep, identity)
        if mode == "twice":
            self._answer(sock, ep, identity)

    def _answer(self, sock: zmq.Socket, ep: Endpoint, identity: bytes) -> None:
        mode, _, size = ep.reply
        body = ep.owner.answer(ep.key, mode, size)
        if body is None:
            return
        if mode == "bad_frames":
            sock.send_multipart([identity, CONFIRM, body])
        else:
            sock.send_multipart([identity, CONFIRM, body, b""])

    def _send_late(self) -> None:
        now = time.monotonic()
        while self._late and self._late[0][0] <= now:
            _, _, sock, ep, identity = heapq.heappop(self._late)
            try:
                self._answer(sock, ep, identity)
            except Exception:
                log.exception("simulated %s failed on a late reply", ep.info)


class AppHost:
    """Serves hand-driven app objects on real monitor sockets (conformance tests, experiments).

    Signals arriving at a socket are applied by the server thread; what the app sends because of
    them is collected in ``sent[key]``. Drive the apps from one thread between requests, or hold
    ``lock``.
    """

    def __init__(self, apps: dict[str, App], host: str = "127.0.0.1") -> None:
        self.apps = apps
        self.lock = threading.RLock()
        self.sent: dict[str, list[Message]] = {key: [] for key in apps}
        self._endpoints = {key: Endpoint(self, key, {"app": key}) for key in apps}
        self._server = MonitorServer(list(self._endpoints.values()), host)

    def start(self) -> AppHost:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> AppHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def address(self, key: str) -> str:
        return self._endpoints[key].info["address"]

    def set_reply(self, key: str, mode: str, *, delay: float = 2.0, size: int = 2_000_000) -> None:
        self._endpoints[key].set_reply(mode, delay, size)

    def answer(self, key: str, mode: str, size: int) -> bytes | None:
        with self.lock:
            app = self.apps[key]
            return None if app.exited else build_reply(app, app.clock.time(), mode, size)

    def signal(self, key: str, mtype: bytes) -> None:
        with self.lock:
            self.sent[key] += self.apps[key].signal(mtype)

    def crash(self, key: str, reason: str) -> None:
        with self.lock:
            self.apps[key].exit(reason)


# ------------------------------------------------------------------------ traffic model


def endpoints_toml(endpoints: Iterable[dict[str, str]], source_name: str = "hlt",
                   interval: str = "1s", timeout: str = "500ms") -> str:
    """A ``[sources.<name>]`` block of kind ``hlt_zmq`` listing ``endpoints`` as inline tables."""
    lines = [f"[sources.{source_name}]", 'kind = "hlt_zmq"', f"interval = {json.dumps(interval)}",
             f"timeout = {json.dumps(timeout)}", "endpoints = ["]
    for ep in endpoints:
        lines.append("  { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in ep.items()) + " },")
    lines.append("]")
    return "\n".join(lines) + "\n"


__all__ = ["AppHost", "BINARY_IDENTITY", "Endpoint", "GARBAGE", "MonitorServer", "REPLY_MODES", "build_reply",
           "endpoints_toml"]
