"""Elasticsearch: ship log records (and, if configured, samples and alerts) without losing or
duplicating any, and search them back. One job per module: ``config`` (``[elastic]``),
``documents`` (ECS mapping), ``templates``, ``spool``, ``client``, ``search``, ``store``
(``ElasticStore``).

Why ``store`` does its own bulk loop instead of ``elasticsearch.helpers.streaming_bulk``: the
helpers pair response items with actions by position and silently drop the actions a short
response leaves out, retry a per-item 429 only with ``raise_on_error=False`` (elastic/
elasticsearch-py#864) and sleep in real time. Here the official client sends each ``_bulk``
request (``Elasticsearch.bulk``); ``ElasticStore`` decides what happens to every single document:

- indexed (2xx) or already stored (409 on ``create``: the deterministic ``_id`` from
  ``LogRecord.doc_id()`` makes every re-send idempotent, so delivery is at-least-once on the wire
  and exactly-once in the index);
- retried with exponential backoff (whole-request 429/5xx or connection errors, per-item 429/5xx,
  items missing from a short response), re-sending only the documents that failed;
- written to the dead-letter file with the reason (permanent per-document errors such as a
  400 mapping conflict), counted;
- spooled to disk (append-only segment files, bounded) when the cluster stays unreachable, and
  replayed in order, before anything newer, once it answers again — also after a restart.

``write_logs`` returns only when every record is indexed, dead-lettered or spooled (fsynced), and
raises ``SpoolFull`` (a ``StoreError``) when the cluster is unreachable and the spool has no room
for the batch. The batch then counts as not accepted, as a whole: a log source keeps its file
offsets and offers the same lines again later (any of them that did reach the cluster are then
answered 409); callers that cannot re-read their data count them as dropped. Either way the
refusal is counted in ``stats()['dropped']`` and logged once per episode. Refusing beats dropping
here because the log files themselves are a second, larger spool.

Versions: the client's major version must match the cluster's (the 9.x client sends
``compatible-with=9`` media types, which Elasticsearch 8 rejects). ``compatible_with = 8`` makes
the 9.x client talk to an 8.x cluster by rewriting those two headers; ``"none"`` sends plain JSON,
as curl does (any 8.x/9.x cluster, and the OpenSearch-compatible emulator of the interop test).

The names below are imported when first used (PEP 562): reading a config imports ``config`` only,
not the client library.
"""

from farmwatch.lazy import exports

_WHERE = {
    "make_client": "client", "CLIENT_MAJOR": "config", "ElasticConfig": "config",
    "alert_pairs": "documents", "bulk_body": "documents", "log_document": "documents", "log_pairs": "documents",
    "record_from_source": "documents", "sample_pairs": "documents", "search_body": "search", "Spool": "spool",
    "ElasticStore": "store", "SpoolFull": "store",
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = exports(__name__, _WHERE)
