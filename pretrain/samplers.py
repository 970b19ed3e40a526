"""Sampling that makes each sample's augmentation a function of (seed, epoch, index).

MMEngine seeds every data-loader worker with the same fixed number when it starts. With
``persistent_workers=True`` a worker's random stream then runs on across epochs, but a
resumed run starts fresh workers, so after ``--resume`` of an epoch-based run the crops
and flips differ from those of the uninterrupted run. :class:`SeededSampler` attaches a
seed to every index it yields, and :class:`pretrain.datasets.ImageFolder` runs the
pipeline of that sample under this seed. The augmentation then no longer depends on the
number of workers, on whether they persist, or on where a run was resumed.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from mmengine.dataset import DefaultSampler

from mimae.engine.runner import capture_random_state, restore_random_state
from mimae.registry import DATA_SAMPLERS


class SeededIndex(int):
    """A data set index that carries the seed for the random transforms of its sample."""

    seed: int

    def __new__(cls, index: int, seed: int) -> "SeededIndex":
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __reduce__(self):
        # Sent to data-loader workers through a queue: keep the seed when pickled.
        return SeededIndex, (int(self), self.seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Return a 32-bit seed for sample ``index`` in ``epoch`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_random_state(seed: int):
    """Seed torch (CPU), numpy and Python's ``random`` for the block, then restore their state.

    Restoring matters when ``num_workers=0``: the pipeline then runs in the training
    process, whose random state also draws the masks.
    """
    state = capture_random_state()
    random.seed(seed)
    np.random.seed(seed)
    # The CPU generator only, because torch.manual_seed would also reseed the GPU generators.
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        restore_random_state(state)


@DATA_SAMPLERS.register_module()
class SeededSampler(DefaultSampler):
    """``DefaultSampler`` whose indices carry a per-sample, per-epoch seed.

    The order of samples is exactly ``DefaultSampler``'s for the same ``seed``, ``shuffle``
    and epoch (``DistSamplerSeedHook`` sets the epoch). Data sets that read
    ``SeededIndex.seed`` (``ImageFolder`` does) draw the sample's augmentation from it.
    """

    def __init__(self, dataset, *args, **kwargs) -> None:
        if not getattr(dataset, "accepts_sample_seed", False):
            # Wrappers such as RepeatDataset or ConcatDataset compute new plain-int indices,
            # which would drop the seed and with it exact resume, without any error.
            raise TypeError(
                f"SeededSampler needs a data set that applies the per-sample seed (ImageFolder does); "
                f"got {type(dataset).__name__}. Use the data set directly, or DefaultSampler")
        super().__init__(dataset, *args, **kwargs)

    def __iter__(self) -> Iterator[SeededIndex]:
        for index in super().__iter__():
            yield SeededIndex(index, sample_seed(self.seed, self.epoch, index))
