"""Unlabeled image datasets for pretraining.

Files are checked when the dataset is built, so a missing, empty or unreadable file
stops the run before the first iteration instead of hours into it.
"""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

from mmengine.dataset import BaseDataset
from mmengine.logging import print_log

from mimae.data_checks import IMAGE_EXTENSIONS, VERIFY_MODES, find_bad_images
from mimae.registry import DATASETS

from .downscale import downscale_images
from .samplers import seeded_random_state

# The options of downscale_images that a config sets; the data set supplies paths and folder.
DOWNSCALE_KEYS = set(inspect.signature(downscale_images).parameters) - {"paths", "folder"}

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "find_bad_images", "list_images", "read_file_list"]


def list_images(root: str | os.PathLike) -> list[str]:
    """Return the image files under ``root`` (recursively), sorted, as relative paths."""
    root = Path(root)
    files = [
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return sorted(files)


def read_file_list(ann_file: str) -> list[str]:
    """Read image names from a text file (one per line) or a COCO json (``images[].file_name``)."""
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"annotation file not found: {ann_file!r}; fix ann_file or drop it")
    if ann_file.endswith(".json"):
        with open(ann_file) as f:
            try:
                images = json.load(f)["images"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{ann_file!r} is not a COCO json with an 'images' list ({err}); "
                    "pass a COCO annotation file or a text file with one image path per line"
                ) from err
        return [image["file_name"] for image in images]
    with open(ann_file) as f:
        return [line.split()[0] for line in f if line.strip()]


@DATASETS.register_module()
class ImageFolder(BaseDataset):
    """Images from a plain folder or an ImageNet-style tree (class folders are ignored).

    Args:
        data_root: root folder of the data set.
        data_prefix: ``dict(img_path='train')``: sub-folder with the images.
        ann_file: optional text file (one relative path per line, ImageNet ``train.txt``
            style) or COCO json whose ``file_name`` entries select the images.
        verify: how far to check each file at start. ``'none'``: exists and is not empty.
            ``'header'``: the header is read, and a JPEG or PNG without its end marker is
            decoded in full, which catches truncated files. ``'full'``: every file is decoded.
        on_bad_image: ``'error'`` raises with the list of bad files; ``'skip'`` drops them
            and logs how many were dropped.
        downscale: ``dict(short_side=160, cache_dir=None, quality=95, workers=0)`` reads
            each image from a copy whose shorter side is ``short_side`` pixels, written
            once into a sub-folder per short side and quality of ``cache_dir`` (default
            ``~/.cache/mimae/downscaled/<folder hash>``) when the data set is built (see
            :mod:`pretrain.downscale`). For a ``RandomResizedCrop`` to side ``s`` with
            smallest area fraction ``a``, a ``short_side`` of at least ``s / sqrt(a)`` keeps
            every crop from being enlarged. ``None`` (default) reads the files as they are.
    """

    accepts_sample_seed = True  # __getitem__ applies the seed of a SeededSampler index

    def __init__(
        self,
        data_root: str = "",
        data_prefix: dict | None = None,
        ann_file: str = "",
        verify: str = "header",
        on_bad_image: str = "error",
        downscale: dict | None = None,
        pipeline: list | None = None,
        **kwargs,
    ) -> None:
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        if downscale is not None:
            unknown = set(downscale) - DOWNSCALE_KEYS
            if unknown or "short_side" not in downscale:
                raise ValueError(f"downscale must be a dict with short_side and optionally "
                                 f"{sorted(DOWNSCALE_KEYS - {'short_side'})}, got {downscale!r}")
        self.verify = verify
        self.on_bad_image = on_bad_image
        self.downscale = downscale
        super().__init__(
            ann_file=ann_file,
            data_root=data_root,
            data_prefix=data_prefix or dict(img_path=""),
            pipeline=pipeline or [],
            **kwargs,
        )

    def __getitem__(self, idx: int) -> dict:
        # An index from SeededSampler fixes the random transforms of this sample.
        seed = getattr(idx, "seed", None)
        if seed is None:
            return super().__getitem__(idx)
        with seeded_random_state(seed):
            return super().__getitem__(int(idx))

    def load_data_list(self) -> list[dict]:
        folder = self.data_prefix.get("img_path", self.data_root)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"image folder not found: {folder!r}; check data_root and data_prefix")
        names = read_file_list(self.ann_file) if self.ann_file else list_images(folder)
        if not names:
            raise ValueError(
                f"no images found in {folder!r} (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                "point data_root/data_prefix at a folder with images"
            )
        paths = [os.path.join(folder, name) for name in names]
        bad = find_bad_images(paths, self.verify)
        if bad:
            listing = "\n".join(f"  {path}: {reason}" for path, reason in bad[:20])
            more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
            if self.on_bad_image == "error":
                raise ValueError(
                    f"{len(bad)} of {len(paths)} images cannot be used:\n{listing}{more}\n"
                    "remove or replace them, or set on_bad_image='skip' in the dataset config"
                )
            print_log(f"skipping {len(bad)} of {len(paths)} unreadable images:\n{listing}{more}",
                      logger="current", level=30)
            bad_paths = {path for path, _ in bad}
            paths = [path for path in paths if path not in bad_paths]
            if not paths:
                raise ValueError(f"every image in {folder!r} is unreadable; nothing to train on")
        if self.downscale is not None:
            paths = downscale_images(paths, folder, **self.downscale)
        return [dict(img_path=path) for path in paths]
