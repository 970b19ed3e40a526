"""ViTDet backbone: a plain ViT with windowed and global attention for mmdet detectors.

The design follows ViTDet (Li et al., "Exploring Plain Vision Transformer Backbones for
Object Detection", ECCV 2022). Most blocks attend within non-overlapping windows and a few
attend over the whole grid. Every block has decomposed relative-position tables. A learned
absolute position table is kept at the pretraining grid and resampled to the input grid at
each forward. Parameter names equal those of :class:`mimae.models.vit.VisionTransformer`
(timm/MAE names), so a pretrained encoder file loads without key mapping.

Unlike detectron2's and mmdet's ViTDet, the zero tokens that pad a window are masked out
as attention keys, so a window's output depends only on its real tokens.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from mmdet.registry import MODELS
from mmengine.model import BaseModule

from mimae.checkpoint import PRETRAIN_ONLY_KEYS, load_encoder_file
from mimae.models.layers import (Attention, Block, PatchEmbed, attend, init_blocks_trunc_normal, rel_pos_bias,
                                 run_blocks, vit_layer_depth)
from mimae.models.pos_embed import resize_abs_pos_embed

from .window import window_padding_mask, window_partition, window_unpartition

# Keys of a pretrained encoder that the backbone may lack: ViTDet uses no cls token and no final norm.
ENCODER_ONLY_KEYS = ("cls_token", "norm.*")
# Backbone tensors that a pretrained encoder may lack. They keep their zero initialization.
REL_POS_KEYS = ("blocks.*.attn.rel_pos_h", "blocks.*.attn.rel_pos_w")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class MaskedAttention(Attention):
    """:class:`Attention` that can also ignore keys, such as the zero padding of windows.

    ``Attention.forward`` takes no attention mask, so the masked path computes the
    attention here with the same parameters.
    """

    def forward(
        self,
        x: torch.Tensor,
        grid_hw: tuple[int, int] | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend over ``x`` ``(B, L, C)``, giving no weight to keys where ``key_mask`` ``(B, L)`` is False."""
        if key_mask is None:
            return super().forward(x, grid_hw)
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, head_dim)
        mask = torch.zeros(batch, 1, 1, length, dtype=q.dtype, device=q.device)
        mask = mask.masked_fill(~key_mask[:, None, None, :], float("-inf"))  # (B, 1, 1, L)
        if self.use_rel_pos:
            if grid_hw is None:
                raise ValueError("grid_hw is missing: relative position attention needs the token grid (H, W)")
            flat_q = q.reshape(batch * self.num_heads, length, self.head_dim)
            bias = rel_pos_bias(flat_q, self.rel_pos_h, self.rel_pos_w, grid_hw, grid_hw)
            mask = mask + bias.reshape(batch, self.num_heads, length, length).to(q.dtype)
        x = attend(q, k, v, attn_mask=mask)
        return self.proj(x.transpose(1, 2).reshape(batch, length, dim))


class ViTDetBlock(Block):
    """Transformer block on a token grid ``(B, H, W, C)`` with window or global attention.

    Args:
        dim, num_heads, mlp_ratio, qkv_bias, drop_path: as in :class:`Block`.
        window_size: window side in tokens, or 0 for global attention over the whole grid.
        rel_pos_size: grid ``(h, w)`` of the relative-position tables, or None for no tables.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        window_size: int = 0,
        rel_pos_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, drop_path, rel_pos_size)
        self.attn = MaskedAttention(dim, num_heads, qkv_bias=qkv_bias, rel_pos_size=rel_pos_size)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` ``(B, H, W, C)`` and return a tensor of the same shape."""
        batch, height, width, channels = x.shape
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            window = self.window_size
            windows, padded_hw = window_partition(x, window)  # (B * nW, w, w, C)
            windows = windows.reshape(-1, window * window, channels)  # (B * nW, w * w, C)
            key_mask = None
            if padded_hw != (height, width):
                key_mask = window_padding_mask((height, width), window, x.device).repeat(batch, 1)
            windows = self.attn(windows, (window, window), key_mask)
            windows = windows.reshape(-1, window, window, channels)
            x = window_unpartition(windows, window, padded_hw, (height, width))  # (B, H, W, C)
        else:
            x = self.attn(x.reshape(batch, height * width, channels), (height, width))
            x = x.reshape(batch, height, width, channels)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


@MODELS.register_module()
class ViTDet(BaseModule):
    """Plain ViT backbone of ViTDet returning one stride-``patch_size`` feature map.

    Args:
        img_size: training input size ``H`` or ``(H, W)``. It sets the grid of the
            relative-position tables of the global blocks. Other input sizes work, and the
            tables are then resampled at each forward.
        patch_size: patch side in pixels.
        in_chans: input image channels.
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        qkv_bias: add a bias to the query, key and value projections.
        drop_path_rate: stochastic-depth rate of the last block, rising linearly from 0.
        window_size: window side in tokens of the windowed blocks.
        global_block_indexes: blocks with full attention over the whole grid.
        use_rel_pos: add decomposed relative-position tables (zero init) to every block.
        pretrain_img_size: input size ``H`` or ``(H, W)`` of pretraining. ``pos_embed`` is
            stored at its grid with a leading cls slot, as in MAE checkpoints.
        with_cp: use activation checkpointing in the blocks to save memory.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads an encoder file through
            :func:`load_vitdet_weights`; None uses a truncated-normal initialization. An
            optional ``pos_embed_grid=(H, W)`` gives the file's patch grid where its slot
            count fits more than one grid.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        window_size: int = 14,
        global_block_indexes: Sequence[int] = (2, 5, 8, 11),
        use_rel_pos: bool = True,
        pretrain_img_size: int | Sequence[int] = 224,
        with_cp: bool = False,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        global_block_indexes = tuple(int(i) for i in global_block_indexes)
        invalid = [i for i in global_block_indexes if not 0 <= i < depth]
        if invalid:
            raise ValueError(
                f"invalid global_block_indexes {invalid}: the model has {depth} blocks, indexed 0 to {depth - 1}"
            )
        if window_size < 1:
            raise ValueError(f"window_size must be a positive integer, got {window_size}")
        img_h, img_w = _pair(img_size)
        pre_h, pre_w = _pair(pretrain_img_size)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.out_channels = embed_dim
        self.img_grid = (img_h // patch_size, img_w // patch_size)
        self.pretrain_grid = (pre_h // patch_size, pre_w // patch_size)
        self.global_block_indexes = global_block_indexes
        self.with_cp = with_cp

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        num_positions = 1 + self.pretrain_grid[0] * self.pretrain_grid[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        blocks = []
        for index, rate in enumerate(rates):
            is_global = index in global_block_indexes
            rel_pos_size = None
            if use_rel_pos:
                rel_pos_size = self.img_grid if is_global else (window_size, window_size)
            blocks.append(
                ViTDetBlock(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias,
                    drop_path=rate,
                    window_size=0 if is_global else window_size,
                    rel_pos_size=rel_pos_size,
                )
            )
        self.blocks = nn.ModuleList(blocks)

    def init_weights(self) -> None:
        """Initialize randomly, then load ``init_cfg`` when it names a pretrained file."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        init_blocks_trunc_normal(self.blocks)
        init_cfg = self.init_cfg
        if init_cfg is not None:
            if not (isinstance(init_cfg, dict) and init_cfg.get("type") == "Pretrained"):
                raise ValueError(
                    f"ViTDet supports only init_cfg=dict(type='Pretrained', checkpoint=PATH), got {init_cfg}"
                )
            load_vitdet_weights(self, init_cfg["checkpoint"], init_cfg.get("pos_embed_grid"))
        self._is_init = True

    def abs_pos_embed(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Return the absolute position table resampled to ``grid_hw``, ``(1, H, W, C)``, cls slot dropped."""
        height, width = grid_hw
        table = resize_abs_pos_embed(
            self.pos_embed, self.pretrain_grid, grid_hw, num_prefix_tokens=1, keep_prefix=False
        )  # (1, H * W, C)
        return table.reshape(1, height, width, self.embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        """Encode images ``(B, 3, H, W)`` into a one-element tuple with ``(B, C, H / p, W / p)``."""
        tokens, (height, width) = self.patch_embed(x)  # (B, H * W, C)
        x = tokens.reshape(-1, height, width, self.embed_dim) + self.abs_pos_embed((height, width))
        x = run_blocks(self.blocks, x, self.with_cp)  # (B, H, W, C)
        return (x.permute(0, 3, 1, 2).contiguous(),)

    def get_layer_depth(self, param_name: str, prefix: str = "") -> tuple[int, int]:
        """Return ``(layer_id, num_layers)`` for layer-wise lr decay (see :func:`vit_layer_depth`)."""
        return vit_layer_depth(param_name, self.depth, prefix)

def load_vitdet_weights(model: ViTDet, path: str,
                        pos_embed_grid: tuple[int, int] | None = None) -> tuple[list[str], list[str]]:
    """Load a pretrained encoder file into ``model`` strictly, with a logged key table.

    Every layout of :func:`mimae.checkpoint.pretrained_state_dict` is accepted. ``pos_embed``
    is resampled to the model's pretraining grid, with or without a cls slot in the file,
    and relative-position tables to the model's table lengths when the file's sizes differ.
    ``pos_embed_grid`` is the file's patch grid, needed only where its slot count fits
    more than one grid.

    Returns:
        ``(missing, unexpected)``: model keys the file lacks (only relative-position tables
        pass), and file keys the model does not use (cls token, final norm and
        pretraining-only keys such as the decoder and mask token).

    Raises:
        CheckpointError: when the file is missing or unreadable, contains no tensors, or
            leaves keys outside those allow-lists.
    """
    return load_encoder_file(
        model,
        path,
        model.pretrain_grid,
        allow_missing=REL_POS_KEYS,
        allow_unexpected=ENCODER_ONLY_KEYS + PRETRAIN_ONLY_KEYS,
        pos_embed_grid=pos_embed_grid,
    )
