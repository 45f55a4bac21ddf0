"""Remote write: every stored sample also goes to a Prometheus-compatible TSDB, and comes back.

    [remote_write]
    url = "http://vm01:8428/api/v1/write"
    query_url = "http://vm01:8428"

``RemoteWriter`` queues each cycle's samples in the store file (same transaction) and POSTs them
in order; ``naming`` says how series are named there; ``PrometheusReader``
(``farmwatch.store.remote.reader``) reads them back as the store's DataFrames. Operations, naming
and the scale-out story: docs/remote-write.md.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Sequence

from farmwatch.store.remote.naming import Relabel, label_name, metric_name
from farmwatch.store.remote.settings import RemoteWriteSettings
from farmwatch.store.remote.writer import RemoteWriter

__all__ = ["Relabel", "RemoteWriteSettings", "RemoteWriter", "label_name", "metric_name", "owner", "writers"]


def owner(config: Path | None, sources: Sequence[str]) -> str:
    """The default queue name of a service: its config file and sources, and the host."""
    name = config.stem if config is not None else "farmwatch"
    return f"{name}[{','.join(sorted(sources))}]@{socket.gethostname()}"


def writers(settings: Any, store: Any, sources: Sequence[str]) -> list[RemoteWriter]:
    """The remote writers a service's config asks for (none without ``[remote_write]``), started."""
    cfg: RemoteWriteSettings | None = getattr(settings, "remote_write", None)
    if cfg is None:
        return []
    writer = RemoteWriter(cfg, store, cfg.queue or owner(settings.file, sources))
    writer.start()
    return [writer]
