"""Talking to simulated monitor endpoints the way the basf2 test support does: a DEALER sends
``[type, data, additional]`` and reads ``[b"c", json, b""]`` back."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from typing import TYPE_CHECKING, Iterator

import pytest
import zmq

if TYPE_CHECKING:
    from farmwatch.sim.ioc import SimIOC

_ctx = zmq.Context.instance()


class Client:
    """One DEALER connected to one monitor socket. Requests and signals on the same client are
    seen by the app in the order they were sent."""

    def __init__(self, address: str) -> None:
        self.sock = _ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(address)

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def recv(self, timeout: float = 2.0) -> list[bytes] | None:
        """The next message, or None if nothing came within ``timeout`` seconds."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return self.sock.recv_multipart()

    def raw(self, timeout: float = 2.0) -> bytes:
        """Ask ``m``; the JSON frame of the one well-formed reply."""
        self.send(b"m", b"", b"")
        frames = self.recv(timeout)
        assert frames is not None, "no reply"
        assert len(frames) == 3 and frames[0] == b"c" and frames[2] == b"", frames[:1]
        return frames[1]

    def monitor(self, timeout: float = 2.0) -> dict:
        return json.loads(self.raw(timeout))

    def flat(self, timeout: float = 2.0) -> dict:
        """``{"section.key": value}`` like ``test_support.assertMonitoring`` builds it."""
        return {f"{section}.{key}": value
                for section, values in self.monitor(timeout).items() for key, value in values.items()}

    def signal(self, mtype: bytes) -> None:
        """Send ``n``/``l``/``x`` (never answered), then a request so the signal has surely been
        handled when this returns."""
        self.send(mtype, b"", b"")
        self.raw()

    def silent(self, timeout: float = 0.3) -> bool:
        """Ask ``m`` and check that no reply comes."""
        self.send(b"m", b"", b"")
        return self.recv(timeout) is None


def request(address: str, timeout: float = 2.0) -> list[bytes] | None:
    """One ``m`` request on a fresh socket; all frames of the first reply (None: no reply)."""
    with Client(address) as client:
        client.send(b"m", b"", b"")
        return client.recv(timeout)


def flat(address: str) -> dict:
    with Client(address) as client:
        return client.flat()


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def real_ioc(purpose: str) -> Iterator["SimIOC"]:
    """A real IOC on a free loopback port, with the CA client environment pointing at it.

    The CA context is process-wide: it is reset before (a context made with other settings would
    not find this IOC) and after, and the environment restored, so other test modules start clean.
    Without epicscorelibs the tests are skipped, except in CI where that is a failure.
    """
    from farmwatch.sim.ioc import SimIOC
    from farmwatch.sources.epics import source as epics_source

    if importlib.util.find_spec("epicscorelibs") is None:
        if IN_CI:
            pytest.fail(f"epicscorelibs is not installed: {purpose} need a real IOC in CI")
        pytest.skip("epicscorelibs is not installed (pip install epicscorelibs): no IOC to test against")
    saved = dict(os.environ)
    epics_source.reset_context()
    sim = SimIOC()
    try:
        sim.start()  # a failure here fails the tests (CI or not): the IOC is part of what is tested
    except Exception:
        sim.close()
        raise
    os.environ.update(sim.ca_env)
    try:
        yield sim
    finally:
        sim.close()
        epics_source.reset_context()
        os.environ.clear()
        os.environ.update(saved)
