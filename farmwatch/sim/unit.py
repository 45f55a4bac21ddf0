"""One simulated HLT unit: the traffic model behind its monitor sockets (``farmwatch.sim.sockets``).

Topology (spec section 7): event builder → distributor → worker processes on N nodes → collector →
output process → final collector → storage; DQM: workers → one proxy histogram server per node →
final histogram server. Workers and the output process have no monitor socket, so they exist only
as state in the traffic model.

The traffic model is lazy: whenever a reply is built or a fault is injected, it first advances to
the clock's time in steps of at most ``MAX_STEP`` seconds, moving events as counts (per worker,
not per event) through the same connection objects the conformance tests drive message by message.
That keeps a 20-unit farm with thousands of workers cheap enough for one server thread, and it
works the same with ``RealClock`` (real time) and ``SimClock`` (a test advances it).
"""

from __future__ import annotations

import logging
import random
import threading
from contextlib import contextmanager
from typing import Iterable, Iterator, Protocol

from farmwatch.clock import Clock, RealClock
from farmwatch.sim.apps import App, Collector, Distributor, FinalCollector, FinalHistoServer, ProxyHistoServer
from farmwatch.sim.protocol import COMPRESSED, DELETE, HELLO, LAST, NEW_RUN, STREAM, TERMINATE, Message
from farmwatch.sim.sockets import Endpoint, MonitorServer, build_reply, endpoints_toml

UNIT_APPS = ("distributor", "collector", "finalcollector", "finalhistoserver")
PROXY = "proxyhistoserver"

BUFFER_SIZE = 20          # bufferSize of the workers' load-balanced inputs (credits each)
OUTPUT_BUFFER_SIZE = 20   # ... and of the output process behind the collector
ACCEPT_FRACTION = 0.4     # events the HLT keeps
UTILISATION = 0.7         # input rate / processing capacity of all workers
RAW_EVENT_SIZE = 100_000  # bytes per raw event, on average
DQM_INTERVAL = 30         # HLTDQM2ZMQ sendOutInterval (seconds; sent when more than this passed)
EXPERIMENT = 30
MAX_STEP = 1.0            # longest traffic step (seconds) ...
MAX_STEPS = 3600          # ... unless one advance would need more steps than this
MIN_STEP = 0.05           # requests closer together than this see the same traffic state
MAX_ROUNDS = 64           # credit cycles within one step when credits, not capacity, limit
EB_BUFFER_SECONDS = 1.0   # what the event builder holds back while the distributor is not reading
_UNLIMITED = 1 << 62

log = logging.getLogger(__name__)


class Schedule(Protocol):
    """Something that changes a unit over time (a slow fault, the load): ``apply(unit, t)`` runs
    at the start of every traffic step, inside the step, so it may only set state directly
    (``SimUnit.set_speed``, ``SimUnit.input_rate``), never call methods that advance the traffic."""

    def apply(self, unit: SimUnit, t: float) -> None: ...


class _ModelClock:
    """The apps' clock: the step time while the traffic model runs, else the unit's clock, so
    every ``ctime`` the apps log during a step carries the step's time."""

    __slots__ = ("base", "at")

    def __init__(self, base: Clock) -> None:
        self.base = base
        self.at: float | None = None

    def time(self) -> float:
        return self.base.time() if self.at is None else self.at

    def monotonic(self) -> float:
        return self.base.monotonic()


class _Sizes:
    """Event sizes drawn once from the seed and handed out cyclically (cheap, deterministic)."""

    __slots__ = ("table", "pos")

    def __init__(self, table: list[int]) -> None:
        self.table = table
        self.pos = 0

    def take(self, n: int) -> list[int]:
        table, pos = self.table, self.pos
        if pos + n <= len(table):
            out = table[pos:pos + n]
        else:
            out = (table * (n // len(table) + 2))[pos:pos + n]
        self.pos = (pos + n) % len(table)
        return out


class _Worker:
    """One basf2 worker process: its credits live in the distributor's queue; ``inbox`` are
    events sent to it and not yet read; ``blocked`` = an accepted event waits for the collector."""

    __slots__ = ("identity", "node", "rate", "alive", "inbox", "blocked", "capacity", "carry",
                 "accept_carry", "dqm_size", "dqm_last", "stop", "terminate")

    def __init__(self, identity: str, node: str, rate: float, dqm_size: int) -> None:
        self.identity = identity
        self.node = node
        self.rate = rate
        self.alive = True
        self.inbox = 0
        self.blocked = False
        self.capacity = 0.0  # events it can still process in the current step
        self.carry = 0.0
        self.accept_carry = 0.0
        self.dqm_size = dqm_size
        self.dqm_last: float | None = None  # None: the DQM module has not seen an event yet
        self.stop = False
        self.terminate = False


class SimUnit:
    """One HLT unit (see the module docstring). Thread-safe: faults may be injected from any
    thread while the server answers; every change is visible in the next reply.

    ``run`` is the current run number, ``running`` whether the event builder sends (between
    ``stop_run`` and ``start_run`` it does not), ``stalled`` whether ``stall_input`` is on.
    """

    def __init__(self, name: str = "hlt01", *, worker_nodes: int = 4, workers_per_node: int = 8,
                 input_rate: float = 1000.0, clock: Clock | None = None, host: str = "127.0.0.1",
                 seed: int = 0, first_node: int = 1) -> None:
        self.name = name
        self.host = host
        self.input_rate = float(input_rate)
        self.clock = clock or RealClock()
        self.lock = threading.RLock()
        self._rng = random.Random(f"{seed}:{name}")
        self._model = _ModelClock(self.clock)
        self._t = self.clock.time()
        self._server: MonitorServer | None = None
        self.running = True
        self.stalled = False
        self._storage_blocked = False
        self._output_stalled = False
        self._output_loss = 0.0
        self._output_loss_carry = 0.0
        self._lost_output = 0
        self._dqm_off: set[str] = set()
        self.run = 1
        self._meta = (EXPERIMENT, self.run)
        self._eb_backlog = 0
        self._eb_carry = 0.0
        self._eb_capacity = int(self.input_rate * EB_BUFFER_SECONDS) + 1
        self._raw = _Sizes([max(8_000, int(self._rng.gauss(RAW_EVENT_SIZE, 15_000))) // 4 * 4
                            for _ in range(1024)])
        self._out = _Sizes([s + max(0, int(self._rng.gauss(25_000, 5_000))) for s in self._raw.table])

        self._nodes = [f"hltwk{first_node + i:02d}" for i in range(worker_nodes)]
        self._workers: dict[str, list[_Worker]] = {}
        self._parents: dict[str, str] = {}
        rate = self.input_rate / max(1, worker_nodes * workers_per_node) / UTILISATION
        for node in self._nodes:
            pid = self._rng.randrange(2_000, 60_000)
            self._parents[node] = f"{node}_{pid}"
            workers = []
            for _ in range(workers_per_node):
                pid += self._rng.randint(1, 3)
                workers.append(_Worker(f"{node}_{pid}", node, max(1.0, rate * self._rng.uniform(0.8, 1.2)),
                                       self._rng.randrange(150_000, 250_000)))
            self._workers[node] = workers
        self._worker_list = [w for ws in self._workers.values() for w in ws]
        self._full_rate = {w.identity: w.rate for w in self._worker_list}
        self._by_id = {w.identity: w for w in self._worker_list}
        self._ending: set[_Worker] = set()
        out_host = name.replace("hlt", "hltout", 1) if name.startswith("hlt") else name + "out"
        self._op_id = f"{out_host}_{self._rng.randrange(2_000, 60_000)}"
        self._op_inbox = 0
        self._op_signals: list[bytes] = []
        self._schedules: list[Schedule] = []

        self._apps: dict[str, App] = {}
        self._endpoints: dict[str, Endpoint] = {}
        for kind in UNIT_APPS:
            self._endpoints[kind] = Endpoint(self, kind, {"unit": name, "app": kind})
        for node in self._nodes:
            key = self._key(PROXY, node)
            self._endpoints[key] = Endpoint(self, key, {"unit": name, "app": PROXY, "node": node})
        for key in self._endpoints:
            self._start_app(key)

    # ------------------------------------------------------------------- public API

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def workers(self, node: str) -> list[str]:
        """Identities (``<host>_<pid>``) of the worker processes of ``node``, dead ones included."""
        self._key(PROXY, node)  # checks the node
        return [w.identity for w in self._workers[node]]

    @property
    def endpoints(self) -> list[dict[str, str]]:
        """One entry per monitor socket: unit, app, (node,) address. Needs ``start``."""
        if any("address" not in ep.info for ep in self._endpoints.values()):
            raise RuntimeError(f"unit {self.name} is not started: its ports are not bound yet")
        return [dict(ep.info) for ep in self._endpoints.values()]

    def config_toml(self, source_name: str = "hlt", interval: str = "1s", timeout: str = "500ms") -> str:
        return endpoints_toml(self.endpoints, source_name, interval, timeout)

    def monitor_endpoints(self) -> list[Endpoint]:
        """The unit's sockets-to-be, for a server shared by several units (``SimFarm``)."""
        return list(self._endpoints.values())

    def start(self) -> SimUnit:
        """Bind one monitor socket per app on ``tcp://<host>:*`` and serve them from one thread."""
        if self._server is not None or "address" in self._endpoints["distributor"].info:
            raise RuntimeError(f"unit {self.name} was already started (a unit is served once)")
        self._server = MonitorServer(list(self._endpoints.values()), self.host).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> SimUnit:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_reply(self, app: str, mode: str, *, node: str | None = None, delay: float = 2.0,
                  size: int = 2_000_000) -> None:
        """How the endpoint of ``app`` (on ``node`` for a proxy) answers from now on."""
        self._endpoints[self._key(app, node)].set_reply(mode, delay, size)

    def kill_workers(self, node: str, count: int = 1) -> list[str]:
        """Worker processes die (exit code != 0): their parent sends ``d`` to the collector and the
        node's proxy histogram server. The distributor keeps them; events it still sends them on
        their leftover credits vanish. Returns the identities killed."""
        proxy = self._key(PROXY, node)
        with self._at_now():
            victims = [w for w in self._workers[node] if w.alive][:count]
            for w in victims:
                self._kill(w)
            for w in victims:
                d = Message(DELETE, self._parents[node], data=w.identity.encode("utf-8", "surrogateescape"))
                self._send("collector", d)
                self._send(proxy, d)
            return [w.identity for w in victims]

    def kill_node(self, node: str) -> None:
        """The whole node is gone: no ``d`` messages, its workers and proxy fall silent."""
        proxy = self._key(PROXY, node)
        with self._at_now():
            for w in self._workers[node]:
                self._kill(w)
            self._apps[proxy].exit("node down")

    def stall_input(self, on: bool = True) -> None:
        """The event builder sends nothing (``received_events`` of the distributor stops)."""
        with self._at_now():
            self.stalled = on

    def back_pressure(self, on: bool = True) -> None:
        """Storage stops reading: the final collector's output is not ready, the output process,
        collector and workers block in turn, and the distributor's credits drain to 0."""
        with self._at_now():
            self._storage_blocked = on
            self._apps["finalcollector"].output.blocked = on

    def slow_node(self, node: str, factor: float = 0.2) -> None:
        """The worker processes of ``node`` get only ``factor`` of their CPU (thermal throttling,
        a stray job): they return credits more slowly, so the distributor sends them fewer events.
        Nothing else changes in any reply. ``factor = 1`` restores full speed."""
        if not 0 < factor <= 1:
            raise ValueError(f"slow_node factor must be in (0, 1], not {factor!r}")
        self._key(PROXY, node)  # checks the node
        with self._at_now():
            for w in self._workers[node]:
                w.rate = self._full_rate[w.identity] * factor

    def add_schedule(self, schedule: Schedule) -> None:
        """Let ``schedule`` change the unit at every traffic step from now on (time-varying faults
        and load, see ``farmwatch.sim.faults``): a fault that develops over 20 minutes develops
        in 1-second steps however rarely the unit is polled."""
        with self._at_now():
            self._schedules.append(schedule)

    def set_speed(self, node: str, factor: float) -> None:
        """Set the worker processes of ``node`` to ``factor`` of their normal processing speed
        without advancing the traffic first (for schedules, which run inside a traffic step;
        from outside use ``slow_node``). ``factor = 0``: they hang, holding their events."""
        if not factor >= 0:
            raise ValueError(f"set_speed factor must be >= 0, not {factor!r}")
        self._key(PROXY, node)  # checks the node
        for w in self._workers[node]:
            w.rate = self._full_rate[w.identity] * factor

    def stall_output(self, on: bool = True) -> None:
        """The basf2 output process between collector and final collector hangs: it takes no more
        events from the collector and passes nothing on. The final collector's input falls silent
        while its output stays ready; the collector's credits drain, then the chain blocks upstream."""
        with self._at_now():
            self._output_stalled = on

    def drop_output(self, fraction: float = 0.1) -> None:
        """The output process loses ``fraction`` of the events it takes from the collector (it
        returns their credits, but they never reach the final collector). 0 stops the loss."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"drop_output fraction must be in [0, 1], not {fraction!r}")
        with self._at_now():
            self._output_loss = float(fraction)
            self._output_loss_carry = 0.0

    @property
    def lost_output_events(self) -> int:
        """Events ``drop_output`` made vanish so far (what a test expects to be missing)."""
        return self._lost_output

    def stop_dqm(self, on: bool = True, *, node: str | None = None) -> None:
        """The workers' DQM module (HLTDQM2ZMQ) sends no more histograms, on ``node`` or on all
        nodes. Servers keep merging what they hold until the next run start (``n``) clears it;
        after that they have nothing to merge and ``histogram_merges`` stops."""
        nodes = [node] if node is not None else self._nodes
        for n in nodes:
            self._key(PROXY, n)
        with self._at_now():
            for n in nodes:
                (self._dqm_off.add if on else self._dqm_off.discard)(n)

    def restart_app(self, app: str, *, node: str | None = None) -> None:
        """The app's process restarts with all counters at 0 (``monitoring_counter`` too). Its
        peers connect again as at unit start (hello, credits); a restarted proxy gets a new pid,
        so the final histogram server sees a new identity and keeps the old one registered."""
        with self._at_now():
            self._start_app(self._key(app, node))

    def start_run(self) -> None:
        """Run control's START: ``n`` to every app, the event builder sends again (next run)."""
        with self._at_now():
            self.run += 1
            self._meta = (EXPERIMENT, self.run)
            self.running = True
            for key in list(self._apps):
                self._signal(key, NEW_RUN)

    def stop_run(self) -> None:
        """Run control's STOP: the event builder stops and the distributor gets ``l``; after
        ``--stopWaitingTime`` without input it tells the workers, who pass it down the chain."""
        with self._at_now():
            self.running = False
            self._signal("distributor", LAST)

    # ---------------------------------------------------------- endpoint callbacks

    def answer(self, key: str, mode: str, size: int) -> bytes | None:
        with self._at_now() as now:
            app = self._apps[key]
            return None if app.exited else build_reply(app, now, mode, size)

    def signal(self, key: str, mtype: bytes) -> None:
        with self._at_now():
            self._signal(key, mtype)

    def crash(self, key: str, reason: str) -> None:
        with self._at_now():
            self._apps[key].exit(reason)

    # ------------------------------------------------------------------- internals

    def _key(self, app: str, node: str | None = None) -> str:
        if app == PROXY:
            if node not in self._nodes:
                raise ValueError(f"unit {self.name} has no worker node {node!r}; nodes: {', '.join(self._nodes)}")
            return f"{PROXY}@{node}"
        if app not in UNIT_APPS:
            raise ValueError(f"unknown app {app!r}; expected one of: {', '.join(UNIT_APPS + (PROXY,))}")
        return app

    @contextmanager
    def _at_now(self) -> Iterator[float]:
        """Hold the unit lock with the traffic advanced to the clock's current time."""
        with self.lock:
            now = self.clock.time()
            self._advance(now)
            yield now

    def _start_app(self, key: str) -> None:
        """Create the app for ``key`` and let its peers connect to it as they do at unit start."""
        kind, _, node = key.partition("@")
        alive = [w for w in (self._workers[node] if node else self._worker_list) if w.alive]
        if kind == "distributor":
            app = self._apps[key] = Distributor(self._model)
            # Credits + unread events of a worker add up to BUFFER_SIZE; the r's of the unread
            # ones come later.
            app.output.on_ready_many([(w.identity, BUFFER_SIZE - w.inbox) for w in alive
                                      if w.inbox < BUFFER_SIZE])
            self._route(key, app.deliver_raw("eventbuilder", b""))
        elif kind == "collector":
            app = self._apps[key] = Collector(self._model)
            self._route(key, app.output.on_ready(self._op_id, OUTPUT_BUFFER_SIZE))
            for w in alive:
                w.blocked = False  # an event waiting in the old process's socket is lost
                self._send(key, Message(HELLO, w.identity))
        elif kind == "finalcollector":
            app = self._apps[key] = FinalCollector(self._model)
            app.output.blocked = self._storage_blocked
            app.output_message(Message(STREAM, "storage"))
            self._send(key, Message(HELLO, self._op_id))
        elif kind == PROXY:
            pid = self._rng.randrange(2_000, 60_000)
            app = self._apps[key] = ProxyHistoServer(self._model, identity=f"{node}_{pid}")
            app.timer_start -= self._rng.uniform(0, app.timeout)  # processes start at different times
            for w in alive:
                if w.dqm_last is not None:
                    self._send(key, Message(HELLO, w.identity))
            self._route(key, app.start())
        else:
            app = self._apps[key] = FinalHistoServer(self._model)
            app.timer_start -= self._rng.uniform(0, app.timeout)
            for proxy_key in self._endpoints:
                proxy = self._apps.get(proxy_key)
                if isinstance(proxy, ProxyHistoServer) and not proxy.exited:
                    self._send(key, proxy.output.hello)

    def _kill(self, w: _Worker) -> None:
        w.alive = False
        w.inbox = 0
        w.blocked = False
        self._ending.discard(w)

    def _send(self, key: str, msg: Message) -> None:
        app = self._apps[key]
        if not app.exited:
            self._route(key, app.deliver(msg))

    def _signal(self, key: str, mtype: bytes) -> None:
        self._route(key, self._apps[key].signal(mtype))

    def _route(self, source: str, msgs: list[Message]) -> None:
        """Carry what an app sent to whoever is at the other end of that socket."""
        for msg in msgs:
            if source == "distributor":
                w = self._by_id.get(msg.identity)
                if w is None or not w.alive:
                    continue  # a dead worker's messages vanish
                if msg.type == LAST:
                    w.stop = True
                    self._ending.add(w)
                elif msg.type == TERMINATE:
                    w.terminate = True
                    self._ending.add(w)
                else:
                    w.inbox += 1
            elif source == "collector":
                if msg.type in (LAST, TERMINATE):
                    self._op_signals.append(msg.type)
                else:
                    self._op_inbox += 1
            elif source.startswith(PROXY):
                self._send("finalhistoserver", msg)
        if source == "collector" and msgs:
            now = self._model.time()
            self._drain_output_process(now, now)

    def _advance(self, now: float) -> None:
        if now - self._t < MIN_STEP:
            return
        step = max(MAX_STEP, (now - self._t) / MAX_STEPS)
        try:
            while self._t < now:
                t1 = min(now, self._t + step)
                self._model.at = t1
                self._step(self._t, t1)
                self._t = t1
        finally:
            self._model.at = None

    def _fc_reads(self) -> bool:
        fc = self._apps["finalcollector"]
        return not fc.exited and not fc.pending and fc.output.is_ready

    def _op_passes(self) -> bool:
        """The output process hands events on (it is not hung and the final collector reads)."""
        return not self._output_stalled and self._fc_reads()

    def _step(self, t0: float, t1: float) -> None:
        """Move ``t1 - t0`` seconds of traffic, downstream first so freed credits are used.

        Workers first work off what they already hold, then the distributor hands out new
        events on the credits; only if credits (not capacity) held events back does another
        round let the credits cycle within the step. So at the end of a step about one step's
        worth of fresh events is in flight, as with events that are still being processed.
        """
        dt = t1 - t0
        for schedule in self._schedules:
            schedule.apply(self, t0)
        apps = self._apps
        col = apps["collector"]
        self._route("finalcollector", apps["finalcollector"].pump())
        self._drain_output_process(t0, t1)
        self._route("collector", col.pump())

        if col.exited or col.pending or not col.output.is_ready:
            budget = 0
        elif self._op_passes():
            budget = _UNLIMITED  # the output process passes everything on and returns the credits
        else:
            budget = len(col.output.queue)
        if self.running and not self.stalled:
            arriving = self.input_rate * dt + self._eb_carry
            self._eb_carry = arriving - int(arriving)
            self._eb_backlog = min(self._eb_backlog + int(arriving), max(self._eb_capacity, int(arriving)))

        for w in self._worker_list:
            w.capacity = w.rate * dt + w.carry
        accepted: dict[_Worker, int] = {}
        active: dict[_Worker, None] = {}
        for _ in range(MAX_ROUNDS):
            budget = self._process(budget, accepted, active, t1)
            if not self._distribute(t0, t1) or not self._eb_backlog:
                break
        for w in self._worker_list:
            w.carry = min(w.capacity, 1.0) if w.inbox else 0.0

        total = 0
        for w, a in accepted.items():
            if col.receive(w.identity, self._out.take(a), t0, t1):
                total += a
        if total:
            self._collector_forward(total, t0, t1)
        self._dqm(active, t1)
        if self._ending:
            self._end_runs()
        for key, app in list(apps.items()):
            if app.timeout:
                self._route(key, app.tick(t1))

    def _process(self, budget: int, accepted: dict[_Worker, int], active: dict[_Worker, None],
                 t1: float) -> int:
        """Workers read and process events within their remaining capacity; each event read
        returns a credit to the distributor, each accepted one goes to the collector while the
        collector takes them (``budget``), else the worker blocks. Returns the budget left."""
        credits = []
        for w in self._worker_list:
            if not w.alive:
                continue
            if w.blocked:
                if budget <= 0:
                    continue
                budget -= 1
                w.blocked = False
                accepted[w] = accepted.get(w, 0) + 1
            k = min(w.inbox, int(w.capacity))
            if not k:
                continue
            keep = k * ACCEPT_FRACTION + w.accept_carry
            a = int(keep)
            w.accept_carry = keep - a
            if a > budget:  # blocks in the confirmed send of the first event not taken
                a = max(budget, 0)
                k = max(1, min(k, int((a + 1) / ACCEPT_FRACTION)))
                w.blocked = True
                w.accept_carry = 0.0
            budget -= a
            w.inbox -= k
            w.capacity -= k
            credits.append((w.identity, k))
            active[w] = None
            if a:
                accepted[w] = accepted.get(w, 0) + a
        dist = self._apps["distributor"]
        if credits and not dist.exited:
            self._route("distributor", dist.output.on_ready_many(credits))
            dist.last_loop = t1
            self._route("distributor", dist.pump())
        return budget

    def _distribute(self, t0: float, t1: float) -> int:
        """The distributor reads what the event builder holds, as far as credits allow (after a
        stop it reads and dismisses everything). Returns the number of events read."""
        dist = self._apps["distributor"]
        if (not self._eb_backlog or dist.exited or dist.pending or not dist.input.connected
                or not dist.output.is_ready):
            return 0
        n = self._eb_backlog if dist.output.stopped else min(self._eb_backlog, len(dist.output.queue))
        self._eb_backlog -= n
        for identity, count in dist.forward(self._raw.take(n), t0, t1).items():
            w = self._by_id.get(identity)
            if w is not None and w.alive:
                w.inbox += count
        return n

    def _collector_forward(self, n: int, t0: float, t1: float) -> None:
        """The collector hands ``n`` events to the output process."""
        col = self._apps["collector"]
        if col.output.stopped:
            col.output.send_events(self._out.take(n), t0, t1)  # dismissed
            return
        if self._op_passes() and not self._op_inbox:
            # The output process returns each credit as soon as it used it: the same end state
            # as getting the n credits back first and sending afterwards.
            self._route("collector", col.output.on_ready(self._op_id, n))
            col.output.send_events(self._out.take(n), t0, t1)
            self._to_final_collector(n, t0, t1)
            return
        got = col.output.send_events(self._out.take(min(n, len(col.output.queue))), t0, t1)
        self._op_inbox += sum(got.values())
        self._drain_output_process(t0, t1)

    def _to_final_collector(self, n: int, t0: float, t1: float) -> None:
        fc = self._apps["finalcollector"]
        if self._output_loss:
            lost = n * self._output_loss + self._output_loss_carry
            self._output_loss_carry = lost - int(lost)
            self._lost_output += int(lost)
            n -= int(lost)
            if n <= 0:
                return
        sizes = self._out.take(n)
        if fc.receive(self._op_id, sizes, t0, t1):
            fc.output.send_events(sizes, t0, t1)

    def _drain_output_process(self, t0: float, t1: float) -> None:
        """The output process passes its events (then any stop/terminate) to the final collector
        while that one reads, returning one credit to the collector per event."""
        if self._op_inbox and self._op_passes():
            n, self._op_inbox = self._op_inbox, 0
            self._to_final_collector(n, t0, t1)
            col = self._apps["collector"]
            if not col.exited:
                self._route("collector", col.output.on_ready(self._op_id, n))
        while self._op_signals and not self._op_inbox and not self._output_stalled:
            self._send("finalcollector", Message(self._op_signals.pop(0), self._op_id))

    def _dqm(self, active: Iterable[_Worker], t1: float) -> None:
        """HLTDQM2ZMQ runs in event(): hello on the first event, histograms every interval."""
        for w in active:
            if w.node in self._dqm_off:
                continue
            if w.dqm_last is None:
                w.dqm_last = t1
                self._send(self._key(PROXY, w.node), Message(HELLO, w.identity))
            elif int(t1 - w.dqm_last) > DQM_INTERVAL:
                w.dqm_last = t1
                self._send(self._key(PROXY, w.node),
                           Message(COMPRESSED, w.identity, w.dqm_size, meta=self._meta))

    def _end_runs(self) -> None:
        """Workers that were told to stop (or terminate) do so once their queued events are
        done: DQM sends its last histograms and the signal, the output module the signal."""
        for w in list(self._ending):
            if not w.alive:
                self._ending.discard(w)
                continue
            if w.inbox or w.blocked:
                continue
            self._ending.discard(w)
            proxy = self._key(PROXY, w.node)
            for flag, mtype in ((w.stop, LAST), (w.terminate, TERMINATE)):
                if not flag:
                    continue
                if w.dqm_last is not None:
                    if mtype == LAST and w.node not in self._dqm_off:
                        self._send(proxy, Message(COMPRESSED, w.identity, w.dqm_size, meta=self._meta))
                    self._send(proxy, Message(mtype, w.identity))
                self._send("collector", Message(mtype, w.identity))
            w.stop = False
            if w.terminate:
                w.alive = False  # a clean exit: the parent sends no ``d``


__all__ = ["PROXY", "UNIT_APPS", "Schedule", "SimUnit"]
