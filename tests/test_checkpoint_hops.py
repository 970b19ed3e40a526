"""Key layouts of weight files: reading foreign layouts, the load table, and the export formats.

Each test moves weights from one layout to another ("hop") and checks the result against
a real consumer where one is installed: mmpretrain's MAE model and timm's VisionTransformer.
detectron2 is not installed, so a module that reproduces the parameter names of its ViT
stands in for it. All models are tiny and run on CPU.
"""
from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope

from convert_checkpoint import build_encoder_from_shapes, convert, export_payload, main, timm_model_kwargs
from mimae.checkpoint import (
    PRETRAIN_ONLY_KEYS,
    CheckpointError,
    encoder_state_dict,
    extract_state_dict,
    pretrained_state_dict,
)
from mimae.downstream.vit_seg import ViTSeg
from mimae.downstream.vitdet import ViTDet, load_vitdet_weights
from mimae.key_maps import TIMM_HEAD_KEYS, timm_name, to_detectron2_names
from mimae.models import VisionTransformer

REPO_ROOT = Path(__file__).resolve().parents[1]
MIMAE_DEMO = REPO_ROOT / "configs/pretrain/mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k_demo.py"


@contextlib.contextmanager
def captured_log():
    """Collect the messages of the current MMEngine logger."""
    logger = MMLogger.get_current_instance()
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def perturbed_encoder_state(**kwargs) -> OrderedDict:
    """Return a tiny encoder's state dict in which no tensor keeps its initial value."""
    torch.manual_seed(0)
    options = dict(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2)
    options.update(kwargs)
    encoder = VisionTransformer(**options)
    return OrderedDict((k, v + 0.01 * torch.randn_like(v)) for k, v in encoder.state_dict().items())


def official_mae_state(encoder: dict) -> dict:
    """Add the pretraining-only keys of an official MAE file to ``encoder``."""
    state = dict(encoder)
    state["mask_token"] = torch.randn(1, 1, 16)
    state["decoder_embed.weight"] = torch.randn(16, 32)
    state["decoder_pos_embed"] = torch.randn(1, 17, 16)
    state["decoder_blocks.0.norm1.weight"] = torch.randn(16)
    state["decoder_pred.weight"] = torch.randn(16 * 16 * 3, 16)
    return state


# ---------------------------------------------------------------------------------------
# mmpretrain / mmselfsup names


# Key names of mmpretrain 1.2.0's MAEViT and MAEPretrainDecoder, as its state_dict() lists
# them for a 2-block model, with the timm/MAE name each must get.
MMPRETRAIN_NAMES = {
    "backbone.cls_token": "cls_token",
    "backbone.pos_embed": "pos_embed",
    "backbone.patch_embed.projection.weight": "patch_embed.proj.weight",
    "backbone.patch_embed.projection.bias": "patch_embed.proj.bias",
    "backbone.layers.0.ln1.weight": "blocks.0.norm1.weight",
    "backbone.layers.0.attn.qkv.weight": "blocks.0.attn.qkv.weight",
    "backbone.layers.0.attn.proj.bias": "blocks.0.attn.proj.bias",
    "backbone.layers.0.ln2.bias": "blocks.0.norm2.bias",
    "backbone.layers.0.ffn.layers.0.0.weight": "blocks.0.mlp.fc1.weight",
    "backbone.layers.0.ffn.layers.0.0.bias": "blocks.0.mlp.fc1.bias",
    "backbone.layers.1.ffn.layers.1.weight": "blocks.1.mlp.fc2.weight",
    "backbone.layers.11.ffn.layers.1.bias": "blocks.11.mlp.fc2.bias",
    "backbone.ln1.weight": "norm.weight",
    "backbone.ln1.bias": "norm.bias",
    # The decoder (neck) keeps its names, so the load table shows it.
    "neck.mask_token": "neck.mask_token",
    "neck.decoder_blocks.0.ln1.weight": "neck.decoder_blocks.0.ln1.weight",
    "neck.ln1.weight": "neck.ln1.weight",
    "neck.decoder_pred.weight": "neck.decoder_pred.weight",
}


@pytest.mark.parametrize("source, expected", sorted(MMPRETRAIN_NAMES.items()))
def test_mmpretrain_name_maps_to_timm(source: str, expected: str) -> None:
    assert timm_name(source) == expected


def test_mmpretrain_decoder_counts_as_pretraining_only() -> None:
    state = {key: torch.zeros(1) for key in MMPRETRAIN_NAMES}

    encoder = encoder_state_dict({"state_dict": state})

    assert not any(key.startswith("neck.") for key in encoder)
    assert "neck.*" in PRETRAIN_ONLY_KEYS
    assert "blocks.0.mlp.fc1.weight" in encoder


def test_mmpretrain_mae_matches_encoder_output() -> None:
    mmpretrain_registry = pytest.importorskip("mmpretrain.registry")
    import mmpretrain.models  # noqa: F401  (registers MAE, MAEViT, MAEPretrainDecoder)

    torch.manual_seed(0)
    mae_cfg = dict(
        type="MAE",
        backbone=dict(
            type="MAEViT",
            arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=128),
            img_size=64,
            patch_size=16,
            mask_ratio=0.75,
        ),
        neck=dict(
            type="MAEPretrainDecoder",
            num_patches=16,
            patch_size=16,
            embed_dim=32,
            decoder_embed_dim=16,
            decoder_depth=1,
            decoder_num_heads=2,
        ),
        head=dict(
            type="MAEPretrainHead",
            norm_pix=True,
            patch_size=16,
            loss=dict(type="PixelReconstructionLoss", criterion="L2"),
        ),
    )
    with DefaultScope.overwrite_default_scope("mmpretrain"):
        reference = mmpretrain_registry.MODELS.build(mae_cfg)
    with torch.no_grad():
        reference.backbone.pos_embed.normal_(std=0.1)
        reference.backbone.cls_token.normal_(std=0.1)
    reference.eval()
    file_state = reference.state_dict()

    encoder_state = encoder_state_dict({"state_dict": file_state}, source="mmpretrain_mae.pth")
    encoder = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2)
    encoder.load_state_dict(encoder_state, strict=True)
    encoder.eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        (expected,) = reference.backbone(image, mask=None)  # (B, 1 + L, C) after the final norm
        output = encoder(image)

    # mimae projects patches with a matrix product and mmpretrain with a convolution: the
    # same weights, summed in another order (differences of a few 1e-6 on unit-scale outputs).
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-5)
    assert {key for key in file_state if key.startswith("neck.")} <= set(pretrained_state_dict(file_state))


# ---------------------------------------------------------------------------------------
# prefixes, merged and conflicting keys, files without tensors


@pytest.mark.parametrize(
    "prefix",
    ["", "module.", "model.", "backbone.", "encoder.", "module.backbone.", "model.encoder.", "backbone.net."],
)
def test_prefixed_layouts_give_timm_names(prefix: str) -> None:
    state = perturbed_encoder_state()
    prefixed = {prefix + key: value for key, value in state.items()}

    renamed = pretrained_state_dict({"state_dict": prefixed}, source="prefixed.pth")

    assert list(renamed) == list(state)
    for key, value in state.items():
        assert renamed[key] is value, key


def test_pretraining_run_layout_keeps_other_parts() -> None:
    state = {
        "encoder.blocks.0.norm1.weight": torch.ones(4),
        "decoder.blocks.0.norm1.weight": torch.zeros(4),
        "decoder.mask_token": torch.zeros(1, 1, 4),
        "mi_max.head.fc1.weight": torch.zeros(4, 4),
        "mi_min.mu.0.weight": torch.zeros(4, 4),
    }

    renamed = pretrained_state_dict({"state_dict": state})
    encoder = encoder_state_dict({"state_dict": state})

    assert list(renamed) == [
        "blocks.0.norm1.weight",
        "decoder.blocks.0.norm1.weight",
        "decoder.mask_token",
        "mi_max.head.fc1.weight",
        "mi_min.mu.0.weight",
    ]
    assert list(encoder) == ["blocks.0.norm1.weight"]


def test_duplicate_names_with_equal_tensors_merged() -> None:
    # mmseg's beit2mmseg writes the patch embedding under both names.
    weight = torch.randn(8, 3, 16, 16)
    state = {"patch_embed.proj.weight": weight, "patch_embed.projection.weight": weight.clone()}

    renamed = pretrained_state_dict({"model": state}, source="beit2mmseg.pth")

    assert list(renamed) == ["patch_embed.proj.weight"]
    assert torch.equal(renamed["patch_embed.proj.weight"], weight)


def test_conflicting_names_rejected() -> None:
    state = {
        "patch_embed.proj.weight": torch.zeros(8, 3, 16, 16),
        "backbone.patch_embed.projection.weight": torch.ones(8, 3, 16, 16),
    }

    with pytest.raises(CheckpointError) as error:
        pretrained_state_dict({"model": state}, source="two_models.pth")

    message = str(error.value)
    assert "two_models.pth" in message
    assert "patch_embed.proj.weight" in message
    assert "backbone.patch_embed.projection.weight" in message


def test_no_tensors_error_names_source() -> None:
    with pytest.raises(CheckpointError, match=r"no tensors found in 'meta_only\.pth'; top-level keys are \['meta'\]"):
        extract_state_dict({"meta": {"epoch": 3}}, source="meta_only.pth")
    with pytest.raises(CheckpointError, match="a list, not a dict"):
        extract_state_dict([torch.zeros(1)], source="list.pth")


# ---------------------------------------------------------------------------------------
# the key table of a load


def test_load_table_shows_official_mae_pretraining_keys(tmp_path: Path) -> None:
    state = official_mae_state(perturbed_encoder_state())
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": state}, path)
    model = ViTDet(img_size=64, embed_dim=32, depth=2, num_heads=2, window_size=2, global_block_indexes=(1,),
                   pretrain_img_size=64)

    with captured_log() as records:
        missing, unexpected = load_vitdet_weights(model, str(path))

    table = next(record for record in records if record.startswith(f"checkpoint {path}"))
    rows = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert "decoder_* (4)" in rows["unexpected"]
    assert "mask_token (1)" in rows["unexpected"]
    assert "cls_token (1)" in rows["unexpected"]
    assert "norm.* (2)" in rows["unexpected"]
    assert "NOT allowed" not in table
    assert "blocks.*.attn.rel_pos_h (2)" in rows["missing"]
    assert {"mask_token", "decoder_embed.weight", "decoder_pos_embed", "decoder_pred.weight"} <= set(unexpected)
    assert len(missing) == 4


def test_load_table_shows_pretraining_run_keys(tmp_path: Path) -> None:
    encoder = perturbed_encoder_state()
    state = {f"encoder.{key}": value for key, value in encoder.items()}
    state["decoder.mask_token"] = torch.zeros(1, 1, 16)
    state["decoder.blocks.0.norm1.weight"] = torch.ones(16)
    state["mi_max.head.fc1.weight"] = torch.zeros(8, 32)
    state["mi_min.mu.0.weight"] = torch.zeros(8, 32)
    path = tmp_path / "iter_1.pth"
    torch.save({"state_dict": state, "meta": {"iter": 1}}, path)
    backbone = ViTSeg(img_size=64, embed_dim=32, depth=2, num_heads=2, out_indices=(0, 1),
                      init_cfg=dict(type="Pretrained", checkpoint=str(path)))

    with captured_log() as records:
        missing, unexpected = backbone.load_pretrained(str(path))

    table = next(record for record in records if record.startswith(f"checkpoint {path}"))
    assert "decoder.* (2)" in table
    assert "mi_max.* (1)" in table
    assert "mi_min.* (1)" in table
    assert missing == []
    assert sorted(unexpected) == sorted(
        ["norm.weight", "norm.bias", "decoder.mask_token", "decoder.blocks.0.norm1.weight",
         "mi_max.head.fc1.weight", "mi_min.mu.0.weight"]
    )


def test_key_outside_allow_list_named_in_table(tmp_path: Path) -> None:
    state = perturbed_encoder_state()
    state["head.weight"] = torch.zeros(10, 32)  # a classifier: not part of any allow-list
    path = tmp_path / "with_classifier.pth"
    torch.save({"model": state}, path)
    backbone = ViTSeg(img_size=64, embed_dim=32, depth=2, num_heads=2, out_indices=(0, 1))

    with captured_log() as records, pytest.raises(CheckpointError, match=r"unexpected \['head.weight'\]"):
        backbone.load_pretrained(str(path))

    table = next(record for record in records if record.startswith(f"checkpoint {path}"))
    assert "NOT allowed: head.weight" in table


# ---------------------------------------------------------------------------------------
# export formats of tools/convert_checkpoint.py


@pytest.fixture()
def run_checkpoint(tmp_path: Path) -> tuple[Path, nn.Module]:
    """Save the demo MI-MAE model like a Runner checkpoint: config text in meta, all parts in state_dict."""
    import mimae.models  # noqa: F401  (registers MIMAE and MAEViT)
    from mimae.registry import MODELS

    torch.manual_seed(0)
    cfg = Config.fromfile(str(MIMAE_DEMO))
    with DefaultScope.overwrite_default_scope("mimae"):
        model = MODELS.build(cfg.model)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    path = tmp_path / "iter_1.pth"
    torch.save({"meta": {"cfg": cfg.pretty_text, "iter": 1}, "state_dict": model.state_dict()}, path)
    return path, model


def test_export_mimae_format_has_encoder_only(run_checkpoint, tmp_path: Path) -> None:
    path, model = run_checkpoint
    out = tmp_path / "encoder.pth"

    written = convert(str(path), str(out))

    reread = torch.load(out, weights_only=True)
    assert set(reread) == {"model"}
    assert set(reread["model"]) == set(model.encoder.state_dict())
    assert set(written) == set(model.encoder.state_dict())
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(reread["model"][key], value), key


def test_export_timm_format_loads_strictly(run_checkpoint, tmp_path: Path) -> None:
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    path, model = run_checkpoint
    out = tmp_path / "encoder_timm.pth"

    convert(str(path), str(out), "timm")

    state = torch.load(out, weights_only=True)
    assert "model" not in state  # a bare state dict
    kwargs = timm_model_kwargs(model.encoder, num_heads=3)
    assert kwargs == dict(img_size=64, patch_size=16, in_chans=3, embed_dim=192, depth=4, num_heads=3,
                          mlp_ratio=4.0, qkv_bias=True, class_token=True, global_pool="token", num_classes=0)
    timm_model = timm_vit.VisionTransformer(**kwargs)
    timm_model.load_state_dict(state, strict=True)

    # A classifier head is the only thing a timm model with classes misses.
    with_head = timm_vit.VisionTransformer(**{**kwargs, "num_classes": 10})
    result = with_head.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == sorted(TIMM_HEAD_KEYS)
    assert result.unexpected_keys == []

    timm_model.eval()
    model.encoder.eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(timm_model.forward_features(image), model.encoder(image), rtol=1e-5, atol=1e-5)


def test_export_timm_file_for_create_model(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    # The layout of timm's vit_tiny_patch16_224: 192-d, 12 blocks, 3 heads, 224 px.
    torch.manual_seed(0)
    encoder = VisionTransformer(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3)
    source = tmp_path / "tiny_encoder.pth"
    torch.save({"model": encoder.state_dict()}, source)  # no config: the shapes fix the architecture
    out = tmp_path / "tiny_timm.pth"

    convert(str(source), str(out), "timm", num_heads=3)

    # num_classes=0 in the overlay keeps timm's load strict (it relaxes it when classes differ).
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(out), num_classes=0),
        num_classes=0,
    )
    model.eval()
    encoder.eval()
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(image), encoder(image), rtol=1e-5, atol=1e-5)


class Detectron2Attention(nn.Module):
    """Parameters of detectron2's ``Attention`` (modeling/backbone/vit.py): qkv, proj, rel_pos_h/w."""

    def __init__(self, dim: int, num_heads: int, use_rel_pos: bool, input_size: tuple[int, int]) -> None:
        super().__init__()
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))


class Detectron2Block(nn.Module):
    """Parameters of detectron2's ``Block``: norm1, attn, norm2 and timm's ``Mlp`` (fc1, fc2)."""

    def __init__(self, dim: int, num_heads: int, use_rel_pos: bool, input_size: tuple[int, int]) -> None:
        super().__init__()
        from timm.layers import Mlp

        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Detectron2Attention(dim, num_heads, use_rel_pos, input_size)
        self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(in_features=dim, hidden_features=dim * 4, act_layer=nn.GELU)


class Detectron2PatchEmbed(nn.Module):
    """Parameters of detectron2's ``PatchEmbed`` (modeling/backbone/utils.py): one conv ``proj``."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)


class Detectron2ViT(nn.Module):
    """Parameter names and shapes of detectron2's ``ViT`` with ``use_abs_pos=True``.

    ``pos_embed`` has ``1 + (pretrain_img_size // patch_size) ** 2`` slots, the leading one
    for the cls token (``pretrain_use_cls_token=True``). Window blocks get tables of the
    window size, global blocks of the input grid. There is no cls token and no final norm.
    """

    def __init__(self, embed_dim: int, depth: int, num_heads: int, pretrain_img_size: int, patch_size: int,
                 use_rel_pos: bool, img_size: int = 1024, window_size: int = 14,
                 window_block_indexes: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.patch_embed = Detectron2PatchEmbed(patch_size, embed_dim)
        num_patches = (pretrain_img_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        grid = img_size // patch_size
        self.blocks = nn.ModuleList(
            Detectron2Block(
                embed_dim,
                num_heads,
                use_rel_pos,
                (window_size, window_size) if index in window_block_indexes else (grid, grid),
            )
            for index in range(depth)
        )


class Detectron2Backbone(nn.Module):
    """``SimpleFeaturePyramid`` with the ViT as ``net`` and pyramid levels named ``simfp_<stage>``.

    Only the ViT parameter names are reproduced exactly. Each pyramid level is one conv here.
    """

    def __init__(self, net: nn.Module, dim: int, with_levels: bool) -> None:
        super().__init__()
        if with_levels:
            for stage in (2, 3, 4, 5):
                self.add_module(f"simfp_{stage}", nn.Sequential(nn.Conv2d(dim, 8, 1)))
        self.net = net


class Detectron2Model(nn.Module):
    """The ``backbone`` attribute of detectron2's ``GeneralizedRCNN``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone


def test_export_detectron2_layout(run_checkpoint, tmp_path: Path) -> None:
    pytest.importorskip("timm")
    path, model = run_checkpoint
    out = tmp_path / "encoder_d2.pth"

    convert(str(path), str(out), "detectron2")

    payload = torch.load(out, weights_only=True)
    assert set(payload) == {"model", "__author__"}
    state = payload["model"]
    assert all(key.startswith("backbone.net.") for key in state)
    assert state["backbone.net.pos_embed"].shape == (1, 1 + 4 * 4, 192)

    # Strict: the exact parameter set of detectron2's ViT without relative positions.
    plain = Detectron2Model(Detectron2Backbone(
        Detectron2ViT(192, 4, 3, pretrain_img_size=64, patch_size=16, use_rel_pos=False), 192, with_levels=False))
    plain.load_state_dict(state, strict=True)
    for key, value in model.encoder.state_dict().items():
        if key in ("cls_token", "norm.weight", "norm.bias"):
            continue
        assert torch.equal(plain.state_dict()[f"backbone.net.{key}"], value), key

    # The recipe's model: rel-pos tables in every block and the pyramid levels are all it misses.
    recipe = Detectron2Model(Detectron2Backbone(
        Detectron2ViT(192, 4, 3, pretrain_img_size=64, patch_size=16, use_rel_pos=True, img_size=128,
                      window_size=4, window_block_indexes=(0, 2)), 192, with_levels=True))
    result = recipe.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert all(
        key.endswith((".rel_pos_h", ".rel_pos_w")) or key.startswith("backbone.simfp_")
        for key in result.missing_keys
    )
    assert sum(key.endswith(".rel_pos_h") for key in result.missing_keys) == 4


def test_detectron2_file_loads_back_into_vitdet(run_checkpoint, tmp_path: Path) -> None:
    path, model = run_checkpoint
    out = tmp_path / "encoder_d2.pth"
    convert(str(path), str(out), "detectron2")
    backbone = ViTDet(img_size=128, embed_dim=192, depth=4, num_heads=3, window_size=4,
                      global_block_indexes=(1, 3), pretrain_img_size=64)

    missing, unexpected = load_vitdet_weights(backbone, str(out))

    assert unexpected == []
    assert all(key.endswith((".rel_pos_h", ".rel_pos_w")) for key in missing)
    for key, value in model.encoder.state_dict().items():
        if key in ("cls_token", "norm.weight", "norm.bias"):
            continue
        assert torch.equal(backbone.state_dict()[key], value), key


def test_export_detectron2_rejects_non_square_grid() -> None:
    encoder = VisionTransformer(img_size=(64, 96), patch_size=16, embed_dim=32, depth=1, num_heads=2)

    with pytest.raises(ValueError, match="4x6 grid"):
        export_payload(encoder.state_dict(), "detectron2", encoder)


def test_detectron2_names_drop_cls_and_final_norm() -> None:
    state = perturbed_encoder_state()

    renamed = to_detectron2_names(state)

    assert len(renamed) == len(state) - 3
    assert "backbone.net.blocks.1.mlp.fc2.weight" in renamed
    assert not any(key.endswith(("cls_token", "net.norm.weight", "net.norm.bias")) for key in renamed)


def test_encoder_shapes_inferred_without_config() -> None:
    state = perturbed_encoder_state(img_size=96, embed_dim=48, depth=3, num_heads=4, mlp_ratio=2.0)

    encoder = build_encoder_from_shapes(state, num_heads=None)

    encoder.load_state_dict(state, strict=True)
    assert encoder.grid_size == (6, 6)
    assert len(encoder.blocks) == 3
    assert encoder.blocks[0].mlp.fc1.out_features == 96


def test_export_rejects_incomplete_encoder(tmp_path: Path) -> None:
    state = perturbed_encoder_state()
    del state["blocks.1.mlp.fc1.weight"]
    source = tmp_path / "incomplete.pth"
    torch.save({"model": state}, source)

    with pytest.raises(RuntimeError, match="blocks.1.mlp.fc1.weight"):
        convert(str(source), str(tmp_path / "out.pth"))
    with pytest.raises(ValueError, match="unknown format"):
        convert(str(source), str(tmp_path / "out.pth"), "onnx")
    assert not (tmp_path / "out.pth").exists()


def test_export_rejects_detection_run(tmp_path: Path) -> None:
    cfg = Config.fromfile(str(REPO_ROOT / "configs/coco/mask-rcnn_vit-b-p16-simplefpn_8xb8-lsj-amp-100e_coco_demo.py"))
    with DefaultScope.overwrite_default_scope("mmdet"):
        backbone = ViTDet(img_size=(64, 64), embed_dim=32, depth=2, num_heads=2, window_size=2,
                          global_block_indexes=(1,), pretrain_img_size=64)
    state = {f"backbone.{key}": value for key, value in backbone.state_dict().items()}
    source = tmp_path / "iter_10.pth"
    torch.save({"meta": {"cfg": cfg.pretty_text, "iter": 10}, "state_dict": state}, source)

    with pytest.raises(ValueError, match="has no model.encoder .*'MaskRCNN'.*not a pretrained encoder"):
        convert(str(source), str(tmp_path / "out.pth"))
    assert not (tmp_path / "out.pth").exists()


def test_convert_cli_prints_model_arguments(run_checkpoint, tmp_path: Path, capsys) -> None:
    path, _ = run_checkpoint

    main([str(path), str(tmp_path / "d2.pth"), "--format", "detectron2"])
    main([str(path), str(tmp_path / "timm.pth"), "--format", "timm"])

    output = capsys.readouterr().out
    assert "pretrain_img_size=64" in output
    assert "num_heads=3" in output
    assert "(detectron2): 51 tensors" in output
    assert "(timm): 54 tensors" in output
