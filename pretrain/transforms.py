"""Pretraining transforms: PIL decoding, random resized crop, flip and packing.

Images stay RGB from decoding onwards, so the data preprocessor needs no channel swap.
"""
from __future__ import annotations

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.logging import print_log
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import RandomResizedCrop as TVRandomResizedCrop
from torchvision.transforms.functional import hflip

from mimae.registry import TRANSFORMS


@TRANSFORMS.register_module()
class LoadImagePIL(BaseTransform):
    """Decode ``img_path`` to an RGB PIL image (grayscale, palette and CMYK converted).

    Args:
        draft_size: when set, JPEGs decode at the smallest DCT scale that is still at
            least this large on both sides, which cuts decoding time several-fold for
            small training crops.
    """

    def __init__(self, draft_size: int | None = None) -> None:
        self.draft_size = draft_size
        self.num_failed = 0

    def transform(self, results: dict) -> dict | None:
        path = results["img_path"]
        try:
            with Image.open(path) as img:
                if self.draft_size is not None and img.format == "JPEG":
                    img.draft("RGB", (self.draft_size, self.draft_size))
                img = img.convert("RGB")
        except (OSError, SyntaxError) as err:
            # Returning None makes the dataset draw another sample; the count is logged.
            self.num_failed += 1
            print_log(f"failed to decode {path} ({err}); skipped, {self.num_failed} so far",
                      logger="current", level=30)
            return None
        results["img"] = img
        results["ori_shape"] = (img.height, img.width)
        return results


@TRANSFORMS.register_module()
class RandomResizedCropPIL(BaseTransform):
    """Random crop of random area and aspect ratio, resized to ``size`` (MAE's augmentation)."""

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        interpolation: str = "bicubic",
    ) -> None:
        self.crop = TVRandomResizedCrop(
            size, scale=tuple(scale), ratio=tuple(ratio), interpolation=InterpolationMode(interpolation)
        )

    def transform(self, results: dict) -> dict:
        results["img"] = self.crop(results["img"])
        return results


@TRANSFORMS.register_module()
class RandomFlipPIL(BaseTransform):
    """Horizontal flip with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def transform(self, results: dict) -> dict:
        if torch.rand(()) < self.prob:
            results["img"] = hflip(results["img"])
        return results


@TRANSFORMS.register_module()
class PackImage(BaseTransform):
    """Pack the image as ``inputs``: a ``uint8`` tensor ``(3, H, W)``."""

    def transform(self, results: dict) -> dict:
        array = np.asarray(results["img"], dtype=np.uint8)
        inputs = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
        return dict(inputs=inputs, data_samples=dict(img_path=results["img_path"]))
