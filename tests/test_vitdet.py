"""Tests of the ViTDet backbone, window helpers, SimpleFPN, weight loading and the COCO configs.

All models are tiny and run on CPU. The Runner test trains the demo config for 2
iterations on the bundled COCO images and evaluates the 9 validation images.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mimae.checkpoint import CheckpointError
from mimae.downstream.simple_fpn import LayerNorm2d, SimpleFPN
from mimae.downstream.vitdet import ViTDet, ViTDetBlock, load_vitdet_weights
from mimae.downstream.window import window_padding_mask, window_partition, window_unpartition
from mimae.models.vit import VisionTransformer

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE_CONFIG = REPO_ROOT / "configs/coco/mask-rcnn_vit-b-p16-simplefpn_8xb8-lsj-amp-100e_coco.py"
DEMO_CONFIG = REPO_ROOT / "configs/coco/mask-rcnn_vit-b-p16-simplefpn_8xb8-lsj-amp-100e_coco_demo.py"
COCO_VAL_JSON = REPO_ROOT / "data/demo/coco/annotations/instances_val.json"
METRIC_SUFFIXES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def tiny_vitdet(**overrides) -> ViTDet:
    settings = dict(
        img_size=(96, 160),
        embed_dim=64,
        depth=2,
        num_heads=4,
        window_size=4,
        global_block_indexes=(1,),
        pretrain_img_size=224,
    )
    settings.update(overrides)
    return ViTDet(**settings)


def mae_style_state(embed_dim: int = 64, depth: int = 2, num_heads: int = 4) -> dict:
    """Return an official-MAE-like state dict: encoder at 224 px plus decoder and mask token."""
    torch.manual_seed(0)
    encoder = VisionTransformer(img_size=224, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    state = {key: value.clone() for key, value in encoder.state_dict().items()}
    state["pos_embed"] = torch.randn_like(state["pos_embed"])
    state["decoder_embed.weight"] = torch.randn(32, embed_dim)
    state["decoder_pred.weight"] = torch.randn(16 * 16 * 3, 32)
    state["mask_token"] = torch.randn(1, 1, 32)
    return state


# ---------------------------------------------------------------------------------------
# window helpers


@pytest.mark.parametrize("window", [9, 14])
def test_window_round_trip_non_square(window: int) -> None:
    x = torch.randn(2, 36, 40, 5)

    windows, padded_hw = window_partition(x, window)
    restored = window_unpartition(windows, window, padded_hw, (36, 40))

    expected_hw = (math.ceil(36 / window) * window, math.ceil(40 / window) * window)
    assert padded_hw == expected_hw
    assert windows.shape == (2 * (expected_hw[0] // window) * (expected_hw[1] // window), window, window, 5)
    assert torch.equal(restored, x)


@pytest.mark.parametrize("window", [9, 14])
def test_window_partition_keeps_axes(window: int) -> None:
    height, width = 36, 40
    rows = torch.arange(height).view(height, 1).expand(height, width)
    cols = torch.arange(width).view(1, width).expand(height, width)
    # Channel 0 stores the row + 1 and channel 1 the column + 1, so padding reads as 0.
    grid = torch.stack([rows + 1, cols + 1], dim=-1).float().unsqueeze(0)  # (1, H, W, 2)

    windows, (padded_h, padded_w) = window_partition(grid, window)

    num_cols = padded_w // window
    for index in range(windows.shape[0]):
        window_row, window_col = divmod(index, num_cols)
        real_rows = windows[index, :, :, 0]
        real_cols = windows[index, :, :, 1]
        expected_rows = torch.arange(window) + window_row * window + 1
        expected_cols = torch.arange(window) + window_col * window + 1
        expected_rows = torch.where(expected_rows <= height, expected_rows, 0).view(window, 1)
        expected_cols = torch.where(expected_cols <= width, expected_cols, 0).view(1, window)
        valid = (expected_rows > 0) & (expected_cols > 0)
        assert torch.equal(real_rows, torch.where(valid, expected_rows.expand(window, window), 0).float())
        assert torch.equal(real_cols, torch.where(valid, expected_cols.expand(window, window), 0).float())


def test_window_padding_mask_marks_real_tokens() -> None:
    mask = window_padding_mask((36, 40), 14)  # padded to 42 x 42: 3 x 3 windows

    assert mask.shape == (9, 14 * 14)
    assert int(mask.sum()) == 36 * 40
    assert bool(mask[0].all())
    # The bottom-right window keeps rows 28..35 and columns 28..39: 8 x 12 real tokens.
    assert int(mask[8].sum()) == 8 * 12


# ---------------------------------------------------------------------------------------
# windowed attention against full attention restricted to each window


def reference_window_block(block: ViTDetBlock, x: torch.Tensor, window: int) -> torch.Tensor:
    """Compute ``block`` on ``x`` (1, H, W, C) as full attention that only links tokens of one window.

    The grid is never padded here, so no padded token can take part.
    """
    _, height, width, channels = x.shape
    attn = block.attn
    heads, head_dim = attn.num_heads, attn.head_dim
    length = height * width

    tokens = block.norm1(x).reshape(1, length, channels)
    qkv = attn.qkv(tokens).reshape(1, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # each (1, heads, L, head_dim)

    rows = torch.arange(height).repeat_interleave(width)  # (L,)
    cols = torch.arange(width).repeat(height)  # (L,)
    same_window = (rows[:, None] // window == rows[None, :] // window) & (
        cols[:, None] // window == cols[None, :] // window
    )
    logits = (q @ k.transpose(-1, -2)) * head_dim**-0.5  # (1, heads, L, L)

    # Decomposed relative position inside a window: table index = offset + window - 1.
    offset_h = (rows[:, None] % window) - (rows[None, :] % window) + window - 1  # (L, L)
    offset_w = (cols[:, None] % window) - (cols[None, :] % window) + window - 1
    q_table_h = q @ attn.rel_pos_h.t()  # (1, heads, L, 2 * window - 1)
    q_table_w = q @ attn.rel_pos_w.t()
    logits = logits + q_table_h.gather(-1, offset_h.expand(1, heads, length, length))
    logits = logits + q_table_w.gather(-1, offset_w.expand(1, heads, length, length))

    logits = logits.masked_fill(~same_window, float("-inf"))
    out = logits.softmax(dim=-1) @ v  # (1, heads, L, head_dim)
    out = attn.proj(out.transpose(1, 2).reshape(1, length, channels))
    x = x + out.reshape(1, height, width, channels)
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("window", [9, 14])
def test_windowed_block_matches_masked_full_attention(window: int) -> None:
    torch.manual_seed(0)
    block = ViTDetBlock(16, num_heads=2, window_size=window, rel_pos_size=(window, window))
    with torch.no_grad():
        block.attn.rel_pos_h.normal_(std=0.5)
        block.attn.rel_pos_w.normal_(std=0.5)
        # A large key bias makes every padded key (a zero token) score high if it is not masked.
        block.attn.qkv.bias.normal_(std=3.0)
    block.eval()
    x = torch.randn(1, 36, 40, 16)

    with torch.no_grad():
        output = block(x)
        expected = reference_window_block(block, x, window)

    assert output.shape == (1, 36, 40, 16)
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-4)


def test_unmasked_padding_would_change_windows() -> None:
    # Checks that the comparison above can fail: without the key mask the padded
    # zero tokens take part in the edge windows and change their output.
    torch.manual_seed(0)
    window = 14
    block = ViTDetBlock(16, num_heads=2, window_size=window, rel_pos_size=(window, window))
    with torch.no_grad():
        block.attn.qkv.bias.normal_(std=3.0)
    x = torch.randn(1, 36, 40, 16)
    windows, padded_hw = window_partition(block.norm1(x), window)
    windows = windows.reshape(-1, window * window, 16)
    key_mask = window_padding_mask((36, 40), window)

    with torch.no_grad():
        masked = block.attn(windows, (window, window), key_mask)
        unmasked = block.attn(windows, (window, window), None)

    assert padded_hw == (42, 42)
    assert torch.allclose(masked[0], unmasked[0], atol=1e-5)  # a window without padding
    assert not torch.allclose(masked[-1], unmasked[-1], atol=1e-3)  # the bottom-right window


def test_window_blocks_isolate_windows() -> None:
    torch.manual_seed(0)
    # 96 x 160 px is a 6 x 10 grid, padded to 8 x 12: windows of rows {0-3, 4-5}
    # and columns {0-3, 4-7, 8-9}.
    model = tiny_vitdet(depth=2, global_block_indexes=())
    model.init_weights()
    model.eval()
    image = torch.randn(1, 3, 96, 160)
    changed = image.clone()
    # Patch at grid row 5, column 9: the bottom-right window, which contains padding.
    changed[:, :, 5 * 16 : 6 * 16, 9 * 16 : 10 * 16] += 1.0

    with torch.no_grad():
        before = model(image)[0][0]  # (C, 6, 10)
        after = model(changed)[0][0]

    difference = (after - before).abs().amax(dim=0)  # (6, 10)
    inside = torch.zeros(6, 10, dtype=torch.bool)
    inside[4:6, 8:10] = True
    assert bool((difference[inside] > 1e-4).all())
    assert float(difference[~inside].max()) < 1e-6


# ---------------------------------------------------------------------------------------
# backbone and neck


def test_vitdet_output_non_square_grid() -> None:
    torch.manual_seed(0)
    model = tiny_vitdet()
    model.init_weights()

    outputs = model(torch.randn(1, 3, 96, 160))

    assert isinstance(outputs, tuple)
    assert len(outputs) == 1
    assert outputs[0].shape == (1, 64, 6, 10)
    assert bool(torch.isfinite(outputs[0]).all())


def test_vitdet_rel_pos_table_sizes() -> None:
    model = tiny_vitdet(img_size=(512, 768), window_size=14)

    assert model.blocks[0].attn.rel_pos_h.shape == (2 * 14 - 1, 16)
    assert model.blocks[0].attn.rel_pos_w.shape == (2 * 14 - 1, 16)
    # The global block is sized for the 32 x 48 grid of img_size.
    assert model.blocks[1].attn.rel_pos_h.shape == (2 * 32 - 1, 16)
    assert model.blocks[1].attn.rel_pos_w.shape == (2 * 48 - 1, 16)
    assert float(model.blocks[1].attn.rel_pos_w.detach().abs().sum()) == 0.0


def test_vitdet_activation_checkpointing_matches() -> None:
    torch.manual_seed(0)
    plain = tiny_vitdet(drop_path_rate=0.0)
    plain.init_weights()
    checkpointed = tiny_vitdet(drop_path_rate=0.0, with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    image = torch.randn(1, 3, 96, 160)

    plain(image)[0].sum().backward()
    checkpointed(image)[0].sum().backward()

    for (name, p1), (_, p2) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_vitdet_get_layer_depth() -> None:
    model = tiny_vitdet(depth=3, global_block_indexes=(2,))

    assert model.get_layer_depth("patch_embed.proj.weight") == (0, 5)
    assert model.get_layer_depth("pos_embed") == (0, 5)
    assert model.get_layer_depth("blocks.0.attn.qkv.weight") == (1, 5)
    assert model.get_layer_depth("blocks.2.mlp.fc2.bias") == (3, 5)
    assert model.get_layer_depth("backbone.blocks.1.norm1.weight", "backbone.") == (2, 5)
    assert model.get_layer_depth("backbone.pos_embed", "backbone.") == (0, 5)
    assert model.get_layer_depth("neck.lateral_convs.0.conv.weight", "backbone.") == (4, 5)
    assert model.get_layer_depth("roi_head.bbox_head.fc_cls.weight", "backbone.") == (4, 5)


def test_vitdet_rejects_bad_global_index() -> None:
    with pytest.raises(ValueError, match="invalid global_block_indexes"):
        tiny_vitdet(global_block_indexes=(2,))


def test_simple_fpn_strides_and_channels() -> None:
    with DefaultScope.overwrite_default_scope("mmdet"):
        neck = SimpleFPN(in_channels=64, out_channels=32, norm_cfg=dict(type="LN2d", eps=1e-6))
    feature = torch.randn(2, 64, 6, 10)  # stride 16 of a 96 x 160 image

    outputs = neck((feature,))

    assert len(outputs) == 5
    expected_hw = [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]  # strides 4, 8, 16, 32, 64
    for output, (height, width) in zip(outputs, expected_hw):
        assert output.shape == (2, 32, height, width)
    assert isinstance(neck.rescales[0][1], LayerNorm2d)
    assert isinstance(neck.rescales[0][2], torch.nn.GELU)
    assert isinstance(neck.lateral_convs[0].norm, LayerNorm2d)
    assert neck.lateral_convs[0].conv.bias is None  # a norm follows the conv


@pytest.mark.parametrize("scope", ["mmdet", "mmseg"])
def test_ln2d_builds_from_norm_cfg(scope: str) -> None:
    with DefaultScope.overwrite_default_scope(scope):
        name, norm = build_norm_layer(dict(type="LN2d", eps=1e-6), 8)
    x = torch.randn(2, 8, 3, 5)

    expected = F.layer_norm(x.permute(0, 2, 3, 1), (8,), eps=1e-6).permute(0, 3, 1, 2)

    assert isinstance(norm, LayerNorm2d)
    assert name == "ln"
    assert norm.eps == 1e-6
    torch.testing.assert_close(norm(x), expected)


# ---------------------------------------------------------------------------------------
# loading pretrained weights


def test_load_mae_dict_into_vitdet(tmp_path: Path) -> None:
    state = mae_style_state()
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": state}, path)
    # 1024 px with patch 16 is a 64 x 64 token grid.
    model = ViTDet(
        img_size=1024,
        embed_dim=64,
        depth=2,
        num_heads=4,
        window_size=14,
        global_block_indexes=(1,),
        pretrain_img_size=224,
    )

    missing, unexpected = load_vitdet_weights(model, str(path))

    assert sorted(missing) == [
        "blocks.0.attn.rel_pos_h",
        "blocks.0.attn.rel_pos_w",
        "blocks.1.attn.rel_pos_h",
        "blocks.1.attn.rel_pos_w",
    ]
    assert sorted(unexpected) == sorted(
        ["cls_token", "norm.weight", "norm.bias", "decoder_embed.weight", "decoder_pred.weight", "mask_token"]
    )
    assert model.pos_embed.shape == (1, 197, 64)
    assert torch.equal(model.pos_embed.data, state["pos_embed"])

    # At a 64 x 64 grid the 14 x 14 table is resampled bicubically with the cls slot dropped.
    grid = state["pos_embed"][:, 1:].reshape(1, 14, 14, 64).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(64, 64), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    with torch.no_grad():
        resampled = model.abs_pos_embed((64, 64))
    assert resampled.shape == (1, 64, 64, 64)
    torch.testing.assert_close(resampled, expected)


def test_init_weights_loads_block_weights(tmp_path: Path) -> None:
    state = mae_style_state()
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": state}, path)
    model = tiny_vitdet(init_cfg=dict(type="Pretrained", checkpoint=str(path)))

    model.init_weights()

    assert torch.equal(model.blocks[1].attn.qkv.weight.data, state["blocks.1.attn.qkv.weight"])
    assert torch.equal(model.blocks[0].mlp.fc2.bias.data, state["blocks.0.mlp.fc2.bias"])
    assert torch.equal(model.patch_embed.proj.weight.data, state["patch_embed.proj.weight"])
    assert float(model.blocks[0].attn.rel_pos_h.detach().abs().sum()) == 0.0
    assert model.is_init


def test_load_resamples_pos_embed_to_pretrain_grid(tmp_path: Path) -> None:
    state = mae_style_state()  # pos_embed for a 14 x 14 grid
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": state}, path)
    model = tiny_vitdet(pretrain_img_size=64)  # stores a 4 x 4 grid plus the cls slot

    load_vitdet_weights(model, str(path))

    grid = state["pos_embed"][:, 1:].reshape(1, 14, 14, 64).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(1, 16, 64)
    assert model.pos_embed.shape == (1, 17, 64)
    torch.testing.assert_close(model.pos_embed.data[:, 1:], expected)


def test_window_rel_pos_on_global_grid(tmp_path: Path) -> None:
    # Tables trained for a 14 x 14 window, loaded into a global block at a 32 x 48 grid.
    state = mae_style_state(depth=1)
    window_table_h = torch.randn(27, 16)
    window_table_w = torch.randn(27, 16)
    state["blocks.0.attn.rel_pos_h"] = window_table_h
    state["blocks.0.attn.rel_pos_w"] = window_table_w
    path = tmp_path / "vitdet_window_tables.pth"
    torch.save({"model": state}, path)
    model = tiny_vitdet(img_size=(512, 768), depth=1, global_block_indexes=(0,), window_size=14)

    missing, _ = load_vitdet_weights(model, str(path))

    assert missing == []
    expected_h = F.interpolate(window_table_h.t()[None], size=63, mode="linear", align_corners=False)[0].t()
    expected_w = F.interpolate(window_table_w.t()[None], size=95, mode="linear", align_corners=False)[0].t()
    torch.testing.assert_close(model.blocks[0].attn.rel_pos_h.data, expected_h)
    torch.testing.assert_close(model.blocks[0].attn.rel_pos_w.data, expected_w)
    with torch.no_grad():
        output = model(torch.randn(1, 3, 512, 768))[0]
    assert output.shape == (1, 64, 32, 48)
    assert bool(torch.isfinite(output).all())


def test_window_rel_pos_used_directly_on_global_grid() -> None:
    # A global block whose tables still have the 14-window length is resampled at forward.
    torch.manual_seed(0)
    block = ViTDetBlock(16, num_heads=2, window_size=0, rel_pos_size=(14, 14))
    x = torch.randn(1, 32, 48, 16)
    with torch.no_grad():
        without_bias = block(x)
        block.attn.rel_pos_h.normal_()
        block.attn.rel_pos_w.normal_()
        with_bias = block(x)

    assert with_bias.shape == (1, 32, 48, 16)
    assert bool(torch.isfinite(with_bias).all())
    assert not torch.allclose(with_bias, without_bias)


def test_load_unmatched_file_names_file(tmp_path: Path) -> None:
    path = tmp_path / "unrelated_weights.pth"
    torch.save({"model": {"classifier.weight": torch.zeros(10, 4)}}, path)
    model = tiny_vitdet()

    with pytest.raises(CheckpointError, match="unrelated_weights.pth"):
        load_vitdet_weights(model, str(path))


def test_load_file_without_tensors_names_file(tmp_path: Path) -> None:
    path = tmp_path / "no_tensors.pth"
    torch.save({"meta": {"epoch": 3}}, path)
    model = tiny_vitdet()

    with pytest.raises(CheckpointError, match="no_tensors.pth"):
        load_vitdet_weights(model, str(path))


def test_load_rejects_missing_encoder_keys(tmp_path: Path) -> None:
    state = mae_style_state()
    del state["blocks.1.mlp.fc1.weight"]
    path = tmp_path / "incomplete.pth"
    torch.save({"model": state}, path)
    model = tiny_vitdet()

    with pytest.raises(CheckpointError, match="blocks.1.mlp.fc1.weight"):
        load_vitdet_weights(model, str(path))


# ---------------------------------------------------------------------------------------
# configs and the mmdet Runner


def test_recipe_config_builds() -> None:
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(str(RECIPE_CONFIG))

    backbone = cfg.model.backbone
    assert (backbone.type, backbone.embed_dim, backbone.depth, backbone.window_size) == ("ViTDet", 768, 12, 14)
    assert tuple(backbone.global_block_indexes) == (2, 5, 8, 11)
    assert backbone.drop_path_rate == 0.1
    assert cfg.model.data_preprocessor.pad_size_divisor == 1024
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 64
    assert cfg.optim_wrapper.type == "AmpOptimWrapper"
    assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1, fused=True)
    assert cfg.optim_wrapper.constructor == "LayerDecayOptimWrapperConstructor"
    assert cfg.optim_wrapper.paramwise_cfg == dict(layer_decay_rate=0.7)
    assert cfg.train_cfg.max_iters == 184375
    assert cfg.param_scheduler[0].end == 250
    assert cfg.param_scheduler[1].milestones == [163889, 177546]

    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(model_cfg)
    assert type(model.backbone).__name__ == "ViTDet"
    assert isinstance(model.roi_head.bbox_head.shared_convs[0].norm, LayerNorm2d)
    assert isinstance(model.roi_head.mask_head.convs[0].norm, LayerNorm2d)
    assert len(model.rpn_head.rpn_conv) == 2


def test_demo_config_weight_decay_groups() -> None:
    from mmdet.registry import MODELS
    from mmengine.optim import build_optim_wrapper

    cfg = Config.fromfile(str(DEMO_CONFIG))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(model_cfg)
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)

    decay_of = {}
    names = {id(param): name for name, param in model.named_parameters()}
    for group in optim_wrapper.optimizer.param_groups:
        for param in group["params"]:
            decay_of[names[id(param)]] = group["weight_decay"]
    assert type(optim_wrapper).__name__ == "OptimWrapper"
    assert decay_of["backbone.pos_embed"] == 0.0
    assert decay_of["backbone.blocks.0.norm1.weight"] == 0.0
    assert decay_of["neck.lateral_convs.0.ln.weight"] == 0.0
    assert decay_of["roi_head.bbox_head.shared_convs.0.ln.bias"] == 0.0
    assert decay_of["backbone.blocks.0.attn.rel_pos_h"] == 0.0
    assert decay_of["backbone.blocks.0.attn.qkv.bias"] == 0.0
    assert decay_of["backbone.blocks.0.attn.qkv.weight"] == 0.1
    assert decay_of["neck.lateral_convs.0.conv.weight"] == 0.1

    lr_of = {}
    for group in optim_wrapper.optimizer.param_groups:
        for param in group["params"]:
            lr_of[names[id(param)]] = group["lr"]
    depth = cfg.model.backbone.depth
    # Layer decay 0.7: block N trains at lr x 0.7 ** (depth - N), embeddings at 0.7 ** (depth + 1).
    assert lr_of["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(1e-4 * 0.7**depth)
    assert lr_of["backbone.patch_embed.proj.weight"] == pytest.approx(1e-4 * 0.7 ** (depth + 1))
    assert lr_of["neck.lateral_convs.0.conv.weight"] == pytest.approx(1e-4)


def test_demo_config_runner_smoke(tmp_path: Path) -> None:
    from mmengine.runner import Runner

    torch.manual_seed(0)
    # The demo encoder: 64 px pretraining crops, 192-d, 4 blocks, 3 heads.
    encoder = VisionTransformer(img_size=64, embed_dim=192, depth=4, num_heads=3)
    encoder_path = tmp_path / "demo_encoder.pth"
    torch.save({"model": encoder.state_dict()}, encoder_path)
    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.model.backbone.init_cfg.checkpoint = str(encoder_path)
    cfg.train_cfg.max_iters = 2
    cfg.work_dir = str(tmp_path / "work_dir")

    runner = Runner.from_cfg(cfg)
    runner.train()

    backbone = runner.model.backbone
    assert torch.allclose(backbone.patch_embed.proj.weight, encoder.patch_embed.proj.weight, atol=1e-2)
    for metric in ("bbox", "segm"):
        for suffix in METRIC_SUFFIXES:
            key = f"val/coco/{metric}_{suffix}"
            value = runner.message_hub.get_scalar(key).current()
            assert math.isfinite(value), key
    assert (tmp_path / "work_dir" / "iter_2.pth").is_file()


# ---------------------------------------------------------------------------------------
# COCO evaluation with zero detections


def test_coco_metric_zero_detections(tmp_path: Path) -> None:
    from mmdet.datasets import CocoDataset

    from mimae.downstream.metrics import SafeCocoMetric

    ground_truth = json.loads(COCO_VAL_JSON.read_text())
    image = ground_truth["images"][0]
    one_image = dict(ground_truth)
    one_image["images"] = [image]
    one_image["annotations"] = [a for a in ground_truth["annotations"] if a["image_id"] == image["id"]]
    ann_file = tmp_path / "one_image.json"
    ann_file.write_text(json.dumps(one_image))
    metric = SafeCocoMetric(ann_file=str(ann_file), metric=["bbox", "segm"])
    metric.dataset_meta = CocoDataset.METAINFO
    height, width = image["height"], image["width"]
    sample = dict(
        img_id=image["id"],
        ori_shape=(height, width),
        pred_instances=dict(
            bboxes=torch.zeros(0, 4),
            scores=torch.zeros(0),
            labels=torch.zeros(0, dtype=torch.long),
            masks=torch.zeros(0, height, width, dtype=torch.bool),
        ),
    )

    metric.process({}, [sample])
    results = metric.evaluate(size=1)

    for kind in ("bbox", "segm"):
        for suffix in METRIC_SUFFIXES:
            assert f"coco/{kind}_{suffix}" in results
        assert results[f"coco/{kind}_mAP"] == 0.0
        assert results[f"coco/{kind}_mAP_50"] == 0.0
        assert results[f"coco/{kind}_mAP_75"] == 0.0
        # COCO reports -1 for an area range without ground truth.
        for suffix in ("mAP_s", "mAP_m", "mAP_l"):
            assert results[f"coco/{kind}_{suffix}"] in (0.0, -1.0)
