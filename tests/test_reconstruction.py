from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train as train_tool
import visualize_reconstruction
from mimae.models import MAE
from mimae.visualization import reconstruction_grid

MIMAE_DEMO = "configs/pretrain/mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k_demo.py"


def _model():
    torch.manual_seed(0)
    return MAE(encoder=dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2),
               decoder=dict(embed_dim=16, depth=1, num_heads=2), num_views=2, mask_ratio=0.5,
               data_preprocessor=dict(type="ImgDataPreprocessor", mean=[100.0] * 3, std=[50.0] * 3))


def test_grid_layout_and_visible_patches():
    model = _model()
    pixels = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    inputs = model.data_preprocessor(dict(inputs=list(pixels)), training=False)["inputs"]
    torch.manual_seed(1)
    grid = reconstruction_grid(model, inputs)
    # 2 rows; columns: original, then masked view and reconstruction for each of 2 views.
    assert grid.shape == (2 * 32, (1 + 2 * 2) * 32, 3)
    assert np.abs(grid[:32, :32].astype(int) - pixels[0].permute(1, 2, 0).numpy().astype(int)).max() <= 1
    torch.manual_seed(1)
    mask = model.reconstruct(inputs)["mask"][0, 0].reshape(4, 4)
    row, col = (mask == 0).nonzero()[0].tolist()
    # A visible patch is pasted unchanged into the reconstruction column of view 0.
    pasted = grid[row * 8:(row + 1) * 8, 2 * 32 + col * 8:2 * 32 + (col + 1) * 8]
    original = pixels[0, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8].permute(1, 2, 0).numpy()
    assert np.abs(pasted.astype(int) - original.astype(int)).max() <= 1


def test_tool_and_hook_write_pictures(tmp_path):
    work_dir = tmp_path / "run"
    config = tmp_path / "with_pictures.py"
    config.write_text(f"_base_ = [{str(Path(MIMAE_DEMO).resolve())!r}]\n"
                      "custom_hooks = [dict(type='LossTraceHook'), "
                      "dict(type='ReconstructionHook', interval=2, num_images=2)]\n")
    train_tool.main([str(config), "--work-dir", str(work_dir), "--cfg-options", "train_cfg.max_iters=2",
                     "default_hooks.checkpoint.interval=2", "train_dataloader.num_workers=0",
                     "train_dataloader.persistent_workers=False"])
    hook_picture = Image.open(work_dir / "reconstructions" / "iter_2.png")
    assert hook_picture.size == ((1 + 2 * 4) * 64, 2 * 64)
    out = tmp_path / "recon.png"
    visualize_reconstruction.main([str(work_dir / "iter_2.pth"), "data/demo/coco/images",
                                   "--num-images", "3", "--out", str(out)])
    assert Image.open(out).size == ((1 + 2 * 4) * 64, 3 * 64)


@pytest.mark.parametrize("damage", ["truncated", "not an image"])
def test_damaged_image_named(damage, tmp_path):
    source = sorted(Path("data/demo/coco/images").glob("*.jpg"))[0].read_bytes()
    path = tmp_path / "photo.jpg"
    path.write_bytes(source[: len(source) // 3] if damage == "truncated" else b"<html>404 Not Found</html>")
    with pytest.raises(SystemExit, match=r"cannot decode .*photo.jpg: .* Replace the file"):
        visualize_reconstruction.load_images(str(path), (64, 64), 1)


def test_missing_image_source_named(tmp_path):
    with pytest.raises(SystemExit, match="image file or folder not found: .*nothing_here"):
        visualize_reconstruction.load_images(str(tmp_path / "nothing_here"), (64, 64), 1)
