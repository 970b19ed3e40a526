"""The ViT encoder used for MAE and MI-MAE pretraining."""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import Block, LayerNorm, PatchEmbed, run_blocks
from .pos_embed import sincos_2d


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


class VisionTransformer(nn.Module):
    """ViT encoder with a cls token and a fixed 2-D sin-cos position embedding.

    The embedding is stored as ``pos_embed`` ``(1, 1 + H * W, C)`` for ``img_size``
    (as in the official MAE checkpoints) and regenerated exactly for any other grid,
    square or not.

    Args:
        img_size: default input size ``H`` or ``(H, W)``.
        patch_size: patch side in pixels.
        embed_dim, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP ratio.
        drop_path_rate: stochastic-depth rate of the last block (linear from 0).
        with_cp: use activation checkpointing in the blocks.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        img_h, img_w = _pair(img_size)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.grid_size = (img_h // patch_size, img_w // patch_size)
        self.with_cp = with_cp
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, self.grid_size, 1), requires_grad=False)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, drop_path=rate) for rate in rates
        )
        self.norm = LayerNorm(embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """Initialize as MAE does: xavier linears and patch projection, small cls token."""
        nn.init.xavier_uniform_(self.patch_embed.proj.weight.view(self.embed_dim, -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def pos_embed_for(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Return the ``(1, 1 + H * W, C)`` table for ``grid_hw``."""
        if tuple(grid_hw) == self.grid_size:
            return self.pos_embed
        return sincos_2d(self.embed_dim, grid_hw, 1).to(self.pos_embed)

    def embed_patches(
        self, imgs: torch.Tensor, ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Return patch tokens with position added ``(B, L, C)`` and the grid.

        With ``ids`` ``(B, K)``, embed only those patches; the tokens are then ``(B, K, C)``
        and equal the full tokens gathered at ``ids``.
        """
        tokens, grid = self.patch_embed(imgs, ids)
        pos_embed = self.pos_embed_for(grid)[:, 1:]
        if ids is not None:
            pos_embed = pos_embed[0][ids]
        return tokens + pos_embed, grid

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the cls token to ``tokens`` ``(B, K, C)`` and run the blocks.

        Returns the normalized latent ``(B, 1 + K, C)`` with the cls token first.
        """
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        return self.norm(run_blocks(self.blocks, x, self.with_cp))

    def forward_masked(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Encode the visible patches ``ids_keep`` ``(B, K)`` of ``imgs``; returns ``(B, 1 + K, C)``."""
        tokens, _ = self.embed_patches(imgs, ids_keep)
        return self.forward_tokens(tokens)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """Encode all patches; returns ``(B, 1 + L, C)``."""
        tokens, _ = self.embed_patches(imgs)
        return self.forward_tokens(tokens)


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Select ``tokens[b, ids[b, k]]``: ``(B, L, C)`` and ``(B, K)`` give ``(B, K, C)``."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
