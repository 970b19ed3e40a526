"""ViTDet's simple feature pyramid and the channel LayerNorm it uses.

The pyramid is built from the single stride-16 map of a plain ViT by transposed
convolutions (up) and max-pooling (down), with no top-down path (Li et al., ViTDet,
ECCV 2022).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_activation_layer, build_norm_layer
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from mmengine.registry import MODELS as MMENGINE_MODELS


# Registered in MMEngine's root registry, beside mmcv's 'LN' and 'BN', so that
# `norm_cfg=dict(type='LN2d')` resolves under the mmdet and the mmseg scopes alike.
@MMENGINE_MODELS.register_module("LN2d")
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``(N, C, H, W)`` map, with per-channel weight and bias.

    It subclasses ``nn.LayerNorm`` so that optimizer constructors that exempt norm layers
    from weight decay (MMEngine's ``norm_decay_mult``) treat it as a norm.

    Args:
        num_channels: number of channels ``C``.
        eps: added to the variance. ViTDet uses 1e-6; mmcv's ``build_norm_layer`` passes
            1e-5 unless the config sets ``eps``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (N, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (N, C, H, W)


@MODELS.register_module()
class SimpleFPN(BaseModule):
    """Feature pyramid from one backbone map: one rescaling branch per level, then 1x1 and 3x3 convs.

    The rescaling branches are:

    - scale 4: ConvTranspose(C -> C/2), norm, activation, ConvTranspose(C/2 -> C/4);
    - scale 2: ConvTranspose(C -> C/2);
    - scale 1: identity;
    - scale 0.5: 2x2 max-pool.

    Each level then gets a 1x1 conv and a 3x3 conv to ``out_channels``, each followed by
    ``norm_cfg`` and no activation. Levels past ``len(scale_factors)`` max-pool the
    previous output with stride 2 (P6 in ViTDet).

    Args:
        in_channels: channels ``C`` of the backbone map.
        out_channels: channels of every output level.
        scale_factors: resize factor of each level relative to the backbone map, from the
            finest level; each must be 4, 2, 1 or 0.5.
        num_outs: number of output levels, at least ``len(scale_factors)``.
        norm_cfg: norm after the first transposed conv and after each conv. None means
            ``dict(type='LN2d', eps=1e-6)``.
        act_cfg: activation between the two transposed convs of the scale-4 branch. None
            means ``dict(type='GELU')``.
        init_cfg: mmengine initialization config.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        num_outs: int = 5,
        norm_cfg: dict | None = None,
        act_cfg: dict | None = None,
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_outs < len(scale_factors):
            raise ValueError(f"num_outs {num_outs} is smaller than the {len(scale_factors)} scale factors")
        norm_cfg = dict(type="LN2d", eps=1e-6) if norm_cfg is None else norm_cfg
        act_cfg = dict(type="GELU") if act_cfg is None else act_cfg
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.scale_factors = tuple(float(s) for s in scale_factors)
        self.num_outs = num_outs

        self.rescales = nn.ModuleList()
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for scale in self.scale_factors:
            rescale, level_channels = self._build_rescale(scale, in_channels, norm_cfg, act_cfg)
            self.rescales.append(rescale)
            self.lateral_convs.append(
                ConvModule(level_channels, out_channels, 1, norm_cfg=norm_cfg, act_cfg=None)
            )
            self.output_convs.append(
                ConvModule(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, act_cfg=None)
            )

    @staticmethod
    def _build_rescale(scale: float, channels: int, norm_cfg: dict, act_cfg: dict) -> tuple[nn.Module, int]:
        """Return the rescaling branch for ``scale`` and its output channels."""
        if scale == 4.0:
            branch = nn.Sequential(
                nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2),
                build_norm_layer(norm_cfg, channels // 2)[1],
                build_activation_layer(act_cfg),
                nn.ConvTranspose2d(channels // 2, channels // 4, kernel_size=2, stride=2),
            )
            return branch, channels // 4
        if scale == 2.0:
            return nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2), channels // 2
        if scale == 1.0:
            return nn.Identity(), channels
        if scale == 0.5:
            return nn.MaxPool2d(kernel_size=2, stride=2), channels
        raise ValueError(f"unsupported scale factor {scale}: use 4, 2, 1 or 0.5")

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Build the pyramid from ``inputs``, a one-element sequence with the ``(B, C, H, W)`` map.

        Returns ``num_outs`` maps ``(B, out_channels, H * s, W * s)`` for the scale factors
        ``s``, then the extra levels at half the previous size each.
        """
        if len(inputs) != 1:
            raise ValueError(f"SimpleFPN expects one backbone feature map, got {len(inputs)}")
        feature = inputs[0]
        outs = []
        for rescale, lateral, output in zip(self.rescales, self.lateral_convs, self.output_convs):
            outs.append(output(lateral(rescale(feature))))
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
