"""Patch masks for MAE (one random view) and MI-MAE (N views per image).

A mask set is described by ``ids_keep`` ``(B, N, K)``: the indices of the K visible
patches of each of the N views, and ``mask`` ``(B, N, L)`` with 1 for a masked patch
and 0 for a visible one. Only patch tokens are indexed; the cls token is never masked.
"""
from __future__ import annotations

import torch

MASK_STRATEGIES = ("orthogonal", "independent")


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Return the number of visible patches per view, at least 1."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(num_patches * (1.0 - mask_ratio)))


def check_mask_config(num_patches: int, num_views: int, mask_ratio: float, strategy: str) -> None:
    """Raise ``ValueError`` when the views cannot be drawn as requested."""
    if strategy not in MASK_STRATEGIES:
        raise ValueError(f"unknown mask strategy {strategy!r}; choose one of {MASK_STRATEGIES}")
    if num_views < 1:
        raise ValueError(f"num_views must be at least 1, got {num_views}")
    keep = num_visible(num_patches, mask_ratio)
    if strategy == "orthogonal" and keep * num_views > num_patches:
        max_ratio = 1.0 - 1.0 / num_views
        raise ValueError(
            f"{num_views} orthogonal views of {keep} visible patches do not fit a grid of "
            f"{num_patches} patches at mask_ratio={mask_ratio}; use mask_ratio >= {max_ratio:.4f}, "
            f"fewer views, or mask_strategy='independent'"
        )


def make_masks(
    batch_size: int,
    num_patches: int,
    num_views: int,
    mask_ratio: float,
    strategy: str = "orthogonal",
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_views`` masks per image.

    ``orthogonal`` splits one random permutation of the grid into disjoint visible
    sets; with ``mask_ratio = 1 - 1/N`` the N views cover every patch exactly once.
    ``independent`` draws each view from its own permutation, so views may overlap.

    Returns:
        ``ids_keep`` ``(B, N, K)`` (sorted within each view) and ``mask`` ``(B, N, L)``.
    """
    check_mask_config(num_patches, num_views, mask_ratio, strategy)
    keep = num_visible(num_patches, mask_ratio)
    rows = batch_size if strategy == "orthogonal" else batch_size * num_views
    noise = torch.rand(rows, num_patches, device=device, generator=generator)
    order = noise.argsort(dim=1)
    if strategy == "orthogonal":
        ids_keep = order[:, : keep * num_views].reshape(batch_size, num_views, keep)
    else:
        ids_keep = order[:, :keep].reshape(batch_size, num_views, keep)
    ids_keep = ids_keep.sort(dim=-1).values
    mask = torch.ones(batch_size, num_views, num_patches, device=order.device)
    mask.scatter_(2, ids_keep, 0.0)
    return ids_keep, mask
