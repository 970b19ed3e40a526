"""Position-embedding helpers: 2-D sin-cos tables and resampling of learned tables.

All helpers take the patch grid as ``(height, width)`` and never assume a square grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Return the 1-D sin-cos embedding ``(len(positions), embed_dim)``."""
    if embed_dim % 2 != 0:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(embed_dim: int, grid_hw: tuple[int, int], num_prefix_tokens: int = 0) -> torch.Tensor:
    """Return the fixed 2-D sin-cos table ``(1, num_prefix_tokens + H * W, embed_dim)``.

    The first half of the channels encodes the column index and the second half the
    row index, which is the layout of the official MAE checkpoints, so a table
    regenerated here equals the one stored in those files. Prefix (cls) slots are zero.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {embed_dim}")
    height, width = grid_hw
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    table = torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)
    table = torch.cat([torch.zeros(num_prefix_tokens, embed_dim, dtype=table.dtype), table], dim=0)
    return table.float().unsqueeze(0)


def resize_abs_pos_embed(
    pos_embed: torch.Tensor,
    src_hw: tuple[int, int],
    dst_hw: tuple[int, int],
    num_prefix_tokens: int = 0,
    keep_prefix: bool = True,
) -> torch.Tensor:
    """Resample a learned table ``(1, prefix + Hs * Ws, C)`` to ``dst_hw`` bicubically.

    Returns ``(1, prefix + Hd * Wd, C)``, or ``(1, Hd * Wd, C)`` when ``keep_prefix`` is False.
    """
    src_h, src_w = src_hw
    expected = num_prefix_tokens + src_h * src_w
    if pos_embed.shape[1] != expected:
        raise ValueError(
            f"position table has {pos_embed.shape[1]} slots, expected {num_prefix_tokens} prefix "
            f"+ {src_h}x{src_w} grid = {expected}"
        )
    prefix = pos_embed[:, :num_prefix_tokens]
    grid = pos_embed[:, num_prefix_tokens:]
    if tuple(dst_hw) != (src_h, src_w):
        dim = grid.shape[-1]
        grid = grid.reshape(1, src_h, src_w, dim).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=tuple(dst_hw), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, dst_hw[0] * dst_hw[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1) if keep_prefix else grid


def infer_grid(num_patches: int, hint_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """Guess the grid of a stored table: ``hint_hw`` when it fits, else the square root."""
    if hint_hw is not None and hint_hw[0] * hint_hw[1] == num_patches:
        return tuple(hint_hw)
    side = int(round(num_patches**0.5))
    if side * side != num_patches:
        raise ValueError(
            f"cannot infer the patch grid of a position table with {num_patches} patch slots; "
            "pass the source grid explicitly"
        )
    return side, side


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Resample a relative-position table ``(2 * S - 1, C)`` to ``(length, C)`` linearly."""
    if rel_pos.shape[0] == length:
        return rel_pos
    table = rel_pos.float().t().unsqueeze(0)  # (1, C, 2S-1)
    table = F.interpolate(table, size=length, mode="linear", align_corners=False)
    return table.squeeze(0).t().to(rel_pos.dtype)
