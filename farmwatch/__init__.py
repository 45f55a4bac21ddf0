"""farmwatch: monitoring and alerting for the Belle II HLT farm."""

__version__ = "0.1.0"

__all__ = ["__version__"]
