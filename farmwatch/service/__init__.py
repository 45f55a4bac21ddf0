"""The one service runner: sources polled into the store (``runner``), the lifecycle of a service
(``lifecycle``: signals, reload, systemd watchdog, self-metrics, teardown), what a config builds
(``assemble``) and the three services as jobs (``jobs``: collect, run, watch)."""

__all__: list[str] = []
