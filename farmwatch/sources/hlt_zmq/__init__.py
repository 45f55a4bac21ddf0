"""HLT ZeroMQ monitor endpoints: the JSON state dumps of distributors, collectors, histogram servers.

The source in one place: ``config`` (its settings; reading a config imports only this), ``source``
(the code), ``sample.toml`` (a commented collector config: ``collectors/`` is generated from it) and
``series.md`` (the series it writes: part of ``docs/series.md``).
"""

__all__: list[str] = []
