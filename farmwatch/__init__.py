"""farmwatch: monitoring and alerting for the Belle II HLT farm."""

__version__ = "0.1.0"
