"""Pretraining models: the ViT encoder, MAE, MI-MAE and the MI estimators."""
from .mae import MAE, MAEDecoder, patchify, unpatchify
from .masking import make_masks
from .mi_estimators import CLUB, MINE, InfoNCE
from .mi_mae import MIMAE
from .vit import VisionTransformer

__all__ = ["CLUB", "MAE", "MAEDecoder", "MIMAE", "MINE", "InfoNCE", "VisionTransformer", "make_masks",
           "patchify", "unpatchify"]
