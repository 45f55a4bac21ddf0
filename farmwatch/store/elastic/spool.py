"""The on-disk spool: what the cluster could not take yet, in order, bounded, across restarts."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence


from farmwatch.store.elastic.documents import Pair

log = logging.getLogger("farmwatch.store.elastic")


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


__all__ = ["Spool"]
