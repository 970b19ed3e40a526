"""MMEngine pretraining runner pieces: datasets, transforms and hooks."""
from . import datasets, hooks, reconstruction_hook, transforms  # noqa: F401  (register modules)
from .datasets import ImageFolder

__all__ = ["ImageFolder"]
