"""Save a PNG grid of originals, masked views and reconstructions from a pretraining checkpoint.

Each row is one image: the original, then a masked view and its reconstruction for every
view the model draws (4 for MI-MAE). Example::

    python tools/visualize_reconstruction.py work_dirs/demo/pretrain_mimae/iter_500.pth \
        data/demo/coco/images --num-images 4 --out recon.png
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

import numpy as np
import torch
from PIL import Image

from mimae.engine import config_from_checkpoint, load_run_checkpoint
from mimae.registry import build_model
from mimae.visualization import save_reconstruction_grid
from pretrain.datasets import list_images


def load_images(source: str, size: tuple[int, int], count: int) -> torch.Tensor:
    """Return ``count`` images (a folder or one file) resized to ``size`` as uint8 ``(B, 3, H, W)``."""
    if not osp.exists(source):
        raise SystemExit(f"image file or folder not found: {source}")
    paths = [source] if osp.isfile(source) else [osp.join(source, name) for name in list_images(source)]
    if not paths:
        raise SystemExit(f"no images found in {source}")
    images = []
    for path in paths[:count]:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB").resize((size[1], size[0]), Image.BICUBIC)
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for unreadable or truncated files
            raise SystemExit(f"cannot decode {path}: {err}. Replace the file or pass another image or folder") from err
        images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
    return torch.stack(images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Visualize masked views and reconstructions")
    parser.add_argument("checkpoint", help="pretraining checkpoint written by tools/train.py")
    parser.add_argument("images", help="an image file or a folder of images")
    parser.add_argument("--num-images", type=int, default=4, help="rows of the grid")
    parser.add_argument("--seed", type=int, default=0, help="seed of the masks")
    parser.add_argument("--out", default="reconstruction.png", help="output PNG file")
    args = parser.parse_args(argv)

    import mimae.models  # noqa: F401  (registers the models)

    checkpoint = load_run_checkpoint(args.checkpoint)
    cfg = config_from_checkpoint(checkpoint)
    if cfg is None:
        raise SystemExit(f"{args.checkpoint} stores no config; pass a checkpoint written by tools/train.py")
    model = build_model(cfg.model)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    size = tuple(side * model.encoder.patch_size for side in model.encoder.grid_size)
    pixels = load_images(args.images, size, args.num_images)
    torch.manual_seed(args.seed)
    inputs = model.data_preprocessor(dict(inputs=list(pixels)), training=False)["inputs"]
    save_reconstruction_grid(model, inputs, args.out)
    print(f"wrote {args.out}: {len(pixels)} images x {model.num_views} views")


if __name__ == "__main__":
    sys.exit(main())
