"""tldr-index: shrink embedding collections with learned linear maps that keep neighbours."""

__version__ = "0.1.0"
