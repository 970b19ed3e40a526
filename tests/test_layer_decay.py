import logging

import pytest
import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR

import mimae.downstream  # noqa: F401  (registers the backbones)
import mimae.engine  # noqa: F401  (registers the constructor)
from mimae.downstream import ViTDet


class Detector(nn.Module):
    """A backbone with a register-like extra token, a neck and a head, like an mmdet model."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = ViTDet(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                               window_size=2, global_block_indexes=(1,), pretrain_img_size=32)
        self.backbone.register_tokens = nn.Parameter(torch.zeros(1, 2, 32))
        self.neck = nn.Conv2d(32, 8, 1)
        self.head = nn.Linear(8, 4)


def build(decay=0.75, lr=1e-3, weight_decay=0.1):
    cfg = dict(optimizer=dict(type="AdamW", lr=lr, weight_decay=weight_decay),
               constructor="LayerDecayOptimWrapperConstructor",
               paramwise_cfg=dict(layer_decay_rate=decay))
    model = Detector()
    return model, build_optim_wrapper(model, cfg)


def group_of(optim_wrapper, param):
    matches = [g for g in optim_wrapper.optimizer.param_groups if any(p is param for p in g["params"])]
    assert len(matches) == 1
    return matches[0]


def test_groups_follow_backbone_depth():
    model, wrapper = build(decay=0.75, lr=1e-3)
    backbone = model.backbone
    # 2 blocks: embeddings id 0, block N id N + 1, everything else id 3 (lr scale 1).
    expected = {
        backbone.patch_embed.proj.weight: 0.75**3,
        backbone.pos_embed: 0.75**3,
        backbone.blocks[0].attn.qkv.weight: 0.75**2,
        backbone.blocks[1].mlp.fc2.weight: 0.75**1,
        backbone.register_tokens: 0.75**3,
        model.neck.weight: 1.0,
        model.head.weight: 1.0,
    }
    for param, scale in expected.items():
        assert group_of(wrapper, param)["lr"] == pytest.approx(1e-3 * scale)


def test_no_weight_decay_on_norms_biases_positions():
    model, wrapper = build(weight_decay=0.1)
    backbone = model.backbone
    for param in (backbone.blocks[0].norm1.weight, backbone.blocks[0].attn.qkv.bias,
                  backbone.pos_embed, backbone.blocks[0].attn.rel_pos_h, model.head.bias):
        assert group_of(wrapper, param)["weight_decay"] == 0.0
    for param in (backbone.blocks[0].attn.qkv.weight, model.neck.weight, backbone.patch_embed.proj.weight):
        assert group_of(wrapper, param)["weight_decay"] == 0.1


def test_every_trainable_parameter_in_one_group():
    model, wrapper = build()
    grouped = [p for g in wrapper.optimizer.param_groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable)
    assert {id(p) for p in grouped} == {id(p) for p in trainable}


def test_group_table_logged():
    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    try:
        build(decay=0.75)
    finally:
        logger.removeHandler(handler)
    table = "\n".join(records)
    assert "layer-wise lr decay 0.75: 8 parameter groups" in table
    assert "backbone.blocks.0.attn.qkv.weight" in table


def test_lr_ratio_constant_under_warmup_and_cosine():
    model, wrapper = build(decay=0.1, lr=1.0)
    optimizer = wrapper.optimizer
    schedulers = [LinearLR(optimizer, start_factor=0.01, by_epoch=False, begin=0, end=10),
                  CosineAnnealingLR(optimizer, T_max=40, by_epoch=False, begin=10, end=50)]
    low = group_of(wrapper, model.backbone.blocks[1].attn.qkv.weight)  # scale 0.1
    top = group_of(wrapper, model.head.weight)  # scale 1.0
    for step in range(50):
        if top["lr"] > 0:
            assert low["lr"] / top["lr"] == pytest.approx(0.1, rel=1e-9), step
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()


def test_backbone_without_depth_rejected():
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    cfg = dict(optimizer=dict(type="AdamW", lr=1e-3), constructor="LayerDecayOptimWrapperConstructor",
               paramwise_cfg=dict(layer_decay_rate=0.7))
    with pytest.raises(TypeError, match="get_layer_depth"):
        build_optim_wrapper(model, cfg)
