"""Key names of ViT weight files: reading foreign layouts and writing the timm and detectron2 layouts.

The project names every encoder tensor as timm and the official MAE code do
(``patch_embed.proj.weight``, ``blocks.N.attn.qkv.weight``, ``blocks.N.mlp.fc1.weight``,
``norm.weight``, ``cls_token``, ``pos_embed``). :func:`to_timm_names` is the only place that
renames keys of other layouts to these names. The export helpers go the other way.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

import torch

# Prefixes that wrappers put in front of every key: DistributedDataParallel (``module.``)
# and models that keep the network in an attribute named ``model``. They are removed repeatedly.
WRAPPER_PREFIXES = ("module.", "model.")
# Prefixes of the encoder inside a larger model, tried in this order and removed once:
# detectron2's ViTDet (``SimpleFeaturePyramid.net`` inside ``GeneralizedRCNN.backbone``),
# mmengine models and mmpretrain (``backbone.``), and this project's pretraining models
# (``encoder.``). Keys of the other parts, such as ``decoder.*`` or ``neck.*``, keep their names.
ENCODER_PREFIXES = ("backbone.net.", "backbone.", "encoder.")

# Names of mmpretrain 1.2.0's VisionTransformer and MAEViT (mmpretrain/models/backbones/
# vision_transformer.py). A block is a TransformerEncoderLayer with ln1, attn, ln2 and mmcv's
# FFN, whose ``layers.0.0`` is fc1 and ``layers.1`` is fc2. On the backbone itself ``ln1`` is
# the final norm, ``ln2`` the norm after average pooling and ``pre_norm`` the norm before the
# blocks. mmseg 1.2.2's tools/model_converters/beit2mmseg.py writes the same block names. Each
# rule matches the start of a key whose prefixes are already removed, and the first matching
# rule applies.
_MMPRETRAIN_RULES = (
    (re.compile(r"^patch_embed\.projection\."), "patch_embed.proj."),
    (re.compile(r"^layers\.(\d+)\.ln1\."), r"blocks.\1.norm1."),
    (re.compile(r"^layers\.(\d+)\.ln2\."), r"blocks.\1.norm2."),
    (re.compile(r"^layers\.(\d+)\.attn\.gamma1\.weight$"), r"blocks.\1.ls1.gamma"),
    (re.compile(r"^layers\.(\d+)\.attn\."), r"blocks.\1.attn."),
    (re.compile(r"^layers\.(\d+)\.ffn\.layers\.0\.0\."), r"blocks.\1.mlp.fc1."),
    (re.compile(r"^layers\.(\d+)\.ffn\.layers\.1\."), r"blocks.\1.mlp.fc2."),
    (re.compile(r"^layers\.(\d+)\.ffn\.gamma2\.weight$"), r"blocks.\1.ls2.gamma"),
    (re.compile(r"^ln1\."), "norm."),
    (re.compile(r"^ln2\."), "fc_norm."),
    (re.compile(r"^pre_norm\."), "norm_pre."),
)

# Prefix of the ViT inside detectron2's Mask R-CNN: GeneralizedRCNN.backbone is a
# SimpleFeaturePyramid whose ``net`` is the ViT (detectron2 configs/common/models/mask_rcnn_vitdet.py).
DETECTRON2_PREFIX = "backbone.net."
# Encoder tensors that detectron2's ViT does not have: it uses no cls token and no final norm
# (detectron2/modeling/backbone/vit.py). Its ``pos_embed`` keeps the cls slot when
# ``pretrain_use_cls_token=True``, the default.
DETECTRON2_DROPPED_KEYS = ("cls_token", "norm.weight", "norm.bias")
# Classifier tensors of timm's VisionTransformer with ``num_classes > 0``. An exported encoder
# has no classifier, so such a model misses exactly these keys.
TIMM_HEAD_KEYS = ("head.weight", "head.bias")


class KeyMapError(ValueError):
    """Two keys of one file map to the same timm name with different tensors."""


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                changed = True
    for prefix in ENCODER_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _rename_mmpretrain(key: str) -> str:
    for pattern, replacement in _MMPRETRAIN_RULES:
        renamed, count = pattern.subn(replacement, key, count=1)
        if count:
            return renamed
    return key


def timm_name(key: str) -> str:
    """Return the timm/MAE name of one key of any supported layout."""
    return _rename_mmpretrain(_strip_prefixes(key))


def to_timm_names(state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Rename the keys of a state dict of any supported layout to timm/MAE names.

    Supported layouts: official MAE and timm (names kept), prefixed copies of them
    (``module.``, ``model.``, ``backbone.``, ``encoder.``, detectron2's ``backbone.net.``)
    and mmpretrain/mmselfsup MAE (``backbone.layers.N.ln1.*`` and the other names in
    ``_MMPRETRAIN_RULES``). Keys outside the encoder, such as a decoder, keep their names
    after the prefixes are removed, so a load report can show them.

    Raises:
        KeyMapError: when two keys map to one name with different tensors. Equal tensors
            are merged, because mmseg 1.2.2's beit2mmseg writes the patch embedding under both
            ``patch_embed.proj`` and ``patch_embed.projection``.
    """
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    origin: dict[str, str] = {}
    for key, value in state.items():
        name = timm_name(key)
        if name in renamed:
            previous = renamed[name]
            same = previous.shape == value.shape and torch.equal(previous, value)
            if not same:
                raise KeyMapError(
                    f"keys {origin[name]!r} and {key!r} both map to {name!r} but contain different "
                    "tensors. The file mixes two models: pass a file with one encoder"
                )
            continue
        renamed[name] = value
        origin[name] = key
    return renamed


def to_detectron2_names(encoder: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Return encoder tensors under the names of detectron2's ViTDet Mask R-CNN.

    Every key gets the ``backbone.net.`` prefix, and the cls token and final norm, which
    detectron2's ViT lacks, are left out. The names are checked against a module that
    reproduces those of detectron2's ViT, not against detectron2 itself.
    """
    return OrderedDict(
        (DETECTRON2_PREFIX + key, value) for key, value in encoder.items() if key not in DETECTRON2_DROPPED_KEYS
    )
