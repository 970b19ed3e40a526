"""Downstream backbones, necks and the layer-decay constructor, registered on import.

Configs load them with ``custom_imports=dict(imports=['mimae.downstream'])``.
"""
from ..engine import layer_decay  # noqa: F401  (registers LayerDecayOptimWrapperConstructor)
from .fast_coco import FastCocoMetric
from .metrics import SafeCocoMetric
from .simple_fpn import LayerNorm2d, SimpleFPN
from .vit_seg import ViTSeg
from .vitdet import ViTDet

__all__ = ["FastCocoMetric", "LayerNorm2d", "SafeCocoMetric", "SimpleFPN", "ViTDet", "ViTSeg"]
