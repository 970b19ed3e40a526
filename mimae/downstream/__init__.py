"""Downstream backbones and necks, registered in mmdet's and mmseg's registries on import.

Configs load them with ``custom_imports=dict(imports=['mimae.downstream'])``.
"""
from .simple_fpn import LayerNorm2d, SimpleFPN
from .vit_seg import ViTSeg
from .vitdet import ViTDet

__all__ = ["LayerNorm2d", "SimpleFPN", "ViTDet", "ViTSeg"]
