"""``[sources.<name>] kind = "logfiles"``: the settings of the source, apart from its code so that
reading a config does not import what the source needs to run."""

from __future__ import annotations

import glob
import os
from fnmatch import fnmatch
from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, field_validator

from farmwatch.config.base import Duration, Regex
from farmwatch.sources.base import SourceConfig

COMPRESSED = ["*.gz", "*.bz2", "*.xz", "*.zst", "*.zip", "*.lz4"]


class LogFilesConfig(SourceConfig):
    """``[sources.<name>]`` with ``kind = "logfiles"``."""

    kind: Literal["logfiles"]
    paths: list[str] = Field(min_length=1)
    """Glob patterns (``**`` for any depth), re-globbed every cycle; relative ones are relative to the config file."""
    exclude: list[str] = Field(default_factory=lambda: list(COMPRESSED))
    """Globs over file names (or whole paths, when they contain ``/``) that are never read."""
    format: Literal["auto", "basf2", "syslog", "json", "raw"] = "auto"
    host: str | None = None
    """``host.name`` of the records (default: this machine's short name); syslog lines name their own."""
    service: str | None = None
    """``service.name`` (default: the ``service`` group of ``path_pattern``, else the file name up to its first dot)."""
    path_pattern: Regex | None = None
    """Regular expression searched in the path; groups ``service`` and ``host`` set those, other
    named groups become ``labels.<name>`` of every record (e.g. ``(?P<unit>hlt\\d+)``)."""
    timezone: str = "local"
    """Time zone of timestamps written without one (IANA name or ``local``)."""
    start_at: Literal["beginning", "end"] = "beginning"
    """Where to start in files that exist at the first start (no stored offset); new files always from the beginning."""
    max_bytes: ByteSize = ByteSize(8 * 1024 * 1024)
    max_line_bytes: ByteSize = ByteSize(64 * 1024)
    max_record_lines: int = Field(default=500, ge=1)
    multiline_wait: Duration = Field(default=2.0, ge=0)
    partial_wait: Duration = Field(default=10.0, ge=0)
    close_inactive: Duration = Field(default=300.0, gt=0)
    """A file no pattern matches any more (renamed away) is closed after this long without growing."""
    forget_after: Duration = Field(default=7 * 86400.0, gt=0)
    """The stored offset of a file that is not open (renamed away and closed, or gone) is forgotten after this long
    without reading from it, so rotations do not pile up offsets for ever. Should such a file match again it is
    read from the start; its records keep their ids, so the stores do not take them twice."""
    fingerprint_bytes: int = Field(default=1024, ge=16)
    keep_original: bool = True
    """Keep the raw line(s) as ``event.original``."""
    templates: bool = True
    """Give every record its message template (``log.template.id``, ``log.template.text``) and write
    ``log.template.count`` per template and host each cycle (docs/log-templates.md)."""

    def resolved(self, base_dir: Path) -> "LogFilesConfig":
        """Relative patterns made relative to ``base_dir`` (the config file's folder, like every
        path of a config), so a service finds its files whatever directory it was started in."""
        root = glob.escape(str(base_dir))
        paths = [p if os.path.isabs(os.path.expanduser(p)) else os.path.join(root, p) for p in self.paths]
        return self.model_copy(update={"paths": paths})

    def warnings(self) -> list[str]:
        """What is valid but probably wrong: patterns that match no file (``check-config``)."""
        return [unmatched(p) for p in self.paths if not matching_files(p, self.exclude)]

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from farmwatch.sources.logfiles.parse import zone  # the line parsers: only when a zone is named

        try:
            zone(value)
        except Exception:
            raise ValueError(f"unknown time zone {value!r}; expected an IANA name such as 'Asia/Tokyo' or 'local'") from None
        return value


CONFIG = LogFilesConfig


def matching_files(pattern: str, exclude: list[str]) -> list[str]:
    """The regular files ``pattern`` matches (``~`` expanded, ``**`` any depth), sorted, minus
    those ``exclude`` names (globs over the file name, or the whole path when they hold ``/``)."""
    found = []
    for path in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)):
        name = os.path.basename(path)
        if any(fnmatch(path if "/" in ex else name, ex) for ex in exclude):
            continue
        if os.path.isfile(path):
            found.append(path)
    return found


def unmatched(pattern: str) -> str:
    return f"paths: no file matches {pattern} (yet)"


__all__ = ["COMPRESSED", "CONFIG", "LogFilesConfig", "matching_files", "unmatched"]
