"""tldr-index: shrink embedding collections with learned linear maps that keep neighbours."""

from .version import __version__  # noqa: E402  (bottom layer: connectors use it too)

from .errors import (CheckpointError, InvalidInputError, InvalidParameterError,  # noqa: E402
                     ModelFormatError, NotFittedError, TLDRError)

#: Imported on first use (PEP 562): torch alone takes ~2 s to import, which every CLI call, even
#: ``--help``, would otherwise pay.
_LAZY = {"TLDR": ".reducer", "PCA": ".baselines"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def reducer_classes() -> dict:
    """Model classes by name, for :func:`load_model`."""
    from .baselines import PCA
    from .reducer import TLDR
    return {"TLDR": TLDR, "PCA": PCA}


def load_model(path):
    """Load any tldr-index model file (TLDR or PCA) written by ``.save(path)``."""
    from .base import BaseReducer

    reducer_classes()  # both classes defined, so registered (base.MODEL_CLASSES)
    return BaseReducer.load(path)


def open(uri, **target_options):  # noqa: A001  (tldr_index.open, like lancedb.connect)
    """Open a compact collection for ingestion and search: ``encode``, ``add``, ``search``.
    See :mod:`tldr_index.compact_collection`."""
    from .compact_collection import open as _open
    return _open(uri, **target_options)


__all__ = ["TLDR", "PCA", "load_model", "open", "TLDRError", "InvalidParameterError", "InvalidInputError",
           "NotFittedError", "ModelFormatError", "CheckpointError", "__version__"]
