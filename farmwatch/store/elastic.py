"""Ship log records (and, if configured, samples and alerts) to Elasticsearch without losing or
duplicating any, and search them back.

Why this module does its own bulk loop instead of ``elasticsearch.helpers.streaming_bulk``: the
helpers pair response items with actions by position and silently drop the actions a short
response leaves out, retry a per-item 429 only with ``raise_on_error=False`` (elastic/
elasticsearch-py#864) and sleep in real time. Here the official client sends each ``_bulk``
request (``Elasticsearch.bulk``); this module decides what happens to every single document:

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
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from itertools import chain
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

import elasticsearch
import orjson
from elastic_transport import HttpHeaders, TransportError, Urllib3HttpNode
from elasticsearch import ApiError, Elasticsearch, UnsupportedProductError
from pydantic import ByteSize, Field, field_validator, model_validator

from farmwatch.clock import Clock, RealClock
from farmwatch.config.base import Duration, Section
from farmwatch.model import Alert, Batch, LogRecord
from farmwatch.credentials import SecretError, secret
from farmwatch.store.sqlite import StoreError

log = logging.getLogger("farmwatch.store.elastic")

CLIENT_MAJOR = int(elasticsearch.__versionstr__.split(".")[0])
ECS_VERSION = "8.11.0"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
"""Statuses (whole request or per item) worth sending again: the cluster is busy or failing over."""
CORE_FIELDS = frozenset({"@timestamp", "message", "host.name", "service.name", "log.level", "ecs.version"})

Pair = tuple[bytes, bytes]
"""One document as it goes into a ``_bulk`` body: the action line and the source line, each ending in ``\\n``."""


class SpoolFull(StoreError):
    """The cluster is unreachable and the spool has no room: none of the batch was accepted."""

    def __init__(self, message: str, not_accepted: int) -> None:
        super().__init__(message)
        self.not_accepted = not_accepted


class ElasticConfig(Section):
    """The ``[elastic]`` section. Credentials only via ``*_env`` (variable name) or ``*_file`` (path)."""

    hosts: list[str] = Field(default_factory=lambda: ["http://localhost:9200"], min_length=1)
    index_prefix: str = "farmwatch"
    """Logs go to ``<prefix>-logs`` (data stream) or ``<prefix>-logs-YYYY.MM.DD`` (daily, UTC)."""
    index_mode: Literal["data_stream", "daily"] = "data_stream"
    compatible_with: Literal[8, 9, "none"] = 9 if CLIENT_MAJOR >= 9 else 8
    """API compatibility the client asks for: the cluster's major version (``"none"``: plain JSON)."""
    api_key_env: str | None = None
    api_key_file: Path | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    verify_certs: bool = True
    timeout: Duration = Field(default=10.0, gt=0)
    bulk_docs: int = Field(default=1000, ge=1)
    bulk_bytes: ByteSize = Field(default=ByteSize(5 * 1024 * 1024), ge=1024)
    retries: int = Field(default=3, ge=0)
    """Re-sends of failed documents before the rest goes to the spool."""
    backoff: Duration = Field(default=0.5, gt=0)
    backoff_max: Duration = Field(default=30.0, gt=0)
    retry_interval: Duration = Field(default=30.0, gt=0)
    """While the cluster is unreachable: how often the spool replay is tried (new data is spooled meanwhile)."""
    replay_budget: Duration = Field(default=5.0, gt=0)
    """Longest one write spends replaying the spool before it returns (the rest continues next call),
    so a large backlog does not stall the caller."""
    spool_dir: Path = Path("elastic-spool")
    spool_max_bytes: ByteSize = Field(default=ByteSize(1024**3), ge=4096)
    spool_segment_bytes: ByteSize = Field(default=ByteSize(16 * 1024 * 1024), ge=1024)
    fsync: Literal["always", "never"] = "always"
    """``always``: a spooled batch is on disk (fsync) before ``write_logs`` returns."""
    dead_letter: Path = Path("elastic-dead-letter.ndjson")
    ship: list[Literal["logs", "samples", "alerts"]] = Field(default_factory=lambda: ["logs"])
    manage_templates: bool = True
    """Install the index templates at the first connection (off where admins manage them)."""
    template_priority: int = Field(default=200, ge=0)
    """Above the built-in ``logs-*-*``/``metrics-*-*`` templates (100)."""

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for h in value:
            if not re.match(r"^https?://[^/@\s]+(:\d+)?(/.*)?$", h) or "@" in h.split("/")[2]:
                raise ValueError(f"{h!r} is not a URL like 'https://es01:9200' (credentials never go "
                                 "into the URL: use api_key_env/api_key_file or username with password_env/password_file)")
        return value

    @field_validator("index_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", value):
            raise ValueError(f"index_prefix must be lowercase letters, digits, '.', '_' or '-', starting with a letter or digit (got {value!r})")
        return value

    @model_validator(mode="after")
    def _auth(self) -> "ElasticConfig":
        if self.api_key_env and self.api_key_file:
            raise ValueError("give the API key either as api_key_env or as api_key_file, not both")
        if self.password_env and self.password_file:
            raise ValueError("give the password either as password_env or as password_file, not both")
        basic = self.username is not None
        if basic and not (self.password_env or self.password_file):
            raise ValueError("username needs password_env or password_file")
        if not basic and (self.password_env or self.password_file):
            raise ValueError("password_env/password_file need username")
        if basic and (self.api_key_env or self.api_key_file):
            raise ValueError("use either an API key or username/password, not both")
        return self

    def resolved(self, base_dir: Path) -> "ElasticConfig":
        """Relative paths (spool, dead letters, CA, secret files) made relative to the config file's folder."""
        update = {}
        for key in ("spool_dir", "dead_letter", "ca_file", "api_key_file", "password_file"):
            p = getattr(self, key)
            if p is not None and not p.is_absolute():
                update[key] = base_dir / p
        return self.model_copy(update=update)


# ---------------------------------------------------------------------------------------------
# Documents


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


# ---------------------------------------------------------------------------------------------
# Index templates

_KEYWORD = {"type": "keyword", "ignore_above": 1024}


def component_templates(prefix: str) -> dict[str, dict[str, Any]]:
    """Mappings shared by every farmwatch index (``base``) and those of log documents (``logs``)."""
    base = {
        "template": {
            "mappings": {
                "dynamic_templates": [
                    {"labels": {"path_match": "labels.*", "mapping": {"type": "keyword"}}},
                    {"strings_as_keyword": {"match_mapping_type": "string", "mapping": _KEYWORD}},
                ],
                "properties": {
                    "@timestamp": {"type": "date"},
                    "ecs": {"properties": {"version": {"type": "keyword"}}},
                    "host": {"properties": {"name": {"type": "keyword"}}},
                    "service": {"properties": {"name": {"type": "keyword"}}},
                    "labels": {"type": "object"},
                    "message": {"type": "text"},
                },
            }
        },
        "_meta": {"managed_by": "farmwatch"},
    }
    logs = {
        "template": {
            "mappings": {
                "properties": {
                    "log": {"properties": {
                        "level": {"type": "keyword"},
                        "logger": {"type": "keyword"},
                        "offset": {"type": "long"},
                        "file": {"properties": {"path": {"type": "keyword"}, "fingerprint": {"type": "keyword"}}},
                        "origin": {"properties": {"function": {"type": "keyword"}, "file": {"properties": {
                            "name": {"type": "keyword"}, "line": {"type": "long"}}}}},
                    }},
                    "process": {"properties": {"pid": {"type": "long"}, "name": {"type": "keyword"}}},
                    "event": {"properties": {
                        "original": {"type": "keyword", "index": False, "doc_values": False},
                        "dataset": {"type": "keyword"},
                        "module": {"type": "keyword"},
                    }},
                    "error": {"properties": {"message": {"type": "text"}, "type": {"type": "keyword"},
                                             "stack_trace": {"type": "keyword", "index": False, "doc_values": False}}},
                }
            }
        },
        "_meta": {"managed_by": "farmwatch"},
    }
    return {f"{prefix}-base": base, f"{prefix}-logs-mappings": logs}


def index_templates(prefix: str, mode: str, priority: int) -> dict[str, dict[str, Any]]:
    """One composable template per kind of document; data streams need ``data_stream: {}``."""
    out = {}
    for kind in ("logs", "samples", "alerts"):
        body: dict[str, Any] = {
            "index_patterns": [f"{prefix}-{kind}*"],
            "priority": priority,
            "composed_of": [f"{prefix}-base"] + ([f"{prefix}-logs-mappings"] if kind == "logs" else []),
            "_meta": {"managed_by": "farmwatch"},
        }
        if mode == "data_stream":
            body["data_stream"] = {}
        out[f"{prefix}-{kind}"] = body
    return out


# ---------------------------------------------------------------------------------------------
# Spool


class Spool:
    """Bounded, append-only segment files holding ``_bulk`` pairs, oldest first; survives restarts.

    A segment is ``<seq>.ndjson`` with action and source lines exactly as sent. Replay reads the
    oldest segment, and afterwards deletes it or rewrites it (atomically, by rename) with what is
    still undelivered. A torn last write after a crash (no final newline, or an action without its
    source) is discarded and counted in ``torn``.
    """

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int, fsync: bool) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.torn = 0
        self._repair()
        self.bytes = sum(p.stat().st_size for p in self.segments())
        self.docs = sum(self._count(p) for p in self.segments())

    def _repair(self) -> None:
        """Cut a torn tail off the newest segment, so that appends after a crash stay aligned."""
        segs = self.segments()
        if not segs:
            return
        pairs = self.read(segs[-1])
        data = b"".join(a + s for a, s in pairs)
        if len(data) != segs[-1].stat().st_size:
            log.warning("elastic: spool segment %s ends with an incomplete write (a crash?); cut back to %d complete documents",
                        segs[-1], len(pairs))
            with open(segs[-1], "r+b") as f:
                f.truncate(len(data))
                os.fsync(f.fileno())

    def segments(self) -> list[Path]:
        """Segment files, oldest first (none while the directory does not exist: it is made on first use)."""
        return sorted(p for p in self.dir.glob("*.ndjson") if p.stem.isdigit())

    @staticmethod
    def _count(path: Path) -> int:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) // 2

    def __len__(self) -> int:
        return self.docs

    def room(self, nbytes: int) -> bool:
        return self.bytes + nbytes <= self.max_bytes

    def append(self, pairs: Sequence[Pair]) -> None:
        """Add ``pairs`` at the end (the caller checked ``room``)."""
        data = b"".join(a + s for a, s in pairs)
        self.dir.mkdir(parents=True, exist_ok=True)
        segs = self.segments()
        new = not segs or segs[-1].stat().st_size >= self.segment_bytes
        path = self.dir / f"{int(segs[-1].stem) + 1 if segs else 1:012d}.ndjson" if new else segs[-1]
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        if new and self.fsync:
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.bytes += len(data)
        self.docs += len(pairs)

    def read(self, path: Path) -> list[Pair]:
        data = path.read_bytes()
        lines = data.split(b"\n")
        torn = bool(lines[-1])  # a last line without its newline: the write was cut off
        lines = lines[:-1]
        if len(lines) % 2:  # an action without its source
            torn = True
            lines = lines[:-1]
        self.torn += torn
        return [(lines[i] + b"\n", lines[i + 1] + b"\n") for i in range(0, len(lines), 2)]

    def replace(self, path: Path, old: Sequence[Pair], remaining: Sequence[Pair]) -> None:
        """Record that ``old`` (the segment's content) has been reduced to ``remaining``."""
        before = path.stat().st_size
        if remaining:
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(b"".join(a + s for a, s in remaining))
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            after = path.stat().st_size
        else:
            path.unlink()
            after = 0
        self.bytes -= before - after
        self.docs -= len(old) - len(remaining)


# ---------------------------------------------------------------------------------------------
# Transport details


_COMPAT = re.compile(r"application/vnd\.elasticsearch\+([\w.-]+);\s*compatible-with=\d+")


def _node_class(compatible_with: int | str) -> type[Urllib3HttpNode] | None:
    """A node that rewrites the client's ``compatible-with=<client major>`` media types.

    The client adds them after every user-supplied header, so the rewrite must happen in the node.
    """
    if compatible_with == CLIENT_MAJOR:
        return None
    repl = r"application/\1" if compatible_with == "none" else rf"application/vnd.elasticsearch+\1; compatible-with={compatible_with}"

    class CompatNode(Urllib3HttpNode):
        def perform_request(self, method: str, target: str, body: bytes | None = None,
                            headers: HttpHeaders | None = None, **kw: Any) -> Any:
            if headers:
                headers = HttpHeaders(dict(headers.items()))
                for name in ("accept", "content-type"):
                    value = headers.get(name)
                    if value:
                        headers[name] = _COMPAT.sub(repl, value)
            return super().perform_request(method, target, body=body, headers=headers, **kw)

    return CompatNode


def _secret(env: str | None, file: Path | None, what: str) -> str | None:
    if not (env or file):
        return None
    try:
        return secret(env, str(file) if file else None, what)
    except SecretError as exc:
        raise StoreError(f"elastic: {exc}") from None


def make_client(config: ElasticConfig) -> Elasticsearch:
    """The official client, with retries left to ``ElasticStore`` (backoff on the farmwatch clock).

    The transport still fails over between hosts on connection errors (``max_retries`` = hosts - 1)
    but does not retry statuses itself.
    """
    kw: dict[str, Any] = {
        "request_timeout": config.timeout,
        "max_retries": len(config.hosts) - 1,
        "retry_on_status": (),
        "retry_on_timeout": True,
        "verify_certs": config.verify_certs,
    }
    if config.ca_file:
        kw["ca_certs"] = str(config.ca_file)
    api_key = _secret(config.api_key_env, config.api_key_file, "API key")
    if api_key:
        kw["api_key"] = tuple(api_key.split(":", 1)) if ":" in api_key else api_key
    if config.username:
        password = _secret(config.password_env, config.password_file, "password")
        kw["basic_auth"] = (config.username, password or "")
    node = _node_class(config.compatible_with)
    if node is not None:
        kw["node_class"] = node
    return Elasticsearch(config.hosts, **kw)


# ---------------------------------------------------------------------------------------------
# The store


@dataclass
class _Unavailable(Exception):
    """The cluster cannot take documents now; ``pending`` are the ones not delivered, in order."""

    pending: list[Pair]
    reason: str


def _pair_id(pair: Pair) -> object:
    return next(iter(orjson.loads(pair[0]).values())).get("_id")


def _glob_query(field: str, pattern: str) -> dict[str, Any]:
    """A shell glob over a keyword field: ``term`` when plain, ``wildcard`` for ``*``/``?``, else ``regexp``."""
    if not re.search(r"[*?\[]", pattern):
        return {"term": {field: pattern}}
    if "[" not in pattern:
        return {"wildcard": {field: {"value": pattern}}}
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = pattern.find("]", i + 2)
            if j < 0:
                out.append("\\[")
            else:
                body = pattern[i + 1:j]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = j
        elif c.isalnum() or c in "_-":
            out.append(c)
        else:
            out.append("\\" + c)
        i += 1
    return {"regexp": {field: {"value": "".join(out)}}}


def search_body(query: str, *, host: str | None = None, service: str | None = None, level: str | None = None,
                since: float | None = None, until: float | None = None, limit: int = 100,
                order: str = "desc") -> dict[str, Any]:
    """The ``_search`` request of ``ElasticStore.search``: words/phrases over ``message`` (all must
    match, ``"quoted phrases"`` and ``-excluded`` words as in ``simple_query_string``), filters."""
    must: list[dict[str, Any]] = []
    q = query.strip()
    if q and q != "*":
        must.append({"simple_query_string": {"query": q, "fields": ["message"], "default_operator": "and"}})
    filters: list[dict[str, Any]] = []
    if host:
        filters.append(_glob_query("host.name", host))
    if service:
        filters.append(_glob_query("service.name", service))
    if level:
        filters.append({"term": {"log.level": {"value": level, "case_insensitive": True}}})
    if since is not None or until is not None:
        rng: dict[str, Any] = {"format": "strict_date_optional_time"}
        if since is not None:
            rng["gte"] = iso(since)
        if until is not None:
            rng["lte"] = iso(until)
        filters.append({"range": {"@timestamp": rng}})
    return {
        "query": {"bool": {"must": must or [{"match_all": {}}], "filter": filters}},
        "sort": [{"@timestamp": {"order": order}}],
        "size": limit,
    }


class ElasticStore:
    """A log sink (``write_logs``) and log search (``search``, ``follow``) backed by Elasticsearch.

    Thread-safe: writes hold one lock (the spool must stay in order); searches do not take it.
    """

    def __init__(self, config: ElasticConfig, *, clock: Clock | None = None,
                 client: Elasticsearch | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or RealClock()
        self.client = client or make_client(config)
        self.spool = Spool(config.spool_dir, int(config.spool_max_bytes), int(config.spool_segment_bytes),
                           config.fsync == "always")
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._ready = False
        self._offline_since: float | None = None
        self._next_attempt = 0.0
        self._full_episode = 0
        self.cluster_version: str | None = None
        self.counters: dict[str, int] = dict.fromkeys((
            "indexed", "duplicates", "retried", "retried_requests", "items_missing", "dead_lettered",
            "spooled", "replayed", "dropped", "bulk_requests", "unavailable"), 0)
        self.last_error = ""
        if len(self.spool):
            log.info("elastic: %d documents from a previous run wait in the spool %s; they are sent first",
                     len(self.spool), config.spool_dir)

    # -- public ---------------------------------------------------------------------------

    def write_logs(self, records: Sequence[LogRecord]) -> None:
        """Index ``records`` (or spool them while the cluster is unreachable); see the module doc."""
        if "logs" in self.config.ship:
            self._write(log_pairs(records, self.config.index_prefix, self.config.index_mode))

    def write_samples(self, batches: Sequence[Batch]) -> None:
        """Ship samples when ``ship`` includes ``samples`` (else a no-op)."""
        if "samples" in self.config.ship:
            self._write(sample_pairs(batches, self._index("samples")))

    def write_alerts(self, alerts: Sequence[Alert]) -> None:
        """Ship alert state changes when ``ship`` includes ``alerts`` (else a no-op)."""
        if "alerts" in self.config.ship:
            self._write(alert_pairs(alerts, self._index("alerts"), self.clock.time()))

    def flush(self) -> None:
        """Replay the spool if a replay is due; for a periodic call by the runner when no data comes."""
        self._write([])

    def stats(self) -> dict[str, Any]:
        """Counters for self-metrics: documents indexed, duplicates, retries, dead letters, spool, drops."""
        return {
            **self.counters,
            "spool_docs": len(self.spool),
            "spool_bytes": self.spool.bytes,
            "spool_segments": len(self.spool.segments()),
            "spool_torn": self.spool.torn,
            "online": self._offline_since is None,
            "last_error": self.last_error,
        }

    def search(self, query: str, *, host: str | None = None, service: str | None = None, level: str | None = None,
               since: float | None = None, until: float | None = None, limit: int = 100) -> list[LogRecord]:
        """Log records matching ``query`` and the filters, newest first (``host``/``service`` are globs)."""
        body = search_body(query, host=host, service=service, level=level, since=since, until=until, limit=limit)
        return [r for _, r in self._records(self._search(body))]

    def follow(self, query: str, *, host: str | None = None, service: str | None = None, level: str | None = None,
               since: float | None = None, poll: float = 2.0, stop: threading.Event | None = None,
               page: int = 1000) -> Iterator[LogRecord]:
        """New matching records, oldest first, as they arrive (``tail -f`` over the index) until ``stop``.

        Records indexed late with an older ``@timestamp`` than the last one seen are not shown.
        """
        stop = stop or threading.Event()
        last = self.clock.time() if since is None else since
        seen: set[str] = set()
        while not stop.is_set():
            body = search_body(query, host=host, service=service, level=level, since=last, limit=page, order="asc")
            for key, r in self._records(self._search(body)):
                if key in seen:
                    continue
                if r.ts > last:
                    last, seen = r.ts, set()
                seen.add(key)
                yield r
            self.clock.wait(stop, poll)

    def refresh(self) -> None:
        """Make everything indexed so far searchable now (tests, and the CLI after a write)."""
        self.client.indices.refresh(index=f"{self.config.index_prefix}-*", allow_no_indices=True)

    def close(self) -> None:
        self.client.close()

    # -- writing --------------------------------------------------------------------------

    def _index(self, kind: str) -> str:
        return f"{self.config.index_prefix}-{kind}"

    def _write(self, pairs: list[Pair]) -> None:
        with self._lock:
            if len(self.spool) and self.clock.monotonic() >= self._next_attempt:
                self._replay()
            if len(self.spool):
                if pairs:
                    self._to_spool(pairs)
                return
            if not pairs:
                return
            try:
                try:
                    self._connect()
                except _Unavailable as exc:
                    exc.pending = pairs
                    raise
                self._ship(pairs, self.config.retries)
            except _Unavailable as exc:
                self._went_offline(exc.reason)
                self._to_spool(exc.pending)
            else:
                self._back_online()

    def _replay(self) -> None:
        """Send the spool, oldest first; stops at the first sign the cluster is still unavailable."""
        retries = self.config.retries if self._offline_since is None else 0
        deadline = self.clock.monotonic() + self.config.replay_budget
        try:
            self._connect()
            first = True
            for seg in self.spool.segments():
                if not first and self.clock.monotonic() >= deadline:
                    self._back_online()
                    return  # due again at once: the next write or flush goes on with it
                pairs = self.spool.read(seg)
                if first and self._offline_since is not None:
                    log.info("elastic: replaying %d spooled documents", len(self.spool))
                first = False
                try:
                    self._ship(pairs, retries)
                except _Unavailable as exc:
                    self.spool.replace(seg, pairs, exc.pending)
                    self.counters["replayed"] += len(pairs) - len(exc.pending)
                    raise
                self.spool.replace(seg, pairs, [])
                self.counters["replayed"] += len(pairs)
                retries = self.config.retries
        except _Unavailable as exc:
            self._went_offline(exc.reason)
            return
        self._back_online()

    def _to_spool(self, pairs: list[Pair]) -> None:
        size = sum(len(a) + len(s) for a, s in pairs)
        if not self.spool.room(size):
            self.counters["dropped"] += len(pairs)
            self._full_episode += len(pairs)
            msg = (f"elastic: spool {self.config.spool_dir} is full ({self.spool.bytes} of {int(self.config.spool_max_bytes)} "
                   f"bytes) while the cluster is unavailable: {len(pairs)} documents not accepted "
                   f"({self.counters['dropped']} so far)")
            if self._full_episode == len(pairs):
                log.error(msg + "; further refusals are counted in stats()['dropped'] until the spool drains")
            raise SpoolFull(msg, len(pairs))
        if self._full_episode:
            log.warning("elastic: spool accepts documents again; %d were refused while it was full", self._full_episode)
            self._full_episode = 0
        self.spool.append(pairs)
        self.counters["spooled"] += len(pairs)

    def _went_offline(self, reason: str) -> None:
        self.counters["unavailable"] += 1
        self.last_error = reason
        if self._offline_since is None:
            self._offline_since = self.clock.time()
            log.warning("elastic: %s; spooling to %s and retrying every %gs", reason, self.config.spool_dir,
                        self.config.retry_interval)
        self._next_attempt = self.clock.monotonic() + self.config.retry_interval

    def _back_online(self) -> None:
        if self._offline_since is not None:
            log.info("elastic: cluster %s reachable again after %.0fs; spool empty: %s", self._where(),
                     self.clock.time() - self._offline_since, not len(self.spool))
            self._offline_since = None
        self._next_attempt = 0.0

    def _where(self) -> str:
        return ",".join(self.config.hosts)

    def _connect(self) -> None:
        """Check the cluster once (product, version) and install the templates; raises _Unavailable."""
        if self._ready:
            return
        try:
            info = self.client.info()
        except UnsupportedProductError:
            raise _Unavailable([], f"the server at {self._where()} is not Elasticsearch (no X-Elastic-Product header)") from None
        except ApiError as exc:
            if exc.meta.status in (400, 406):
                raise _Unavailable([], f"cluster {self._where()} refused the client's API version "
                                       f"(compatible-with={self.config.compatible_with}): set compatible_with "
                                       "to the cluster's major version") from None
            raise _Unavailable([], f"cluster {self._where()} answered {exc.meta.status} to GET /: {exc.message}") from None
        except TransportError as exc:
            raise _Unavailable([], f"cluster {self._where()} unreachable ({type(exc).__name__}: {exc.message})") from None
        self.cluster_version = str(info.get("version", {}).get("number", "?"))
        major = self.cluster_version.split(".")[0]
        if self.config.compatible_with != "none" and major.isdigit() and int(major) != self.config.compatible_with \
                and info.get("version", {}).get("distribution") != "opensearch":
            log.warning("elastic: cluster %s runs %s but compatible_with = %s: set compatible_with = %s",
                        self._where(), self.cluster_version, self.config.compatible_with, major)
        if self.config.manage_templates:
            self._install_templates()
        self._ready = True

    def _install_templates(self) -> None:
        prefix = self.config.index_prefix
        try:
            for name, body in component_templates(prefix).items():
                self.client.cluster.put_component_template(name=name, body=body)
            for name, body in index_templates(prefix, self.config.index_mode, self.config.template_priority).items():
                self.client.indices.put_index_template(name=name, body=body)
        except ApiError as exc:
            if exc.meta.status in RETRY_STATUS:
                raise _Unavailable([], f"cluster {self._where()} busy installing templates ({exc.meta.status})") from None
            log.error("elastic: cannot install the index templates on %s (%s %s): documents are sent without "
                      "them (set manage_templates = false if an admin manages them)", self._where(), exc.meta.status, exc.message)
        except TransportError as exc:
            raise _Unavailable([], f"cluster {self._where()} unreachable ({type(exc).__name__}: {exc.message})") from None

    def _chunks(self, pairs: list[Pair]) -> Iterator[list[Pair]]:
        limit_docs, limit_bytes = self.config.bulk_docs, int(self.config.bulk_bytes)
        chunk: list[Pair] = []
        size = 0
        for p in pairs:
            n = len(p[0]) + len(p[1])
            if chunk and (len(chunk) >= limit_docs or size + n > limit_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(p)
            size += n
        if chunk:
            yield chunk

    def _ship(self, pairs: list[Pair], retries: int) -> None:
        chunks = list(self._chunks(pairs))
        for i, chunk in enumerate(chunks):
            try:
                self._ship_chunk(chunk, retries)
            except _Unavailable as exc:
                exc.pending = exc.pending + [p for c in chunks[i + 1:] for p in c]
                raise

    def _delay(self, attempt: int, at_least: float = 0.0) -> float:
        d = min(self.config.backoff_max, self.config.backoff * 2 ** (attempt - 1))
        return max(at_least, d / 2 + self._rng.uniform(0, d / 2))

    def _ship_chunk(self, todo: list[Pair], retries: int) -> None:
        """Deliver one chunk: retry what failed transiently, dead-letter what failed for good."""
        attempt = 0
        while True:
            self.counters["bulk_requests"] += 1
            wait_at_least = 0.0
            try:
                resp = self.client.bulk(operations=b"".join(chain.from_iterable(todo)))
            except ApiError as exc:
                status = exc.meta.status
                if status in (400, 413):  # too large, or one document breaks the request: halve until found
                    if len(todo) > 1:
                        self._ship_halves(todo, retries)
                    else:
                        self._dead_letter([(todo[0], status, {"type": "request_rejected", "reason": str(exc.message)})])
                    return
                if status not in RETRY_STATUS:
                    raise _Unavailable(todo, f"cluster {self._where()} refused the bulk request ({status} {exc.message})") from None
                failed, reason = todo, f"bulk request answered {status}"
                retry_after = exc.meta.headers.get("retry-after") if exc.meta.headers else None
                if retry_after and retry_after.isdigit():
                    wait_at_least = min(float(retry_after), self.config.backoff_max)
            except TransportError as exc:
                failed, reason = todo, f"cluster {self._where()} unreachable ({type(exc).__name__}: {exc.message})"
            else:
                failed, reason = self._items(todo, resp.body)
            if not failed:
                return
            attempt += 1
            if attempt > retries:
                raise _Unavailable(failed, reason)
            self.counters["retried"] += len(failed)
            self.counters["retried_requests"] += 1
            self.clock.sleep(self._delay(attempt, wait_at_least))
            todo = failed

    def _ship_halves(self, todo: list[Pair], retries: int) -> None:
        half = len(todo) // 2
        try:
            self._ship_chunk(todo[:half], retries)
        except _Unavailable as exc:
            exc.pending = exc.pending + todo[half:]
            raise
        self._ship_chunk(todo[half:], retries)

    def _items(self, todo: list[Pair], body: Any) -> tuple[list[Pair], str]:
        """Sort a bulk response's items into done / retry / dead letter; missing items are retried."""
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            return todo, "bulk response without items"
        failed: list[Pair] = []
        dead: list[tuple[Pair, int, Any]] = []
        reason = ""
        for pair, item in zip(todo, items):
            result = next(iter(item.values()), None) if isinstance(item, dict) and item else None
            status = result.get("status") if isinstance(result, dict) else None
            if not isinstance(status, int):
                failed.append(pair)
                reason = "bulk response item without status"
            elif "_id" in result and result["_id"] != _pair_id(pair):
                failed.append(pair)  # the item is about another document: this one's fate is unknown
                reason = "bulk response items do not match the documents sent"
            elif 200 <= status < 300:
                self.counters["indexed"] += 1
            elif status == 409:
                self.counters["duplicates"] += 1
            elif status in RETRY_STATUS:
                failed.append(pair)
                reason = f"documents answered {status}"
            else:
                dead.append((pair, status, result.get("error")))
        if len(items) < len(todo):
            missing = todo[len(items):]
            self.counters["items_missing"] += len(missing)
            log.warning("elastic: bulk response has %d items for %d documents; re-sending the %d missing",
                        len(items), len(todo), len(missing))
            failed.extend(missing)
            reason = "bulk response with missing items"
        if dead:
            self._dead_letter(dead)
        return failed, reason

    def _dead_letter(self, dead: list[tuple[Pair, int, Any]]) -> None:
        path = self.config.dead_letter
        path.parent.mkdir(parents=True, exist_ok=True)
        now = iso(self.clock.time())
        with open(path, "ab") as f:
            for (action, source), status, error in dead:
                meta = next(iter(orjson.loads(action).values()))
                f.write(_dumps({"@timestamp": now, "index": meta.get("_index"), "id": meta.get("_id"),
                                "status": status, "error": error, "document": orjson.loads(source)}) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.counters["dead_lettered"] += len(dead)
        first = dead[0][2]
        why = f"{first.get('type')}: {first.get('reason')}" if isinstance(first, dict) else str(first)
        log.error("elastic: %d documents rejected by the cluster (%s %s), written to %s (%d dead letters so far)",
                  len(dead), dead[0][1], why[:300], path, self.counters["dead_lettered"])

    # -- reading --------------------------------------------------------------------------

    def _records(self, hits: list[dict[str, Any]]) -> list[tuple[str, LogRecord]]:
        """(``_id``, record) of each hit; documents that are not log records (no ``@timestamp``,
        written by something else into the same indices) are skipped with one line per search."""
        out, skipped = [], 0
        for h in hits:
            try:
                r = record_from_source(h["_source"])
            except (KeyError, TypeError, ValueError):
                skipped += 1
                continue
            out.append((str(h.get("_id") or r.doc_id()), r))
        if skipped:
            log.warning("elastic: %d of %d search hits in %s-logs* are not farmwatch log records (no valid "
                        "@timestamp); skipped", skipped, len(hits), self.config.index_prefix)
        return out

    def _search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            resp = self.client.search(index=f"{self.config.index_prefix}-logs*", allow_no_indices=True,
                                      ignore_unavailable=True, **body)
        except ApiError as exc:
            raise StoreError(f"elastic: search on {self._where()} failed: {exc.meta.status} {exc.message}") from None
        except TransportError as exc:
            raise StoreError(f"elastic: search: cluster {self._where()} unreachable ({type(exc).__name__})") from None
        return list(resp.body.get("hits", {}).get("hits", []))


__all__ = ["ElasticConfig", "ElasticStore", "SpoolFull", "bulk_body", "log_document", "record_from_source",
           "search_body", "CLIENT_MAJOR"]
