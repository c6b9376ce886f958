"""RecSys Explorer engine: data, models, evaluation. No UI imports live here."""

__version__ = "0.1.0"
