"""Pictures of masked views and their reconstructions."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .models.mae import MAE, patchify, unpatchify


@torch.no_grad()
def reconstruction_grid(model: MAE, inputs: torch.Tensor) -> np.ndarray:
    """Return an RGB ``uint8`` grid: one row per image of ``inputs`` (normalized, ``(B, 3, H, W)``).

    Columns: the original, then for each view its masked input and its reconstruction
    with the visible patches pasted back. With per-patch normalized targets the predicted
    patches are mapped back with each original patch's own mean and variance.
    """
    model.eval()
    out = model.reconstruct(inputs)
    pred, mask = out["pred"], out["mask"]  # (B, N, L, P), (B, N, L)
    patch = model.encoder.patch_size
    grid = (inputs.shape[2] // patch, inputs.shape[3] // patch)
    original = patchify(inputs, patch)  # (B, L, P)
    if model.norm_pix_loss:
        mean = original.mean(dim=-1, keepdim=True).unsqueeze(1)
        std = (original.var(dim=-1, keepdim=True) + 1.0e-6).sqrt().unsqueeze(1)
        pred = pred * std + mean
    keep = (1 - mask).unsqueeze(-1)
    masked_views = original.unsqueeze(1) * keep  # hidden patches black (0 in normalized units)
    pasted = original.unsqueeze(1) * keep + pred * (1 - keep)

    preprocessor = model.data_preprocessor
    mean_px = preprocessor.mean.view(1, 3, 1, 1)
    std_px = preprocessor.std.view(1, 3, 1, 1)

    def to_image(patches: torch.Tensor) -> torch.Tensor:
        pixels = unpatchify(patches, patch, grid) * std_px + mean_px
        return pixels.clamp(0, 255).byte()

    columns = [to_image(original)]
    for view in range(pred.shape[1]):
        columns += [to_image(masked_views[:, view]), to_image(pasted[:, view])]
    rows = [torch.cat([col[b] for col in columns], dim=2) for b in range(inputs.shape[0])]
    picture = torch.cat(rows, dim=1)  # (3, B * H, (1 + 2N) * W)
    return picture.permute(1, 2, 0).numpy()


def save_reconstruction_grid(model: MAE, inputs: torch.Tensor, path: str) -> None:
    """Write :func:`reconstruction_grid` as a PNG file."""
    Image.fromarray(reconstruction_grid(model, inputs)).save(path)
