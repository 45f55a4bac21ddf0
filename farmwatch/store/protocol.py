"""What the rest of farmwatch may ask of a store: the ``SampleStore`` protocol.

The embedded ``SQLiteStore`` is the one implementation today; the protocol is what sources,
detection, alerting context and the service runner are typed against, so a part says which
store methods it relies on and a test store (or another backend) can stand in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, runtime_checkable

from farmwatch.matchers import MatcherSpec
from farmwatch.model import Batch, Sample

if TYPE_CHECKING:
    import pandas as pd


@runtime_checkable
class SampleStore(Protocol):
    """Samples and states in, pandas frames out (epoch seconds at the boundary)."""

    def write(self, items: Batch | Sample | Iterable[Batch] | Iterable[Sample]) -> int: ...

    def query(self, name: str | None = None, matchers: MatcherSpec = None, *, since: float | None = None,
              until: float | None = None, form: str = "long", limit: int | None = None) -> pd.DataFrame: ...

    def series(self, name: str | None = None, matchers: MatcherSpec = None) -> pd.DataFrame: ...

    def rollup(self, name: str | None = None, matchers: MatcherSpec = None, *, since: float | None = None,
               until: float | None = None, resolution: str = "1m") -> pd.DataFrame: ...

    def apply_retention(self, now: float | None = None) -> int: ...

    def cursors(self, source: str) -> dict[str, Any]: ...

    def save_cursors(self, source: str, cursors: Mapping[str, Any], *, drop: Iterable[str] = ()) -> None: ...

    def close(self) -> None: ...


__all__ = ["SampleStore"]
