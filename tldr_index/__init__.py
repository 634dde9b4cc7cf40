"""tldr-index: shrink embedding collections with learned linear maps that keep neighbours."""

__version__ = "0.1.0"

from .baselines import PCA  # noqa: E402
from .errors import (CheckpointError, InvalidInputError, InvalidParameterError,  # noqa: E402
                     ModelFormatError, NotFittedError, TLDRError)
from .reducer import TLDR  # noqa: E402


def reducer_classes() -> dict:
    """Model classes by name, for :func:`load_model`."""
    return {"TLDR": TLDR, "PCA": PCA}


def load_model(path):
    """Load any tldr-index model file (TLDR or PCA) written by ``.save(path)``."""
    from .base import BaseReducer
    return BaseReducer.load(path)


def open(uri, **target_options):  # noqa: A001  (tldr_index.open, like lancedb.connect)
    """Open a compact collection for ingestion and search: ``encode``, ``add``, ``search``.
    See :mod:`tldr_index.compact_collection`."""
    from .compact_collection import open as _open
    return _open(uri, **target_options)


__all__ = ["TLDR", "PCA", "load_model", "open", "TLDRError", "InvalidParameterError", "InvalidInputError",
           "NotFittedError", "ModelFormatError", "CheckpointError", "__version__"]
