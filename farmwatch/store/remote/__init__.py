"""Remote write: every stored sample also goes to a Prometheus-compatible TSDB, and comes back.

    [remote_write]
    url = "http://vm01:8428/api/v1/write"
    query_url = "http://vm01:8428"

``RemoteWriter`` (``writer``) queues each cycle's samples in the store file (same transaction) and
POSTs them in order; ``naming`` says how series are named there; ``PrometheusReader``
(``reader``) reads them back as the store's DataFrames; ``settings`` is the config section and
``wire`` the protobuf messages. Operations, naming and the scale-out story: docs/remote-write.md.

The names below are imported when first used (PEP 562): reading a config imports ``settings``
only, not the HTTP, protobuf and numpy parts.
"""

from farmwatch.lazy import exports

_WHERE = {
    "Relabel": "naming", "label_name": "naming", "metric_name": "naming", "prometheus_labels": "naming",
    "RemoteWriteSettings": "settings", "RemoteWriter": "writer", "owner": "writer", "writers": "writer",
    "PrometheusReader": "reader", "QueryError": "reader", "open_reader": "reader",
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = exports(__name__, _WHERE)
