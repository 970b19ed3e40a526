"""Non-overlapping window partition of a token grid, as used by ViTDet's windowed blocks.

Grids are ``(H, W)`` in that order everywhere and need not be square. The last rows and
columns are zero-padded up to a multiple of the window. :func:`window_padding_mask` marks
which tokens of each window are real, so attention can ignore the padding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a token grid into ``window x window`` windows, zero-padding the bottom and right.

    Args:
        x: tokens ``(B, H, W, C)``.
        window: window side in tokens.

    Returns:
        Windows ``(B * nH * nW, window, window, C)`` ordered batch, then window row, then
        window column, and the padded grid ``(Hp, Wp)`` with ``nH = Hp / window``.
    """
    if window < 1:
        raise ValueError(f"window size must be a positive integer, got {window}")
    batch, height, width, channels = x.shape
    pad_h = (window - height % window) % window
    pad_w = (window - width % window) % window
    if pad_h or pad_w:
        # F.pad lists the last dimension first: (C before, C after, W before, W after, H before, H after).
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    rows, cols = padded_h // window, padded_w // window
    x = x.reshape(batch, rows, window, cols, window, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(batch * rows * cols, window, window, channels)
    return windows, (padded_h, padded_w)


def window_unpartition(
    windows: torch.Tensor,
    window: int,
    padded_hw: tuple[int, int],
    hw: tuple[int, int],
) -> torch.Tensor:
    """Reassemble windows from :func:`window_partition` into a grid and crop the padding.

    Args:
        windows: ``(B * nH * nW, window, window, C)``.
        window: window side in tokens.
        padded_hw: padded grid ``(Hp, Wp)`` returned by :func:`window_partition`.
        hw: original grid ``(H, W)``.

    Returns:
        Tokens ``(B, H, W, C)``.
    """
    padded_h, padded_w = padded_hw
    height, width = hw
    if padded_h % window or padded_w % window:
        raise ValueError(f"padded grid {padded_h}x{padded_w} is not a multiple of the window {window}")
    rows, cols = padded_h // window, padded_w // window
    if windows.shape[0] % (rows * cols):
        raise ValueError(
            f"{windows.shape[0]} windows cannot come from a {padded_h}x{padded_w} grid "
            f"with window {window} ({rows * cols} windows per image)"
        )
    batch = windows.shape[0] // (rows * cols)
    channels = windows.shape[-1]
    x = windows.reshape(batch, rows, cols, window, window, channels)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, channels)
    return x[:, :height, :width].contiguous()


def window_padding_mask(hw: tuple[int, int], window: int, device: torch.device | None = None) -> torch.Tensor:
    """Return ``(nH * nW, window * window)`` booleans, True where a window token is a real grid token.

    The windows are in the order of :func:`window_partition` for one image. Repeat the mask
    ``B`` times along dimension 0 to match a batch of windows.
    """
    height, width = hw
    ones = torch.ones(1, height, width, 1, dtype=torch.bool, device=device)
    mask, _ = window_partition(ones, window)  # (nH * nW, window, window, 1), False on padding
    return mask.reshape(mask.shape[0], window * window)
