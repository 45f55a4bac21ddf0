"""Configuration: the building blocks every section uses, the shared sections, and the loader.

    from farmwatch.config.loader import load
    settings = load("farmwatch.toml")        # or $FARMWATCH_CONFIG, ./farmwatch.toml, /etc/farmwatch/
    settings.store.path, settings.alerting.rules, settings.sources["hlt"].interval

``base`` (``Section``, ``Duration``, ``ConfigError``) and ``sections`` sit at the bottom of the
package graph so that every part can declare its own section; ``loader`` assembles a whole config
from the parts' sections and so sits above them (import it from ``farmwatch.config.loader``).
The names below are imported when first used (PEP 562), so that ``farmwatch --help`` does not
pay for building the config models.
"""

from pathlib import Path

from farmwatch.lazy import exports

ENV = "FARMWATCH_CONFIG"
"""The environment variable naming the config file when ``-c`` is not given."""
DEFAULT_PATHS = (Path("farmwatch.toml"), Path("/etc/farmwatch/farmwatch.toml"))
"""Where a config is looked for when neither ``-c`` nor ``$FARMWATCH_CONFIG`` names one."""

_WHERE = {
    "ConfigError": "base", "Duration": "base", "Section": "base",
    "AlertingSettings": "sections", "InhibitSettings": "sections", "LogSettings": "sections",
    "NotifierSettings": "sections", "SelfMetricsSettings": "sections", "StoreSettings": "sections",
}

__all__ = ["DEFAULT_PATHS", "ENV", *sorted(_WHERE)]

__getattr__, __dir__ = exports(__name__, _WHERE)
