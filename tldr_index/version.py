"""The library version (bottom layer: imports nothing; :mod:`tldr_index` re-exports it)."""

__version__ = "0.1.0"
