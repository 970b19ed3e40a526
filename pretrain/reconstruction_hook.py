"""Training hook that saves reconstruction pictures during pretraining."""
from __future__ import annotations

import os

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mimae.registry import HOOKS
from mimae.visualization import save_reconstruction_grid


@HOOKS.register_module()
class ReconstructionHook(Hook):
    """Every ``interval`` iterations, write ``work_dir/reconstructions/iter_<i>.png``.

    The first ``num_images`` images of the first training batch are kept and reused, so
    the pictures of one run show the same images as training goes on. Masks are drawn
    with ``seed`` and the global random state is left untouched.
    """

    priority = "LOW"

    def __init__(self, interval: int = 1000, num_images: int = 4, seed: int = 0) -> None:
        self.interval = interval
        self.num_images = num_images
        self.seed = seed
        self.images: list[torch.Tensor] | None = None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.images is None and data_batch is not None:
            self.images = [img.clone() for img in data_batch["inputs"][: self.num_images]]
        if self.images is None or (runner.iter + 1) % self.interval != 0 or runner.rank != 0:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        folder = os.path.join(runner.work_dir, "reconstructions")
        os.makedirs(folder, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            inputs = model.data_preprocessor(dict(inputs=list(self.images)), training=False)["inputs"]
            save_reconstruction_grid(model, inputs, os.path.join(folder, f"iter_{runner.iter + 1}.png"))
        model.train()
