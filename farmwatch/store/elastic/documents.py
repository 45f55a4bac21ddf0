"""Elastic Common Schema documents: log records, samples and alerts as ``_bulk`` pairs (action and
source line), and back. The deterministic ``_id`` (``LogRecord.doc_id``) makes every re-send
idempotent."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from itertools import chain
from datetime import datetime
from typing import Any, Iterable, Mapping

import orjson

from farmwatch.model import Alert, Batch, LogRecord

log = logging.getLogger("farmwatch.store.elastic")


ECS_VERSION = "8.11.0"
CORE_FIELDS = frozenset({"@timestamp", "message", "host.name", "service.name", "log.level", "ecs.version"})

Pair = tuple[bytes, bytes]
"""One document as it goes into a ``_bulk`` body: the action line and the source line, each ending in ``\\n``."""


_SECONDS: dict[int, str] = {}
_MISSING = object()


def iso(ts: float) -> str:
    """``@timestamp`` with microseconds, UTC (Elasticsearch keeps the string in ``_source``).

    Formatting a datetime costs more than the rest of a document; records come in runs from the
    same second, so the part up to the second is cached.
    """
    sec = math.floor(ts)
    us = int((ts - sec) * 1e6 + 0.5)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    return f"{_second(sec)}.{us:06d}Z"


def _second(sec: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a whole second (UTC), cached."""
    prefix = _SECONDS.get(sec)
    if prefix is None:
        if len(_SECONDS) > 10_000:
            _SECONDS.clear()
        prefix = _SECONDS[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return prefix


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _day(ts: float) -> str:
    return iso(ts)[:10].replace("-", ".")


def _flatten(obj: Mapping[str, Any], prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {} if out is None else out
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            _flatten(v, name + ".", out)
        else:
            out[name] = v
    return out


def log_document(r: LogRecord) -> dict[str, Any]:
    """The ECS document of one record: core fields plus every field under its ECS name.

    Names stay dotted (``"log.offset": 120``): Elasticsearch maps them exactly like nested objects,
    Elastic's own ecs-logging libraries write them so, and building nested dicts would be the most
    expensive step of shipping a record.
    """
    doc: dict[str, Any] = {
        "@timestamp": iso(r.ts),
        "message": r.message,
        "host.name": r.host,
        "service.name": r.service,
        "log.level": r.level,
        "ecs.version": ECS_VERSION,
    }
    fields = r.fields
    if fields:
        if CORE_FIELDS.isdisjoint(fields):
            doc.update(fields)
        else:
            doc.update((k, v) for k, v in fields.items() if k not in CORE_FIELDS)
    return doc


def record_from_source(src: Mapping[str, Any]) -> LogRecord:
    """The inverse of ``log_document``: a stored ``_source`` back into a LogRecord."""
    flat = _flatten(src)
    ts = parse_iso(str(flat.pop("@timestamp")))
    host = str(flat.pop("host.name", ""))
    service = str(flat.pop("service.name", ""))
    level = str(flat.pop("log.level", ""))
    message = str(flat.pop("message", ""))
    flat.pop("ecs.version", None)
    return LogRecord(ts, host, service, level, message, flat)


def _dumps(obj: object) -> bytes:
    return orjson.dumps(obj, default=str)


def _action(index: str, doc_id: str) -> bytes:
    return b'{"create":{"_index":' + _dumps(index) + b',"_id":' + _dumps(doc_id) + b"}}\n"


def _plain(v: Any) -> Any:
    """What orjson refuses, made JSON: keys to strings, integers beyond 64 bits to strings."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, int) and not isinstance(v, bool) and not -2**63 <= v < 2**64:
        return str(v)
    return v


def log_pairs(records: Iterable[LogRecord], index_prefix: str = "farmwatch", index_mode: str = "data_stream") -> list[Pair]:
    """The ``_bulk`` pairs of ``records``: action line with ``doc_id()``, then ``log_document(r)`` as JSON.

    The shipping hot path (``benchmarks/bench_logs.py``), so the work per record is cut to what
    differs between records; the output is byte for byte what the plain definition gives
    (``log_document`` + ``doc_id`` + one orjson call per line): the time string up to the second,
    the daily index and its action-line head change once per second of log time, the rest of the
    time string is looked up per microsecond value; the ``_id`` of a record read from a file
    hashes a prefix (host and file identity) that the records of that file share, so the hash
    state after the prefix is kept and copied (a fresh ``blake2b`` costs 3x more); the document
    is one dict display, with ``log_document``'s rule for fields named like core fields taken
    only when the length shows such a collision.
    """
    daily = index_mode != "data_stream"
    stream = f"{index_prefix}-logs"
    head = b'{"create":{"_index":' + _dumps(stream) + b',"_id":"'
    heads: dict[str, bytes] = {}
    tails: dict[int, str] = {}  # microseconds → ".uuuuuuZ"
    prefixes: dict[tuple[str, str], Any] = {}  # (host, file identity) → blake2b state after "file\0host\0identity\0"
    last_host = last_ident = state = None
    dumps, floor, blake2b = orjson.dumps, math.floor, hashlib.blake2b
    out: list[Pair] = []
    append = out.append
    last_sec: int | None = None
    second = ""
    for r in records:
        ts = r.ts
        sec = floor(ts)
        us = int((ts - sec) * 1e6 + 0.5)  # exactly iso()'s rounding
        if us >= 1_000_000:
            sec += 1
            us -= 1_000_000
        if sec != last_sec:
            last_sec = sec
            second = _second(sec)
            if daily:
                day = second[:10]
                head = heads.get(day)  # type: ignore[assignment]
                if head is None:
                    head = heads[day] = b'{"create":{"_index":' + _dumps(f"{stream}-{day.replace('-', '.')}") + b',"_id":"'
        tail = tails.get(us)
        if tail is None:
            tail = tails[us] = ".%06dZ" % us
        fields = r.fields
        host = r.host
        offset = fields.get("log.offset", _MISSING)
        if type(offset) is int:  # LogRecord.doc_id() of a record from a file
            ident = fields.get("log.file.fingerprint") or fields.get("log.file.path", "")
            if ident is not last_ident or host is not last_host:
                state = None
                if type(ident) is str:
                    state = prefixes.get((host, ident))
                    if state is None:
                        state = prefixes[(host, ident)] = blake2b(
                            "\0".join(("file", host, ident, "")).encode("utf-8", "surrogatepass"), digest_size=16)
                last_host, last_ident = host, ident
            if state is not None:
                h = state.copy()
                h.update(b"%d" % offset)
                doc_id = h.hexdigest()
            else:
                doc_id = r.doc_id()
        else:
            doc_id = r.doc_id()
        doc = {"@timestamp": second + tail, "message": r.message, "host.name": host,
               "service.name": r.service, "log.level": r.level, "ecs.version": ECS_VERSION, **fields}
        if len(doc) != 6 + len(fields):  # a field named like a core field: the core value wins
            doc = log_document(r)
        try:
            # "+ newline" copies orjson's output into a right-sized object: kept as it comes
            # (over-allocated), 140,000 documents cost 2 page faults each (measured: 3x slower).
            source = dumps(doc, default=str) + b"\n"
        except TypeError:  # orjson.JSONEncodeError: a huge int or a non-string key in a field value
            source = dumps(_plain(doc), default=str) + b"\n"
        append((head + doc_id.encode() + b'"}}\n', source))
    return out


def bulk_body(records: Iterable[LogRecord], *, index_prefix: str = "farmwatch", index_mode: str = "data_stream") -> bytes:
    """The ``_bulk`` NDJSON body for ``records``: exactly what ``ElasticStore.write_logs`` sends.

    Exposed so that ``benchmarks/bench_logs.py`` measures the real serialisation path.
    """
    return b"".join(chain.from_iterable(log_pairs(records, index_prefix, index_mode)))


def sample_pairs(batches: Iterable[Batch], index: str) -> list[Pair]:
    out: list[Pair] = []
    for b in batches:
        stamp = iso(b.ts)
        for s in b.samples():
            doc: dict[str, Any] = {"@timestamp": stamp, "farmwatch": {"series": s.name}, "labels": dict(s.labels)}
            if isinstance(s.value, str):
                doc["farmwatch"]["state"] = s.value
            else:
                doc["farmwatch"]["value"] = s.value
            key = "\0".join([s.name, repr(s.ts), *(f"{k}={v}" for k, v in s.labels)])
            doc_id = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
            out.append((_action(index, doc_id), _dumps(doc) + b"\n"))
    return out


def alert_pairs(alerts: Iterable[Alert], index: str, ts: float) -> list[Pair]:
    """One document per alert state change (id: fingerprint + state + start), for Kibana timelines."""
    out: list[Pair] = []
    for a in alerts:
        known = [t for t in (a.ends_at, a.starts_at, a.active_since) if t is not None and not math.isnan(t)]
        when = known[0] if known else ts  # the latest transition: resolved, firing, pending
        doc = {
            "@timestamp": iso(when),
            "message": a.summary,
            "event": {"kind": "alert", "action": a.state.value},
            "rule": {"name": a.rule},
            "labels": dict(a.labels),
            "farmwatch": {"alert": {"fingerprint": a.fingerprint, "severity": a.severity, "state": a.state.value,
                                    "value": a.value, "description": a.description}},
        }
        doc_id = f"{a.fingerprint}-{a.state.value}-{a.active_since!r}-{a.starts_at!r}"
        out.append((_action(index, doc_id), _dumps(doc) + b"\n"))
    return out


__all__ = ["CORE_FIELDS", "ECS_VERSION", "Pair", "alert_pairs", "bulk_body", "iso", "log_document", "log_pairs", "parse_iso", "record_from_source", "sample_pairs"]
