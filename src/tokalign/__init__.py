"""tokalign: an alignment experiment runner for token-level methods."""

__version__ = "0.1.0"
