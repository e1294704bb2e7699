"""sslsearch: hyperparameter search for self-supervised representation learning."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslsearch import moved

if TYPE_CHECKING:
    from sslsearch.parts.networks import Backbone

__version__ = "0.1.0"
__all__ = ["__version__", "load_encoder"]

# Sweeps saved before the modules moved into their floors pickled the old names (sslsearch.moved).
moved.install()


def load_encoder(path: str | Path, device: Any = "cpu") -> Backbone:
    """An exported encoder (a sweep's ``best_encoder`` folder or its ``encoder.safetensors``) as a
    ready ``nn.Module``: the backbone, weights loaded, in eval mode.

    Imported lazily: ``import sslsearch`` (and ``sslsearch.train``) stays torch-only and cheap.
    """
    from sslsearch.reporting.export import load_encoder as _load

    return _load(path, device)
