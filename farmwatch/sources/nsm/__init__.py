"""NSM (Belle II slow control) variables, read through bridges; never written.

The source in one place: ``config`` (its settings; reading a config imports only this), ``source``
(the code), ``sample.toml`` (a commented collector config: ``collectors/`` is generated from it) and
``series.md`` (the series it writes: part of ``docs/series.md``).
"""

__all__: list[str] = []
