"""MMEngine pretraining runner pieces: datasets, samplers, transforms and hooks."""
from . import collate, datasets, downscale, hooks, reconstruction_hook, samplers, transforms  # noqa: F401  (register modules)
from .datasets import ImageFolder
from .samplers import SeededSampler

__all__ = ["ImageFolder", "SeededSampler"]
