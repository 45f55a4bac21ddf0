"""Application log files: tailed across rotation, parsed, shipped at least once and stored once.

The source in one place: ``config`` (its settings; reading a config imports only this), ``source``
(the code) and ``parse`` (the log line formats), ``sample.toml`` (a commented collector config:
``collectors/`` is generated from it) and ``series.md`` (the series it writes: part of
``docs/series.md``).
"""

__all__: list[str] = []
