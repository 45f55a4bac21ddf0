"""Configuration: the building blocks every section uses, and the shared sections.

    from farmwatch.config.loader import load
    settings = load("farmwatch.toml")        # or $FARMWATCH_CONFIG, ./farmwatch.toml, /etc/farmwatch/
    settings.store.path, settings.alerting.rules, settings.sources["hlt"].interval

``base`` (``Section``, ``Duration``, ``ConfigError``) and ``sections`` sit at the bottom of the
package graph so that every part can declare its own section; ``loader`` assembles a whole config
from the parts' sections and so sits above them (import it from ``farmwatch.config.loader``).
"""

from farmwatch.config.base import ConfigError, Duration, Section
from farmwatch.config.sections import (AlertingSettings, InhibitSettings, LogSettings, NotifierSettings,
                                       SelfMetricsSettings, StoreSettings)

__all__ = ["AlertingSettings", "ConfigError", "Duration", "InhibitSettings", "LogSettings", "NotifierSettings",
           "Section", "SelfMetricsSettings", "StoreSettings"]
