"""The HLT applications: an input and an output connection driven by ``ZMQStandardApp``'s loop.

What the loop (``HB/apps/include/ZMQApp.details.h``) adds to the connections, and what the
monitoring shows of it:

* the input is read only while the output is ready; messages that arrive meanwhile wait in the
  socket (``pending`` here) and are read, in order, once the output is ready again;
* ``n``/``l``/``x`` at the monitor socket are signals (``signal``), anything else gets the JSON;
* a timer (``--stopWaitingTime`` after an ``l``, the merge interval of the histogram servers)
  fires ``handleTimeout`` and counts ``timeouts``;
* ``waiting_since`` is when the loop last started polling, ``output_state`` whether the output was
  ready then, ``monitoring_counter`` the replies sent before this one.

Message-level methods (``deliver``, ``output_message``, ``signal``, ``tick``) return the messages
the app sent onwards, so a test or the traffic model can route them to the next app. The bulk
methods ``Distributor.forward`` and ``receive`` serve the traffic model and skip the queueing:
their caller only offers what the app would read.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

from farmwatch.clock import Clock, RealClock
from farmwatch.sim.protocol import (
    LAST, NEW_RUN, READY, STREAM, TERMINATE, AppExit, ConfirmedInput, Connection,
    HistogramFinalOutput, HistogramProxyOutput, LoadBalancedOutput, Message, MonitorSection,
    RawInput, RawOutput, assemble, identity_str,
)

SIGNALS = (NEW_RUN, LAST, TERMINATE)
STOP_WAITING_TIME = 2.0
MERGE_INTERVAL = 30.0


class App:
    """Common loop of all apps; subclasses say how input, output, signals and timeouts act."""

    kind = ""
    input_resets_timer = True
    input: Connection
    output: Connection

    def __init__(self, clock: Clock | None = None, *, timeout: float = 0.0,
                 stop_waiting_time: float = STOP_WAITING_TIME) -> None:
        self.clock = clock or RealClock()
        now = self.clock.time()
        self.monitor = MonitorSection(self.clock)
        self.pending: deque[Message] = deque()
        self.exited = False
        self.exit_reason = ""
        self.stop_waiting_time = stop_waiting_time
        self.timeout = timeout
        self.timer_start = now
        self.last_loop = now

    # ---------------------------------------------------------------- message level

    def start(self) -> list[Message]:
        """Messages the app sends when it starts (a confirmed output's hello)."""
        return []

    def deliver(self, msg: Message) -> list[Message]:
        """A message arrives at the input socket."""
        if self.exited:
            return []
        self.pending.append(msg)
        return self.pump()

    def pump(self) -> list[Message]:
        """Read waiting input messages while the output is ready."""
        out: list[Message] = []
        while self.pending and self.output.is_ready and not self.exited:
            now = self.clock.time()
            out += self._guard(self.handle_input, self.pending.popleft(), now)
            self.last_loop = now
        return out

    def output_message(self, msg: Message) -> list[Message]:
        """A message at the output socket: ``r`` for a load-balanced output, a (dis)connect frame
        for a raw one. The output may be ready now, so waiting input is read too."""
        if self.exited:
            return []
        now = self.clock.time()
        out = self._guard(self.handle_output, msg, now)
        self.last_loop = now
        return out + self.pump()

    def signal(self, mtype: bytes) -> list[Message]:
        """``n``, ``l`` or ``x`` at the monitor socket (never answered)."""
        if self.exited:
            return []
        now = self.clock.time()
        out = self._guard(self.handle_signal, mtype, now)
        self.last_loop = now
        return out + self.pump()

    def tick(self, now: float) -> list[Message]:
        """Fire every timer expiry up to ``now``."""
        out: list[Message] = []
        while self.timeout and not self.exited and now >= self.timer_start + self.timeout:
            at = self.timer_start + self.timeout
            self.monitor.increment("timeouts")
            out += self._guard(self.handle_timeout, at)
            self.timer_start = at
            self.last_loop = max(self.last_loop, at)
        return out

    def exit(self, reason: str) -> None:
        """The process ends: nothing is read or answered any more."""
        self.exited = True
        self.exit_reason = reason

    def _guard(self, handler, *args) -> list[Message]:
        try:
            return handler(*args)
        except AppExit as error:
            self.exit(str(error))
            return []

    # ------------------------------------------------------------------- monitoring

    def sections(self) -> list[tuple[str, Connection]]:
        """The reply's sections, with the loop's own values brought up to date."""
        self.monitor.log("output_state", "ready" if self.output.is_ready else "not_ready")
        self.monitor.log_time("waiting_since", self.last_loop)
        return [("monitor", self.monitor), ("input", self.input), ("output", self.output)]

    def answered(self, now: float) -> None:
        """Bookkeeping after a reply went out: the counter, and the loop polls again."""
        self.monitor.increment("monitoring_counter")
        self.last_loop = now

    def reply(self, now: float | None = None) -> bytes:
        """The monitoring JSON for one request, byte for byte as the C++ app sends it."""
        now = self.clock.time() if now is None else now
        text = assemble([(name, conn.render()) for name, conn in self.sections()])
        self.answered(now)
        return text.encode("utf-8", "surrogateescape")

    # ----------------------------------------------------------------- to override

    def reset_timer(self, now: float) -> None:
        self.timer_start = now

    def arm_stop_timer(self, now: float) -> None:
        self.timeout = self.stop_waiting_time
        self.reset_timer(now)

    def handle_input(self, msg: Message, now: float) -> list[Message]:
        raise NotImplementedError

    def handle_output(self, msg: Message, now: float) -> list[Message]:
        raise AppExit("There should be no data coming here!")

    def handle_signal(self, mtype: bytes, now: float) -> list[Message]:
        return []

    def handle_timeout(self, at: float) -> list[Message]:
        return []


class Distributor(App):
    """``b2hlt_distributor``: raw events from the event builder → credits of the workers."""

    kind = "distributor"

    def __init__(self, clock: Clock | None = None, *, stop_waiting_time: float = STOP_WAITING_TIME,
                 lax: bool = False) -> None:
        super().__init__(clock, stop_waiting_time=stop_waiting_time)
        self.input = RawInput(self.clock)
        self.output = LoadBalancedOutput(self.clock, lax=lax)
        self._held: deque[int] = deque()

    def deliver_raw(self, identity: str | bytes, data: bytes) -> list[Message]:
        """A STREAM frame from the event builder (``b""`` = it connected or disconnected)."""
        return self.deliver(Message(STREAM, identity_str(identity), len(data), data))

    def pump(self) -> list[Message]:
        # Events of an already read package go first; the C++ loop polls only output and
        # monitor until they are sent.
        out = self._send_held(self.clock.time()) if self._held else []
        return out + super().pump()

    def _send_held(self, now: float) -> list[Message]:
        out = []
        while self._held and self.output.is_ready:
            size = self._held.popleft()
            self.reset_timer(now)
            worker = self.output.send_event(size)
            if worker is not None:
                out.append(Message(b"u", worker, size))
        return out

    def handle_input(self, msg: Message, now: float) -> list[Message]:
        self._held.extend(self.input.on_stream(msg.identity, msg.data))
        return self._send_held(now)

    def handle_output(self, msg: Message, now: float) -> list[Message]:
        if msg.type != READY:
            raise AppExit("Should be a ready message")
        return self.output.on_ready(msg.identity)

    def handle_signal(self, mtype: bytes, now: float) -> list[Message]:
        if mtype == NEW_RUN:
            self.input.clear()
            self.output.clear()
        elif mtype == LAST:
            self.arm_stop_timer(now)
        elif mtype == TERMINATE:
            out = self.output.broadcast(TERMINATE, now)
            self.input.clear()
            self.exit("terminated")
            return out
        return []

    def handle_timeout(self, at: float) -> list[Message]:
        self.timeout = 0.0
        return self.output.broadcast(LAST, at)

    def forward(self, sizes: Sequence[int], t0: float, t1: float) -> dict[str, int]:
        """Bulk: read ``sizes`` events (one package each) and hand them to the workers; returns
        how many each worker got (none once a stop was sent: they are dismissed)."""
        self.input.receive_events(sizes, t0, t1)
        got = self.output.send_events(sizes, t0, t1)
        self.reset_timer(t1)
        self.last_loop = t1
        return got


class _ConfirmedInputApp(App):
    """Apps whose input is a confirmed input (collectors, histogram servers)."""

    input: ConfirmedInput

    def read(self, msg: Message, now: float) -> Message | None:
        passed = self.input.on_message(msg.identity, msg.type, msg.data, size=msg.size, meta=msg.meta)
        if self.input_resets_timer:
            self.reset_timer(now)
        return passed

    def receive(self, identity: str, sizes: Sequence[int], t0: float, t1: float) -> bool:
        """Bulk: ``sizes`` events from one sender are read (and confirmed). False if that ended
        the app (an unregistered sender, or events after the stop)."""
        try:
            self.input.receive_events(identity, sizes, t0, t1)
        except AppExit as error:
            self.exit(str(error))
            return False
        if self.input_resets_timer:
            self.reset_timer(t1)
        self.last_loop = t1
        return True


class Collector(_ConfirmedInputApp):
    """``b2hlt_collector``: events from all worker processes → the output process(es)."""

    kind = "collector"

    def __init__(self, clock: Clock | None = None, *, stop_waiting_time: float = STOP_WAITING_TIME,
                 lax: bool = False) -> None:
        super().__init__(clock, stop_waiting_time=stop_waiting_time)
        self.input = ConfirmedInput(self.clock)
        self.output = LoadBalancedOutput(self.clock, lax=lax)

    def handle_input(self, msg: Message, now: float) -> list[Message]:
        passed = self.read(msg, now)
        if passed is None:
            return []
        if passed.type in (LAST, TERMINATE):
            out = self.output.broadcast(passed.type, now)
            if passed.type == TERMINATE:
                self.exit("terminated")
            return out
        worker = self.output.send_event(passed.size)
        return [Message(passed.type, worker, passed.size)] if worker is not None else []

    def handle_output(self, msg: Message, now: float) -> list[Message]:
        if msg.type != READY:
            raise AppExit("Should be a ready message")
        return self.output.on_ready(msg.identity)

    def handle_signal(self, mtype: bytes, now: float) -> list[Message]:
        if mtype == NEW_RUN:
            self.input.clear(now)
            self.output.clear()
        elif mtype == LAST:
            self.arm_stop_timer(now)
        return []

    def handle_timeout(self, at: float) -> list[Message]:
        self.timeout = 0.0
        forced = self.input.overwrite_stop(at)
        return self.output.broadcast(LAST, at) if forced else []


class FinalCollector(_ConfirmedInputApp):
    """``b2hlt_finalcollector``: events from the output process → raw stream to storage. Stop and
    terminate are not passed to storage; a forced stop only sets the flag."""

    kind = "finalcollector"

    def __init__(self, clock: Clock | None = None, *,
                 stop_waiting_time: float = STOP_WAITING_TIME) -> None:
        super().__init__(clock, stop_waiting_time=stop_waiting_time)
        self.input = ConfirmedInput(self.clock)
        self.output = RawOutput(self.clock)

    def handle_input(self, msg: Message, now: float) -> list[Message]:
        passed = self.read(msg, now)
        if passed is None:
            return []
        if passed.type == TERMINATE:
            self.exit("terminated")
            return []
        if passed.type == LAST:
            return []
        self.output.send_event(passed.size)
        return [Message(passed.type, self.output.peer, passed.size)]

    def handle_output(self, msg: Message, now: float) -> list[Message]:
        self.output.on_stream(msg.identity)
        return []

    def handle_signal(self, mtype: bytes, now: float) -> list[Message]:
        if mtype == NEW_RUN:
            self.input.clear(now)
        elif mtype == LAST:
            self.arm_stop_timer(now)
        return []

    def handle_timeout(self, at: float) -> list[Message]:
        self.timeout = 0.0
        self.input.overwrite_stop(at)
        return []


class _HistogramServer(_ConfirmedInputApp):
    """Histogram servers merge on a fixed timer that input does not reset; ``l`` at the monitor
    forces the stop and a final merge; ``n`` clears input and histograms."""

    input_resets_timer = False
    output: HistogramProxyOutput | HistogramFinalOutput

    def __init__(self, clock: Clock | None = None, *, merge_interval: float = MERGE_INTERVAL) -> None:
        super().__init__(clock, timeout=merge_interval)
        self.input = ConfirmedInput(self.clock)

    def handle_input(self, msg: Message, now: float) -> list[Message]:
        passed = self.read(msg, now)
        if passed is None:
            return []
        out = self.output.on_message(passed, now)
        if passed.type == TERMINATE:
            self.exit("terminated")
        return out

    def handle_signal(self, mtype: bytes, now: float) -> list[Message]:
        if mtype == NEW_RUN:
            self.input.clear(now)
            self.output.clear(now)
        elif mtype == LAST:
            forced = self.input.overwrite_stop(now)
            if forced:
                return self.output.on_message(forced, now)
        return []

    def handle_timeout(self, at: float) -> list[Message]:
        return self.output.merge_and_send(at)


class ProxyHistoServer(_HistogramServer):
    """``b2hlt_proxyhistoserver`` (one per worker node): merged histograms go on to the final
    histogram server over a confirmed output; ``identity`` is what that server sees."""

    kind = "proxyhistoserver"

    def __init__(self, clock: Clock | None = None, *, identity: str = "",
                 merge_interval: float = MERGE_INTERVAL) -> None:
        super().__init__(clock, merge_interval=merge_interval)
        self.output = HistogramProxyOutput(self.clock, identity=identity)

    def start(self) -> list[Message]:
        return [self.output.hello]


class FinalHistoServer(_HistogramServer):
    """``b2hlt_finalhistoserver``: merges into shared memory and a ROOT file."""

    kind = "finalhistoserver"

    def __init__(self, clock: Clock | None = None, *, merge_interval: float = MERGE_INTERVAL,
                 root_file_name: str = "/dqm/hltdqm_e{experiment_number}r{run_number}.root") -> None:
        super().__init__(clock, merge_interval=merge_interval)
        self.output = HistogramFinalOutput(self.clock, root_file_name=root_file_name)


APPS: dict[str, type[App]] = {cls.kind: cls for cls in
                              (Distributor, Collector, FinalCollector, ProxyHistoServer, FinalHistoServer)}


__all__ = ["APPS", "MERGE_INTERVAL", "SIGNALS", "STOP_WAITING_TIME", "App", "Collector", "Distributor",
           "FinalCollector", "FinalHistoServer", "ProxyHistoServer"]
