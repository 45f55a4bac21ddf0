"""Application log files: tailed across rotation, parsed, shipped at least once and stored once.

Files are found by glob patterns, re-globbed every cycle. Each file is known by its *identity*:
device, inode and a fingerprint (hash of its first ``fingerprint_bytes`` bytes, or of all of it
when it was shorter when first seen), plus a generation that counts truncations. The identity is
``log.file.fingerprint`` of every record and, with ``log.offset`` (where the record starts), its
``doc_id``: reading the same bytes of the same file again, after a crash or a refused write, gives
the same ids, which both stores ignore. Offsets are kept in the store (``source_cursors``) and move
on only after every sink accepted the records (``LogBatch.ack``), in the same transaction as the
records for the embedded store.

Rotation: a file renamed (``app.log`` → ``app.log.1``) keeps its inode, so it keeps its offset;
it is read to its end through the descriptor held open, whether or not the new name matches a
pattern, and a new ``app.log`` is a new file. ``copytruncate`` empties the file in place: its size
drops below the offset (or its first bytes change), so it is read again from 0 under the next
generation, and a copy whose first bytes are those of the truncated content (``app.log.1``, when a
pattern matches it) is read from where the original was left, so lines written just before the
copy are not lost and nothing is read twice. Content is followed, not names: whenever a stored or
open file stops holding content it had read (truncated, rewritten, deleted, also while farmwatch
was stopped), its offset goes to the copy that holds that content now; a copy of a file still
being read waits until the original lets go. Inode reuse (a file deleted, a new one given its
inode) shows as a different fingerprint. A deleted file is read to its end, then closed.

Records: a line that does not start a record (indented, a Python traceback) continues the
previous one when that one had a recognised header; the last record of a file waits up to
``multiline_wait`` for continuation lines, a last line without newline ``partial_wait`` for its
newline. At most ``max_bytes`` are read per cycle (backlogs are worked off over several cycles)
and only one batch per source is in flight. Undecodable bytes become U+FFFD, lines longer than
``max_line_bytes`` are cut (counted), never fatal.
"""

from __future__ import annotations

import gc
import glob
import hashlib
import logging
import math
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from farmwatch.durations import format_duration
from farmwatch.logtemplates.records import RecordTemplates
from farmwatch.model import Batch, LogRecord, labels as make_labels
from farmwatch.sources.base import LogBatch, Source
from farmwatch.sources.logfiles.config import COMPRESSED, LogFilesConfig, matching_files, unmatched
from farmwatch.sources.logfiles.parse import LineParser, zone

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _File:
    dev: int
    ino: int
    fp_len: int
    fp: str
    gen: int
    path: str
    fd: int
    offset: int
    size: int
    last_growth: float
    base: dict[str, Any]
    host: str
    service: str
    matched: bool = True
    skip: bool = False  # inside an over-long line: discard up to the next newline
    key: str = ""

    def __post_init__(self) -> None:
        self.rekey()

    def rekey(self) -> None:
        """The identity string (cursor key, ``log.file.fingerprint``); after every change of identity."""
        self.key = f"{self.dev}:{self.ino}:{self.fp_len}:{self.fp}" + (f":{self.gen}" if self.gen else "")

    def cursor(self, offset: int, skip: bool, now: float) -> dict[str, Any]:
        return {"path": self.path, "dev": self.dev, "ino": self.ino, "fp_len": self.fp_len, "fp": self.fp,
                "gen": self.gen, "offset": offset, "skip": skip, "seen": now}


_Pending = list
"""A record being assembled, as a list (the hot loop makes one per record; a list literal costs a
fraction of an object): [0] offset where it starts, [1] first line, [2] header (its first line was
recognised, so continuation lines may follow), [3] the first line parsed, [4] inside a Python
traceback, [5] continuation lines (None: none yet), [6] offset after its last line."""


@dataclass
class _Stats:
    records: int = 0
    bytes: int = 0
    truncations: int = 0
    long_lines: int = 0
    read_errors: int = 0
    refused: int = 0


class LogFilesSource(Source):
    """Tails the files of ``paths``; ``poll`` returns a ``LogBatch`` and a batch of own counters."""

    Config: ClassVar[type[LogFilesConfig]] = LogFilesConfig
    config: LogFilesConfig

    def __init__(self, name: str, config: LogFilesConfig, **kw: Any) -> None:
        super().__init__(name, config, **kw)
        self.parser = LineParser(config.format, zone(config.timezone), now=self.clock.time)
        self.host = config.host or socket.gethostname().split(".")[0]
        self._pattern = re.compile(config.path_pattern) if config.path_pattern else None
        self._files: dict[tuple[int, int], _File] = {}
        self._stored: dict[tuple[int, int], tuple[str, dict[str, Any]]] | None = None
        self._copies: dict[tuple[int, str], int] = {}
        self._drop: set[str] = set()
        self._inflight: dict[str, tuple[_File, int, bool, int]] | None = None
        self._closing: list[_File] = []
        self._lock = threading.Lock()
        self._store = None
        self._first_scan = True
        self._warned: set[str] = set()
        self.stats = _Stats()
        self._limit = int(config.max_line_bytes)
        self._max_more = config.max_record_lines - 1
        self._keep = config.keep_original
        self._now = 0.0  # the read time: the timestamp of lines that carry none
        self._pruned = -math.inf  # when stored offsets were last checked for forgetting
        self.forgotten_offsets = 0
        self.templates = RecordTemplates() if config.templates else None
        self._template_labels = tuple(sorted(config.labels.items()))

    # -- wiring -----------------------------------------------------------------------------------
    def bind_store(self, store: Any) -> None:
        """Where the offsets are kept (the runner passes its SQLite store before the first poll),
        and the log templates its collectors share."""
        self._store = store
        if self.templates is not None:
            self.templates.bind(store)

    def _load_cursors(self) -> None:
        stored: dict[tuple[int, int], tuple[str, dict[str, Any]]] = {}
        if self._store is not None:
            for key, value in self._store.cursors(self.name).items():
                try:
                    stored[(int(value["dev"]), int(value["ino"]))] = (key, value)
                except (KeyError, TypeError, ValueError):
                    self._drop.add(key)
        self._stored = stored

    # -- one cycle --------------------------------------------------------------------------------
    def poll(self) -> list[Batch | LogBatch]:
        with self._lock:
            if self._inflight is not None:
                return [self._counters()]  # the previous batch is not stored yet: back-pressure
            if self._stored is None:
                self._load_cursors()
            now = self.clock.time()
            self._scan(now)
            records: list[LogRecord] = []
            cursors: dict[str, Any] = {}
            inflight: dict[str, tuple[_File, int, bool, int]] = {}
            budget = int(self.config.max_bytes)
            for f in sorted(self._files.values(), key=lambda f: (f.matched, f.path)):
                if budget <= 0:
                    break
                end, skip, n = self._read(f, budget, now, records)
                if end != f.offset or skip != f.skip:
                    cursors[f.key] = f.cursor(end, skip, now)
                    inflight[f.key] = (f, end, skip, n)
                    budget -= end - f.offset
            self._forget_offsets(now)
            drop = sorted(self._drop)
            out: list[Batch | LogBatch] = []
            if self.templates is not None:  # before anything is handed on: every sink gets the templates
                lbls = self._template_labels
                out += self.templates.annotate(records, now, lbls) if records else self.templates.counts(now, lbls)
            if records or cursors or drop:
                self._inflight = inflight
                out.append(LogBatch(self.name, records, cursors, drop, ack=self._ack, nack=self._nack))
            else:
                self._close_finished()  # nothing to acknowledge: quiet finished files close now, not at the next ack
            out.append(self._counters())
            return out

    def _ack(self) -> None:
        """Every sink has the records: the offsets move on, finished files are closed."""
        with self._lock:
            inflight, self._inflight = self._inflight or {}, None
            for f, end, skip, n in inflight.values():
                self.stats.bytes += end - f.offset
                self.stats.records += n
                f.offset, f.skip = end, skip
            self._drop.clear()
            self._close_finished()

    def _nack(self) -> None:
        with self._lock:
            self._inflight = None
            self.stats.refused += 1

    # -- finding files ----------------------------------------------------------------------------
    def _scan(self, now: float) -> None:
        seen: dict[tuple[int, int], tuple[str, os.stat_result]] = {}
        for path in self._glob():
            try:
                st = os.stat(path)
            except OSError:
                continue  # gone between glob and stat
            seen.setdefault((st.st_dev, st.st_ino), (path, st))
        # Known files first: a truncation seen now tells a new copy where its unread content starts.
        for ident, f in list(self._files.items()):
            found = seen.get(ident)
            f.matched = found is not None
            if found is not None and f.path != found[0]:
                log.info("log file %s was renamed to %s; following it", f.path, found[0])
                f.path = found[0]
            self._check(f, now)
        first, stored = self._first_scan, self._stored or {}
        if first:
            for ident, (key, value) in list(stored.items()):  # files gone while farmwatch was down
                if ident not in seen:
                    self._remember_copy(int(value.get("fp_len", 0)), str(value.get("fp")), int(value.get("offset", 0)))
                    self._drop.add(key)
                    del stored[ident]
        # Files with a stored offset first: one whose content changed while farmwatch was down
        # hands its offset on (``_remember_copy``) before a copy of that content is opened.
        for ident, (path, st) in sorted(seen.items(), key=lambda item: item[0] not in stored):
            if ident not in self._files:
                f = self._open(path, st, now)
                if f is not None:
                    self._files[(f.dev, f.ino)] = f
        self._first_scan = False
        if first:
            self._stored = {}

    def _forget_offsets(self, now: float) -> None:
        """At most hourly: the stored offsets of files not open and not read for ``forget_after``
        go (with the next batch, like the offsets of deleted files)."""
        if self._store is None or now - self._pruned < min(3600.0, self.config.forget_after):
            return
        self._pruned = now
        open_ = {f.key for f in self._files.values()}
        for key, value in self._store.cursors(self.name).items():
            try:
                old = now - float(value.get("seen", now)) >= self.config.forget_after
            except (TypeError, ValueError):
                old = True
            if old and key not in open_ and key not in self._drop:
                self._drop.add(key)
                self.forgotten_offsets += 1
                log.info("log source %s: forgetting the offset of %s (not read for %s)", self.name,
                         value.get("path", key) if isinstance(value, dict) else key,
                         format_duration(self.config.forget_after))

    def _glob(self) -> list[str]:
        found: list[str] = []
        for pattern in self.config.paths:
            matched = matching_files(pattern, self.config.exclude)
            if not matched and self._first_scan:
                log.warning("log source %s: %s; %s", self.name, unmatched(pattern), self.later("looking again every cycle"))
            found += matched
        return found

    def _open(self, path: str, st: os.stat_result, now: float) -> _File | None:
        if st.st_size == 0:  # nothing to fingerprint yet: picked up once it has content
            gone = (self._stored or {}).pop((st.st_dev, st.st_ino), None)
            if gone is not None:  # emptied while farmwatch was down: its content may live on in a copy
                key, value = gone
                self._remember_copy(int(value.get("fp_len", 0)), str(value.get("fp")), int(value.get("offset", 0)))
                self._drop.add(key)
            return None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            self.stats.read_errors += 1
            if path not in self._warned:
                self._warned.add(path)
                log.warning("log source %s: cannot open %s: %s (%s)", self.name, path, exc.strerror or exc,
                            self.later("retrying every cycle"))
            return None
        self._warned.discard(path)
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        host, service, base = self._describe(path)
        stored = (self._stored or {}).pop(ident, None)
        offset, gen, skip = 0, 0, False
        fp_len = min(self.config.fingerprint_bytes, st.st_size)
        if stored is not None:
            key, value = stored
            s_len = int(value.get("fp_len", 0))
            if 0 < s_len <= st.st_size and _fingerprint(fd, s_len) == value.get("fp"):
                fp_len, offset, gen, skip = s_len, int(value["offset"]), int(value.get("gen", 0)), bool(value.get("skip"))
            else:
                # Truncated or rewritten while farmwatch was down (copytruncate), or the inode
                # reused: the content read up to the stored offset may live on in a copy.
                log.info("log file %s: its first bytes changed while it was not watched (truncated, or the inode "
                         "reused by another file); reading it from the start", path)
                self._remember_copy(s_len, str(value.get("fp")), int(value.get("offset", 0)))
                self._drop.add(key)
        fp = _fingerprint(fd, fp_len)
        if stored is None:
            copied = self._copy_of(fd, st.st_size)
            if copied is _STILL_READ:
                os.close(fd)  # a copy of a file that is still being read: looked at again next cycle
                return None
            if copied is not None:
                offset = copied  # a copy of content already read up to there (copytruncate)
                log.info("log file %s holds the content of a truncated or deleted file; reading it from offset %d",
                         path, offset)
            elif self._first_scan and self.config.start_at == "end":
                offset = st.st_size
        # Last growth: its modification time, so a file that is already quiet (a cron run, a
        # restart) does not wait again for continuation lines (never later than the clock's now).
        grown = min(now, st.st_mtime)
        f = _File(st.st_dev, st.st_ino, fp_len, fp, gen, path, fd, offset, st.st_size, grown, base, host, service, skip=skip)
        if offset > st.st_size:
            self._truncated(f, now)
        return f

    def _copy_of(self, fd: int, size: int) -> int | object | None:
        """Where reading stopped in content this new file is a copy of, if it is one.

        The content of a file that let it go (truncated, deleted, changed while farmwatch was
        down): its offset, or the copy's size when the copy is shorter (all of it was read).
        The content of a file still open (the copy seen between logrotate's copy and its
        truncation or deletion; the last 4 KiB before the offset must be equal too, so two files
        that merely begin alike are not taken for copies): ``_STILL_READ``, as the original reads
        it on until it lets go, and then hands its offset over."""
        for (length, fp), offset in list(self._copies.items()):
            if 0 < length <= size and _fingerprint(fd, length) == fp:
                del self._copies[(length, fp)]
                return min(offset, size)
        for f in self._files.values():
            if 0 < f.offset <= size and f.fp_len <= size and _fingerprint(fd, f.fp_len) == f.fp:
                lo = max(0, f.offset - 4096)
                try:
                    theirs = os.pread(f.fd, f.offset - lo, lo)
                except OSError:
                    continue
                if len(theirs) == f.offset - lo and os.pread(fd, f.offset - lo, lo) == theirs:
                    return _STILL_READ
        return None

    def _remember_copy(self, fp_len: int, fp: str, offset: int) -> None:
        """Content read up to ``offset`` that its file no longer holds: a copy of it continues there."""
        if fp_len > 0:
            self._copies[(fp_len, fp)] = offset
            while len(self._copies) > 64:
                del self._copies[next(iter(self._copies))]

    def _describe(self, path: str) -> tuple[str, str, dict[str, Any]]:
        host, service = self.host, self.config.service
        extra: dict[str, Any] = {}
        if self._pattern is not None:
            m = self._pattern.search(path)
            if m is not None:
                for k, v in m.groupdict().items():
                    if v is None:
                        continue
                    if k == "host":
                        host = v
                    elif k == "service":
                        service = service or v
                    else:
                        extra[f"labels.{k}"] = v
        if not service:
            service = Path(path).name.split(".")[0] or Path(path).name
        extra.update(self.config.labels and {f"labels.{k}": v for k, v in self.config.labels.items()} or {})
        return host, service, extra

    def _check(self, f: _File, now: float) -> None:
        """Growth, truncation (copytruncate) and rewritten content of an open file."""
        try:
            st = os.fstat(f.fd)
        except OSError:
            return
        if st.st_size != f.size:
            grew = st.st_size > f.size
            f.size = st.st_size
            f.last_growth = now
            if st.st_size < f.offset or (grew and f.fp_len and _fingerprint(f.fd, f.fp_len) != f.fp):
                self._truncated(f, now)
            elif grew and not f.fp_len:  # emptied earlier, written to now: fingerprint the new content
                f.fp_len = min(self.config.fingerprint_bytes, f.size)
                f.fp = _fingerprint(f.fd, f.fp_len)
                f.rekey()
        if st.st_nlink == 0 or not f.matched:
            if f not in self._closing:
                self._closing.append(f)

    def _truncated(self, f: _File, now: float) -> None:
        self.stats.truncations += 1
        log.info("log file %s was truncated (size %d < offset %d, or its first bytes changed); reading it from the start",
                 f.path, f.size, f.offset)
        self._remember_copy(f.fp_len, f.fp, f.offset)
        self._drop.add(f.key)
        f.gen += 1
        f.fp_len = min(self.config.fingerprint_bytes, f.size)
        f.fp = _fingerprint(f.fd, f.fp_len) if f.fp_len else "0"
        f.offset, f.skip, f.last_growth = 0, False, now
        f.rekey()

    def _close_finished(self) -> None:
        now = self.clock.time()
        for f in list(self._closing):
            try:
                st = os.fstat(f.fd)
            except OSError:
                continue
            deleted = st.st_nlink == 0
            if f.offset < st.st_size or (not deleted and f.matched):
                if f.matched and not deleted:
                    self._closing.remove(f)
                continue
            if deleted or now - f.last_growth >= self.config.close_inactive:
                os.close(f.fd)
                self._files.pop((f.dev, f.ino), None)
                self._closing.remove(f)
                self._remember_copy(f.fp_len, f.fp, f.offset)  # a copy of its content goes on from here
                if deleted:
                    self._drop.add(f.key)
                    log.info("log file %s was deleted and is read to its end; closed", f.path)

    # -- reading ----------------------------------------------------------------------------------
    def _read(self, f: _File, budget: int, now: float, out: list[LogRecord]) -> tuple[int, bool, int]:
        """Records of ``f`` from its offset into ``out``; returns (new offset, skip, records)."""
        start, skip = f.offset, f.skip
        size = f.size
        if size <= start:
            return start, skip, 0
        limit = int(self.config.max_line_bytes)
        want = min(size - start, max(budget, limit + 1))
        try:
            data = os.pread(f.fd, want, start)
        except OSError as exc:
            self.stats.read_errors += 1
            log.warning("log source %s: cannot read %s: %s", self.name, f.path, exc.strerror or exc)
            return start, skip, 0
        if not data:
            return start, skip, 0
        cut = start + len(data) < size
        if skip:
            nl = data.find(b"\n")
            if nl < 0:
                return start + len(data), True, 0
            start += nl + 1
            data = data[nl + 1:]
            skip = False
        self._now = self.clock.time()
        final = self._deleted(f)  # nobody can write to it any more: nothing to wait for
        quiet = now - f.last_growth
        last = data.rfind(b"\n")
        tail = data[last + 1:]  # after the last newline: a partial line (or b"")
        n_before = len(out)
        # The records built here all stay alive until they are stored and cannot form reference
        # cycles; the cyclic GC would traverse the growing batch again and again while it is
        # built (measured: 40 % of the time for an 8 MiB read). Paused for this loop only.
        collecting = gc.isenabled()
        if collecting:
            gc.disable()
        try:
            pending = self._assemble(f, data, start, out) if last >= 0 else None
        finally:
            if collecting:
                gc.enable()
        pos = start + len(data) - len(tail)
        waiting = False  # a partial last line is left for the next cycle
        if tail:
            if len(tail) > limit:
                # An over-long line: what fits becomes a record, the rest is skipped to its newline.
                self.stats.long_lines += 1
                if pending is not None:
                    self._emit(f, pending, out)
                self._emit(f, self._start(f, tail[:limit].decode("utf-8", "replace"), pos), out)
                return pos + len(tail), True, len(out) - n_before
            text = tail.decode("utf-8", "replace")
            if not cut and (final or quiet >= self.config.partial_wait):
                pending = self._line(f, text, pos, pos + len(tail), pending, out)
                pos += len(tail)
            else:
                waiting = True
                if pending is not None and self._begins_next(pending, text):
                    self._emit(f, pending, out)  # the next record has begun: this one is complete
                    pending = None
        if pending is not None:
            complete = not cut and not waiting and (not pending[2] or final or quiet >= self.config.multiline_wait)
            if complete or (cut and len(out) == n_before):
                self._emit(f, pending, out)  # (a record larger than a whole read must still move on)
                pending = None
        end = pending[0] if pending is not None else pos
        return end, skip, len(out) - n_before

    def _begins_next(self, pending: _Pending, partial: str) -> bool:
        """Whether a partial last line surely starts a new record, so ``pending`` is complete.

        The rule of ``_assemble`` for a whole line, and no while the line could still become one
        that continues the record: inside a traceback, and for a prefix of a continuation marker
        (``Trace`` of ``Traceback (most recent call last)``; taking that for a new record split
        one record in two whenever a read ended there)."""
        if not pending[2]:
            return True  # nothing continues a record without a header
        if pending[4] or not partial[:1].strip():
            return False
        if any(marker.startswith(partial) for marker in _CONTINUATIONS):
            return False
        return self.parser.starts_record(partial)

    def _deleted(self, f: _File) -> bool:
        try:
            return os.fstat(f.fd).st_nlink == 0
        except OSError:
            return True

    def _assemble(self, f: _File, data: bytes, pos: int, out: list[LogRecord]) -> _Pending | None:
        """The complete lines of ``data`` (what precedes its last newline) into records.

        The hot loop of log shipping: a chunk of ASCII text (the usual log) is decoded and split
        in one go (character and byte offsets are then the same), the parser is picked by the
        line's first character, a record of one line (most of them) is built right here rather
        than in ``_emit``, and everything the loop reads is in a local.
        """
        limit, max_more, keep = self._limit, self._max_more, self._keep
        if data.isascii():
            lines = data.decode("ascii").split("\n")
            sizes = map(len, lines)
        else:  # byte offsets from the undecoded lines; over-long lines cut before decoding
            raw_lines = data.split(b"\n")
            sizes = map(len, raw_lines)
            lines = [(raw if len(raw) <= limit else raw[:limit]).decode("utf-8", "replace") for raw in raw_lines]
        lines.pop()  # after the last newline: the tail, not a line yet
        cr = b"\r" in data
        first, other, starts_record = self.parser.first, self.parser.other, self.parser.starts_record
        emit, append, record = self._emit, out.append, _record
        path, key, base, host, service, now = f.path, f.key, f.base or _NO_FIELDS, f.host, f.service, self._now
        pending: _Pending | None = None
        for text, n in zip(lines, sizes):
            end = pos + n + 1
            if n > limit:
                self.stats.long_lines += 1
                text = text[:limit]
            if cr and text[-1:] == "\r":
                text = text[:-1]
            c = text[:1]
            if pending is not None:
                if pending[2] and (pending[4] or c == " " or c == "\t" or not c
                                       or ((c == "T" or c == "D") and not starts_record(text))):
                    more = pending[5]
                    if more is None:
                        more = pending[5] = []
                    if len(more) < max_more:
                        more.append(text)
                        pending[6] = end
                        if pending[4]:
                            if c != " " and c != "\t" and c:
                                pending[4] = False  # the exception line ends the traceback
                        elif c == "T" and text.startswith(_TRACEBACK):
                            pending[4] = True
                        pos = end
                        continue
                if pending[5] is None:  # _emit of a one-line record
                    ts, level, message, extra, line_host = pending[3]
                    fields = {"log.file.path": path, "log.offset": pending[0], "log.file.fingerprint": key,
                              **base, **(extra or _NO_FIELDS)}
                    if keep:
                        fields["event.original"] = pending[1]
                    append(record(now if ts is None else ts, line_host or host, service, level, message, fields))
                else:
                    emit(f, pending, out)
                pending = None
            if not c or (c in _SPACES and text.isspace()):
                pos = end
                continue
            parsed = first.get(c, other)(text)
            traceback = c == "T" and text.startswith(_TRACEBACK)
            pending = [pos, text, traceback or parsed[1] != "" or parsed[0] is not None, parsed, traceback, None, end]
            pos = end
        return pending

    def _line(self, f: _File, text: str, pos: int, end: int, pending: _Pending | None,
              out: list[LogRecord]) -> _Pending | None:
        """One complete line (the slow path of ``_assemble``, for a file's last line)."""
        if pending is not None and pending[2] and (pending[5] is None or len(pending[5]) < self._max_more) \
                and (pending[4] or not self.parser.starts_record(text)):
            if pending[5] is None:
                pending[5] = []
            pending[5].append(text)
            pending[6] = end
            if text.startswith(_TRACEBACK):
                pending[4] = True
            elif pending[4] and text[:1] not in (" ", "\t", ""):
                pending[4] = False
            return pending
        if pending is not None:
            self._emit(f, pending, out)
        if not text.strip():
            return None
        new = self._start(f, text, pos)
        new[6] = end
        return new

    def _start(self, f: _File, text: str, pos: int) -> _Pending:
        parsed = self.parser.first.get(text[:1], self.parser.other)(text)
        traceback = text.startswith(_TRACEBACK)
        return [pos, text, parsed[1] != "" or parsed[0] is not None or traceback, parsed, traceback, None, 0]

    def _emit(self, f: _File, p: _Pending, out: list[LogRecord]) -> None:
        ts, level, message, extra, host = p[3]
        more = p[5]
        if more:
            while more and not more[-1].strip():
                more.pop()  # blank lines between records belong to neither
        fields: dict[str, Any] = {"log.file.path": f.path, "log.offset": p[0], "log.file.fingerprint": f.key}
        if f.base:
            fields.update(f.base)
        if extra:
            fields.update(extra)
        if more:
            joined = "\n".join(more)
            message = message + "\n" + joined
            if self._keep:
                fields["event.original"] = p[1] + "\n" + joined
        elif self._keep:
            fields["event.original"] = p[1]
        out.append(_record(self._now if ts is None else ts, host or f.host, f.service, level, message, fields))

    # -- own series -------------------------------------------------------------------------------
    def _counters(self) -> Batch:
        s = self.stats
        lb = make_labels({**self.config.labels, "source": self.name})
        b = Batch(self.clock.time())
        lag = sum(max(0, f.size - f.offset) for f in self._files.values())
        for name, value in (("logfiles.files", len(self._files)), ("logfiles.records", s.records),
                            ("logfiles.bytes", s.bytes), ("logfiles.lag_bytes", lag),
                            ("logfiles.truncations", s.truncations), ("logfiles.long_lines", s.long_lines),
                            ("logfiles.read_errors", s.read_errors), ("logfiles.refused_batches", s.refused),
                            ("logfiles.forgotten_offsets", self.forgotten_offsets)):
            b.add((name, lb), float(value))
        if self.templates is not None:
            b.add(("logfiles.templates", lb), float(len(self.templates.miner.known)))
            b.add(("logfiles.template_save_failures", lb), float(self.templates.sync_failures))
        return b

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                try:
                    os.close(f.fd)
                except OSError:
                    pass
            self._files.clear()


class _Draft:
    """A LogRecord under construction: the same slots, but writable.

    ``LogRecord(...)`` (a frozen dataclass) sets each field through ``object.__setattr__``; a
    draft's fields are plain slot stores, and assigning ``__class__`` (allowed between classes of
    the same layout) then makes it the LogRecord it would have been: the same type, fields,
    equality and hash. Measured (valgrind, instructions per record): ``LogRecord(...)`` 11.6 k,
    the slot descriptors' ``__set__`` one by one 6.4 k, this 2.8 k.
    """

    __slots__ = LogRecord.__slots__


def _record(ts: float, host: str, service: str, level: str, message: str, fields: dict[str, Any]) -> LogRecord:
    r = _new(_Draft)
    r.ts = ts
    r.host = host
    r.service = service
    r.level = level
    r.message = message
    r.fields = fields
    r.__class__ = LogRecord  # type: ignore[assignment]
    return r  # type: ignore[return-value]


_new = object.__new__
if _record(1.0, "h", "s", "info", "m", {}) != LogRecord(1.0, "h", "s", "info", "m", {}):
    raise ImportError("farmwatch.sources.logfiles: _record no longer builds a LogRecord equal to LogRecord(...); "
                      "update it to LogRecord's fields")
_NO_FIELDS: dict[str, Any] = {}
_STILL_READ = object()
"""``_copy_of``: the new file is a copy of one that is still being read."""
_SPACES = frozenset("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
"""Every character for which ``str.isspace()`` holds: only a line starting with one can be blank."""
_TRACEBACK = "Traceback (most recent call last)"
_CONTINUATIONS = (_TRACEBACK, "The above exception", "During handling of the above exception")
"""Unindented lines that continue a record (``LineParser.starts_record``)."""


def _fingerprint(fd: int, length: int) -> str:
    return hashlib.blake2b(os.pread(fd, length, 0), digest_size=8).hexdigest()


SOURCE = LogFilesSource


__all__ = ["COMPRESSED", "SOURCE", "LogFilesConfig", "LogFilesSource"]
