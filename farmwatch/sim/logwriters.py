"""A simulated HLT application log: basf2-style lines, tracebacks, rotation — for tests and the demo.

The lines look like what ``b2hlt_*`` processes write through basf2's logging (``[INFO] message
{ module: HLTZMQ2Ds }``, optionally behind an absolute time), with the odd multi-line error and
Python traceback. Every record carries ``seq=<n>`` so a test can check, record by record, that
what farmwatch stored is exactly what was written: nothing lost, nothing twice. Rotation works the
ways logrotate does it: ``rename`` (move the file away, start a new one), ``copytruncate`` (copy
it, then empty it in place while the writer keeps appending) and ``recreate`` (copy it, delete it,
start a new one: the content lives on only in the copy, under another inode).
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from farmwatch.clock import Clock, RealClock

MODULES = ("HLTZMQ2Ds", "HLTDs2ZMQ", "HLTDQM2ZMQ", "ZMQDistributor", "ZMQCollector", "StorageSerializer")
MESSAGES = (
    ("info", "Processed {n} events, ready queue {q}"),
    ("info", "Received run control message {msg}"),
    ("result", "Event rate {r:.1f} Hz over the last 2000 messages"),
    ("warning", "Ready queue below {q} slots for {s} s"),
    ("error", "No event from tcp://hltin01:{port} for {s} s; worker hltwk{w:02d} may be stuck"),
    ("debug", "socket poll returned {n} events"),
)


@dataclass(frozen=True)
class Written:
    """One record as written: its sequence number, level and full text (all its lines)."""

    seq: int
    level: str
    text: str


class HltLogWriter:
    """Appends records to ``path`` and rotates it; ``written`` lists every record in order."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock | None = None, seed: int = 1,
                 timestamps: bool = True, traceback_every: int = 17, multiline_every: int = 23) -> None:
        self.path = Path(path)
        self.clock = clock or RealClock()
        self.rng = random.Random(seed)
        self.timestamps = timestamps
        self.traceback_every = traceback_every
        self.multiline_every = multiline_every
        self.seq = 0
        self.written: list[Written] = []
        self.rotations = 0
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, n: int = 1) -> list[Written]:
        """Write ``n`` records (flushed: a reader sees them at once); returns them."""
        out = [self._record() for _ in range(n)]
        self._file.write("".join(w.text + "\n" for w in out))
        self._file.flush()
        self.written += out
        return out

    def write_errors(self, n: int = 1) -> list[Written]:
        """Write ``n`` ERROR records with a Python traceback each: a worker caught in an exception
        loop (the error burst of the scenario and the demo). Numbered and listed like ``write``."""
        out = []
        for _ in range(n):
            self.seq += 1
            prefix = self._prefix()
            lines = [f"{prefix}[ERROR] Exception in event processing, event skipped seq={self.seq}  {{ module: HLTZMQ2Ds }}",
                     "Traceback (most recent call last):",
                     '  File "/hlt/scripts/hlt_worker.py", line 88, in process',
                     "    self.unpack(event)",
                     '  File "/hlt/scripts/hlt_worker.py", line 42, in unpack',
                     "    raise ValueError(f\"bad header {header!r}\")",
                     f"ValueError: bad header b'\\xff\\xff' (seq={self.seq})"]
            out.append(Written(self.seq, "error", "\n".join(lines)))
        self._file.write("".join(w.text + "\n" for w in out))
        self._file.flush()
        self.written += out
        return out

    def write_stuck(self, n: int = 1) -> list[Written]:
        """``n`` WARNING records of a kind the usual log has now and then ("Ready queue below …
        slots"): a known message repeating (a worker whose input is stuck)."""
        out = []
        for _ in range(n):
            self.seq += 1
            prefix = self._prefix()
            text = MESSAGES[3][1].format(q=self.rng.randrange(64), s=self.rng.randrange(1, 60))
            out.append(Written(self.seq, "warning", f"{prefix}[WARNING] {text} seq={self.seq}  {{ module: ZMQDistributor }}"))
        self._file.write("".join(w.text + "\n" for w in out))
        self._file.flush()
        self.written += out
        return out

    def write_exception(self) -> Written:
        """One FATAL record with a traceback of an exception the usual log never has (a KeyError
        in the DQM module): a new kind of error, for the log templates to find."""
        self.seq += 1
        prefix = self._prefix()
        lines = [f"{prefix}[FATAL] Unhandled exception in the DQM module, worker process stopped seq={self.seq}"
                 "  { module: HLTDQM2ZMQ }",
                 "Traceback (most recent call last):",
                 '  File "/hlt/scripts/hlt_worker.py", line 131, in histograms',
                 "    self.fill(event)",
                 '  File "/hlt/dqm/fill.py", line 57, in fill',
                 "    hist = self.booked[name]",
                 f"KeyError: 'ECLTrgClusterTiming' (seq={self.seq})"]
        w = Written(self.seq, "fatal", "\n".join(lines))
        self._file.write(w.text + "\n")
        self._file.flush()
        self.written.append(w)
        return w

    def write_raw(self, text: str) -> None:
        """Bytes as given (a partial line, garbage): not counted in ``written``."""
        self._file.write(text)
        self._file.flush()

    def rotate(self, mode: str = "rename", keep: int = 3) -> None:
        """``rename`` (logrotate's ``create``), ``copytruncate`` or ``recreate``; keeps ``keep`` old files."""
        for i in range(keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        first = self.path.with_name(f"{self.path.name}.1")
        if mode == "rename":
            self._file.close()
            os.replace(self.path, first)
            self._file = open(self.path, "a", encoding="utf-8")
        elif mode == "copytruncate":
            self._file.flush()
            shutil.copyfile(self.path, first)
            os.truncate(self.path, 0)  # the writer appends (O_APPEND): its next line lands at offset 0
        elif mode == "recreate":
            self._file.close()
            shutil.copyfile(self.path, first)
            os.unlink(self.path)
            self._file = open(self.path, "a", encoding="utf-8")
        else:
            raise ValueError(f"unknown rotation {mode!r}: rename, copytruncate or recreate")
        self.rotations += 1

    def close(self) -> None:
        self._file.close()

    def _prefix(self) -> str:
        """The line's absolute time as the HLT wrappers write it (or nothing)."""
        if not self.timestamps:
            return ""
        now = datetime.fromtimestamp(self.clock.time(), timezone.utc)
        return now.strftime("%Y-%m-%d %H:%M:%S.") + f"{now.microsecond // 1000:03d}Z "

    def _record(self) -> Written:
        self.seq += 1
        seq, rng = self.seq, self.rng
        level, template = MESSAGES[rng.randrange(len(MESSAGES))]
        text = template.format(n=rng.randrange(10_000), q=rng.randrange(64), msg=rng.choice(("START", "STOP", "ABORT")),
                               r=rng.uniform(500, 5000), s=rng.randrange(1, 60), port=5000 + rng.randrange(20),
                               w=rng.randrange(1, 13))
        module = rng.choice(MODULES)
        prefix = self._prefix()
        head = f"{prefix}[{level.upper()}] {text} seq={seq}"
        if seq % self.traceback_every == 0:
            level = "error"
            lines = [f"{prefix}[ERROR] Exception in event processing seq={seq}  {{ module: {module} }}",
                     "Traceback (most recent call last):",
                     '  File "/hlt/scripts/hlt_worker.py", line 88, in process',
                     "    self.unpack(event)",
                     '  File "/hlt/scripts/hlt_worker.py", line 42, in unpack',
                     "    raise ValueError(f\"bad header {header!r}\")",
                     f"ValueError: bad header b'\\x00\\x17' (seq={seq})"]
            return Written(seq, level, "\n".join(lines))
        if seq % self.multiline_every == 0:
            lines = [f"{head}  {{ module: {module} }}", "    worker hltwk01: 20 processes, 0 dead",
                     "    worker hltwk02: 20 processes, 2 dead"]
            return Written(seq, level, "\n".join(lines))
        return Written(seq, level, f"{head}  {{ module: {module} }}")


__all__ = ["MESSAGES", "MODULES", "HltLogWriter", "Written"]
