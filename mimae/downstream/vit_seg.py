"""Plain ViT backbone for semantic segmentation (UperNet on ADE20K), registered in mmseg.

Parameter names equal those of the pretraining encoder (``mimae.models.vit``) and of the
official MAE checkpoints, so pretrained encoders load without key renaming.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from ..checkpoint import PRETRAIN_ONLY_KEYS, load_encoder_file
from ..models.layers import Block, PatchEmbed, init_blocks_trunc_normal, run_blocks, vit_layer_depth
from ..models.pos_embed import resize_abs_pos_embed

# The pretrained final ``norm`` is not used: outputs are taken from intermediate blocks,
# and the last output is returned without it, as in mmseg 1.2.2's MAE backbone
# (``final_norm=False``).
UNUSED_PRETRAINED_KEYS = ("norm.weight", "norm.bias")


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


@MODELS.register_module()
class ViTSeg(BaseModule):
    """ViT with a cls token that returns stride-``patch_size`` feature maps of chosen blocks.

    The learned absolute position embedding ``pos_embed`` ``(1, 1 + H * W, C)`` is stored
    for the grid of ``img_size`` and resampled bicubically to the grid of every input, so
    any input whose sides are multiples of ``patch_size`` works, square or not.

    NOTE: mmseg's MAE UperNet recipe adds a BEiT-style relative position bias and layer
    scale to every block. The pretraining encoder of this project has neither, so this
    backbone uses the absolute position embedding only and has no layer scale.

    Args:
        img_size: input size ``H`` or ``(H, W)`` that ``pos_embed`` is stored for.
        patch_size: patch side in pixels, which is also the output stride.
        in_channels: image channels.
        embed_dim: token width ``C``, also the channels of every output map.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: hidden width of the MLP relative to ``embed_dim``.
        qkv_bias: add a bias to the query, key and value projections.
        drop_path_rate: stochastic-depth rate of the last block, rising linearly from 0.
        out_indices: strictly increasing block indices whose outputs are returned.
        with_cp: use activation checkpointing in the blocks while training.
        init_cfg: ``None`` for random initialization, or
            ``dict(type='Pretrained', checkpoint=PATH)`` to load an encoder file. An
            optional ``pos_embed_grid=(H, W)`` gives the file's patch grid where its slot
            count fits more than one grid.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 512,
        patch_size: int = 16,
        in_channels: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        out_indices: tuple[int, ...] | list[int] = (3, 5, 7, 11),
        with_cp: bool = False,
        init_cfg: dict | None = None,
    ) -> None:
        _check_init_cfg(init_cfg)
        super().__init__(init_cfg=init_cfg)
        img_h, img_w = _pair(img_size)
        if img_h % patch_size or img_w % patch_size:
            raise ValueError(f"img_size {img_h}x{img_w} is not divisible by patch_size {patch_size}")
        self.out_indices = tuple(int(i) for i in out_indices)
        if not self.out_indices:
            raise ValueError("out_indices is empty; give at least one block index")
        if any(b <= a for a, b in zip(self.out_indices, self.out_indices[1:])):
            raise ValueError(f"out_indices must be strictly increasing, got {self.out_indices}")
        if self.out_indices[0] < 0 or self.out_indices[-1] >= depth:
            raise ValueError(f"out_indices {self.out_indices} must lie in [0, {depth - 1}] for depth {depth}")

        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.grid_size = (img_h // patch_size, img_w // patch_size)
        self.with_cp = with_cp
        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_slots = 1 + self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_slots, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=rate) for rate in rates
        )

    def init_weights(self) -> None:
        """Load the ``Pretrained`` checkpoint of ``init_cfg``, or initialize randomly without one."""
        if self.init_cfg is None:
            self._init_random()
        else:
            self.load_pretrained(self.init_cfg["checkpoint"], self.init_cfg.get("pos_embed_grid"))
        self._is_init = True

    def _init_random(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_blocks_trunc_normal(self.blocks)

    def load_pretrained(self, path: str, pos_embed_grid: tuple[int, int] | None = None) -> tuple[list[str], list[str]]:
        """Load encoder weights from ``path`` strictly and log a table of the keys.

        Accepts the layouts that ``mimae.checkpoint.pretrained_state_dict`` reads. A stored
        ``pos_embed`` of another grid is resampled to ``grid_size``, and a table without a
        cls slot gets a zero one. ``pos_embed_grid`` is the file's patch grid, needed only
        where its slot count fits more than one grid.

        Returns:
            The missing keys, which are always empty because none is allowed, and the
            unexpected keys: the unused final ``norm`` and pretraining-only keys such as the
            decoder, mask token and MI heads.

        Raises:
            CheckpointError: when the file cannot be read, its position table has no
                recognizable grid or several without ``pos_embed_grid``, or any key other
                than those above does not fit.
        """
        return load_encoder_file(
            self,
            path,
            self.grid_size,
            allow_missing=(),
            allow_unexpected=UNUSED_PRETRAINED_KEYS + PRETRAIN_ONLY_KEYS,
            pos_embed_grid=pos_embed_grid,
        )

    def pos_embed_for(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Return the position table ``(1, 1 + H * W, C)`` resampled to ``grid_hw``."""
        return resize_abs_pos_embed(self.pos_embed, self.grid_size, tuple(grid_hw), num_prefix_tokens=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Encode ``(B, 3, H, W)`` into one ``(B, C, H / p, W / p)`` map per ``out_indices`` entry."""
        tokens, (grid_h, grid_w) = self.patch_embed(x)  # (B, H * W, C)
        pos_embed = self.pos_embed_for((grid_h, grid_w))
        cls = (self.cls_token + pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens + pos_embed[:, 1:]], dim=1)  # (B, 1 + H * W, C)
        outs = []
        for index in range(self.out_indices[-1] + 1):
            x = run_blocks(self.blocks[index : index + 1], x, self.with_cp and self.training)
            if index in self.out_indices:
                feature = x[:, 1:].transpose(1, 2)  # drop the cls token: (B, C, H * W)
                outs.append(feature.reshape(x.shape[0], self.embed_dim, grid_h, grid_w).contiguous())
        return tuple(outs)

    def get_layer_depth(self, param_name: str, prefix: str = "") -> tuple[int, int]:
        """Return ``(layer_id, num_layers)`` for layer-wise lr decay (see :func:`vit_layer_depth`)."""
        return vit_layer_depth(param_name, self.depth, prefix)

def _check_init_cfg(init_cfg: dict | None) -> None:
    """Reject ``init_cfg`` values that ``ViTSeg.init_weights`` would not honour."""
    if init_cfg is None:
        return
    if not isinstance(init_cfg, dict) or init_cfg.get("type") != "Pretrained" or "checkpoint" not in init_cfg:
        raise ValueError(
            f"ViTSeg supports init_cfg=None or dict(type='Pretrained', checkpoint=PATH), got {init_cfg!r}"
        )
    unsupported = sorted(set(init_cfg) - {"type", "checkpoint", "pos_embed_grid"})
    if unsupported:
        raise ValueError(
            f"ViTSeg init_cfg keys {unsupported} are not supported; key prefixes such as 'backbone.' "
            "and 'encoder.' are stripped automatically"
        )
