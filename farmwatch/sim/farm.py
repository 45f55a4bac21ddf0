"""Many simulated HLT units in one process, all served by a single thread.

A farm of 20 units with 12 worker nodes each has 320 monitor endpoints; one ``zmq.Poller`` over all
of them keeps that at one server thread. ``dead_fraction`` adds config entries for endpoints that
are configured but down (a worker node that is switched off): loopback ports where nothing
listens, so a client's connect is refused.
"""

from __future__ import annotations

import socket

from farmwatch.clock import Clock
from farmwatch.sim.sockets import MonitorServer, endpoints_toml
from farmwatch.sim.unit import PROXY, SimUnit


class SimFarm:
    """``units`` SimUnits named ``hlt01``, ``hlt02``, ... with distinct worker node names."""

    def __init__(self, units: int = 20, worker_nodes: int = 12, workers_per_node: int = 20,
                 dead_fraction: float = 0.0, *, input_rate: float = 1000.0, clock: Clock | None = None,
                 host: str = "127.0.0.1", seed: int = 0) -> None:
        if not 0.0 <= dead_fraction < 1.0:
            raise ValueError(f"dead_fraction must be in [0, 1), got {dead_fraction}")
        self.host = host
        self.dead_fraction = dead_fraction
        self.units = [SimUnit(f"hlt{i + 1:02d}", worker_nodes=worker_nodes,
                              workers_per_node=workers_per_node, input_rate=input_rate, clock=clock,
                              host=host, seed=seed, first_node=i * worker_nodes + 1)
                      for i in range(units)]
        self._first_dead_node = units * worker_nodes + 1
        self._server: MonitorServer | None = None
        self._dead: list[dict[str, str]] = []
        self._reserved: list[socket.socket] = []

    def start(self) -> SimFarm:
        endpoints = [ep for unit in self.units for ep in unit.monitor_endpoints()]
        self._server = MonitorServer(endpoints, self.host).start()
        live = len(endpoints)
        dead = round(live * self.dead_fraction / (1.0 - self.dead_fraction))
        for i in range(dead):
            self._dead.append({"unit": self.units[i % len(self.units)].name, "app": PROXY,
                               "node": f"hltwk{self._first_dead_node + i:02d}",
                               "address": f"tcp://{self.host}:{self._reserve_port()}"})
        return self

    def _reserve_port(self) -> int:
        """A port where nothing listens. The socket stays bound (without ``listen``) until
        ``stop`` so no other socket can take the port meanwhile; connects are refused."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, 0))
        self._reserved.append(sock)
        return sock.getsockname()[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        for sock in self._reserved:
            sock.close()
        self._reserved.clear()

    def __enter__(self) -> SimFarm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoints(self) -> list[dict[str, str]]:
        """Every unit's endpoints, then the dead ones."""
        return [ep for unit in self.units for ep in unit.endpoints] + [dict(ep) for ep in self._dead]

    @property
    def dead_endpoints(self) -> list[dict[str, str]]:
        return [dict(ep) for ep in self._dead]

    def config_toml(self, source_name: str = "hlt", interval: str = "1s", timeout: str = "500ms") -> str:
        return endpoints_toml(self.endpoints, source_name, interval, timeout)


__all__ = ["SimFarm"]
