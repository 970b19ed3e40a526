"""MMEngine pretraining runner pieces: datasets, samplers, transforms and hooks."""
# Imported to register their modules.
from . import collate, datasets, downscale, hooks, reconstruction_hook, samplers, transforms  # noqa: F401
from .datasets import ImageFolder
from .samplers import SeededSampler

__all__ = ["ImageFolder", "SeededSampler"]
