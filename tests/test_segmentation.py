"""Segmentation transfer: the ViTSeg backbone, its checkpoint loading, ADE20K labels and a Runner smoke run.

Everything runs on CPU with tiny models and the 3 bundled ADE20K demo images.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData
from PIL import Image

mmseg = pytest.importorskip("mmseg")
from mmseg.datasets.transforms import LoadAnnotations  # noqa: E402
from mmseg.evaluation import IoUMetric  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

from mimae.checkpoint import CheckpointError  # noqa: E402
from mimae.downstream.vit_seg import ViTSeg  # noqa: E402
from mimae.models import VisionTransformer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE_CONFIG = REPO_ROOT / "configs/ade20k/upernet_vit-b-p16_8xb2-160k_ade20k-512x512.py"
DEMO_CONFIG = REPO_ROOT / "configs/ade20k/upernet_vit-b-p16_8xb2-160k_ade20k-512x512_demo.py"
DEMO_DATA_ROOT = REPO_ROOT / "data/demo/ade20k/ADEChallengeData2016"

register_all_modules(init_default_scope=False)


def tiny_backbone(**kwargs) -> ViTSeg:
    """A 2-block, 24-d ViTSeg stored for 64 x 64 inputs (a 4 x 4 grid)."""
    options = dict(img_size=64, patch_size=16, embed_dim=24, depth=2, num_heads=3, out_indices=(0, 1))
    options.update(kwargs)
    return ViTSeg(**options)


def bicubic_reference(pos_embed: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """Resample a ``(1, 1 + H * W, C)`` table with F.interpolate, keeping the cls slot."""
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, *src_hw, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=dst_hw, mode="bicubic", align_corners=False)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def write_mae_style_file(path: Path, img_size: int, embed_dim: int = 24, depth: int = 2) -> dict:
    """Save ``{'model': ...}`` like the official MAE release: encoder, decoder and mask token.

    Every encoder tensor is perturbed, so a tensor that was not loaded cannot equal the file.
    """
    torch.manual_seed(0)
    encoder = VisionTransformer(img_size=img_size, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=3)
    state = {key: value + 0.01 * torch.randn_like(value) for key, value in encoder.state_dict().items()}
    state["mask_token"] = torch.randn(1, 1, 16)
    state["decoder_embed.weight"] = torch.randn(16, embed_dim)
    state["decoder_pos_embed"] = torch.randn(1, 5, 16)
    state["decoder_blocks.0.attn.qkv.weight"] = torch.randn(48, 16)
    state["decoder_pred.weight"] = torch.randn(16 * 16 * 3, 16)
    torch.save({"model": state}, path)
    return state


# ---------------------------------------------------------------- backbone


@pytest.mark.parametrize("image_hw, grid_hw", [((48, 48), (3, 3)), ((48, 80), (3, 5))])
def test_backbone_any_grid(image_hw, grid_hw):
    backbone = tiny_backbone()
    backbone.init_weights()
    backbone.eval()
    image = torch.randn(1, 3, *image_hw)

    block_inputs = []
    backbone.blocks[0].register_forward_hook(lambda module, args, output: block_inputs.append(args[0]))
    with torch.no_grad():
        outs = backbone(image)

    assert len(outs) == 2
    for out in outs:
        assert out.shape == (1, 24, *grid_hw)

    expected_table = bicubic_reference(backbone.pos_embed.detach(), (4, 4), grid_hw)
    table = backbone.pos_embed_for(grid_hw).detach()
    assert table.shape == (1, 1 + grid_hw[0] * grid_hw[1], 24)
    assert torch.allclose(table, expected_table, atol=1e-6)

    # The first block receives the cls token and the patch tokens with the resampled table added.
    with torch.no_grad():
        patches = backbone.patch_embed.proj(image).flatten(2).transpose(1, 2)
        cls = backbone.cls_token + expected_table[:, :1]
        expected_input = torch.cat([cls, patches + expected_table[:, 1:]], dim=1)
    assert torch.allclose(block_inputs[0], expected_input, atol=1e-5)


def test_backbone_maps_keep_token_layout():
    backbone = tiny_backbone(out_indices=(1,))
    backbone.init_weights()
    backbone.eval()
    tokens = []
    backbone.blocks[1].register_forward_hook(lambda module, args, output: tokens.append(output))
    with torch.no_grad():
        (feature,) = backbone(torch.randn(1, 3, 48, 80))
    # Token 1 + r * 5 + c (after the cls token) is the map's pixel (r, c) on the 3 x 5 grid.
    assert torch.equal(feature[0, :, 2, 4], tokens[0][0, 1 + 2 * 5 + 4])
    assert torch.equal(feature[0, :, 0, 1], tokens[0][0, 1 + 0 * 5 + 1])


def test_backbone_drop_path_and_checkpointing():
    backbone = tiny_backbone(depth=3, out_indices=(0, 2), drop_path_rate=0.2)
    rates = [block.drop_path.p for block in backbone.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2])

    torch.manual_seed(0)
    plain = tiny_backbone(depth=3, out_indices=(0, 2))
    plain.init_weights()
    checkpointed = tiny_backbone(depth=3, out_indices=(0, 2), with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    image = torch.randn(2, 3, 32, 48)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        sum(out.square().sum() for out in model(image)).backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [dict(out_indices=(1, 0)), dict(out_indices=(0, 2)), dict(out_indices=()), dict(img_size=56)],
)
def test_backbone_rejects_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        tiny_backbone(**kwargs)


def test_backbone_rejects_unsupported_init_cfg():
    with pytest.raises(ValueError, match="prefix"):
        tiny_backbone(init_cfg=dict(type="Pretrained", checkpoint="x.pth", prefix="backbone."))
    with pytest.raises(ValueError, match="Pretrained"):
        tiny_backbone(init_cfg=dict(type="Kaiming"))


def test_layer_depth():
    backbone = tiny_backbone()
    cases = {
        "backbone.cls_token": 0,
        "backbone.pos_embed": 0,
        "backbone.patch_embed.proj.weight": 0,
        "backbone.blocks.0.norm1.weight": 1,
        "backbone.blocks.1.mlp.fc2.bias": 2,
        "decode_head.conv_seg.weight": 3,
        "neck.upsample_4x.0.weight": 3,
    }
    for name, expected in cases.items():
        assert backbone.get_layer_depth(name, prefix="backbone.") == (expected, 4), name
    # Every parameter of the backbone itself gets a depth below the top.
    for name, _ in backbone.named_parameters():
        assert backbone.get_layer_depth(name)[0] < 3, name


# ---------------------------------------------------------------- pretrained weights


def test_load_mae_style_file(tmp_path):
    path = tmp_path / "mae_pretrain.pth"
    # The file's grid is 2 x 2 (32 px) and the backbone's is 4 x 4 (64 px).
    state = write_mae_style_file(path, img_size=32)
    backbone = tiny_backbone(init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    backbone.init_weights()

    loaded = backbone.state_dict()
    for key, value in loaded.items():
        assert key in state, key
        if key == "pos_embed":
            continue
        assert torch.equal(value, state[key]), key
    assert torch.equal(loaded["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])

    assert loaded["pos_embed"].shape == (1, 1 + 16, 24)
    expected_pos = bicubic_reference(state["pos_embed"], (2, 2), (4, 4))
    assert torch.allclose(loaded["pos_embed"], expected_pos, atol=1e-6)
    assert torch.equal(loaded["pos_embed"][:, 0], state["pos_embed"][:, 0])

    # Nothing is missing; the unexpected keys are exactly the file's keys the backbone has no
    # place for: the decoder, the mask token and the unused final norm.
    missing, unexpected = backbone.load_pretrained(str(path))
    assert missing == []

    file_only = set(state) - set(loaded)
    assert set(unexpected) == file_only
    assert file_only == {
        "mask_token",
        "decoder_embed.weight",
        "decoder_pos_embed",
        "decoder_blocks.0.attn.qkv.weight",
        "decoder_pred.weight",
        "norm.weight",
        "norm.bias",
    }


def test_load_same_grid_keeps_pos_embed(tmp_path):
    path = tmp_path / "same_grid.pth"
    state = write_mae_style_file(path, img_size=64)
    backbone = tiny_backbone(init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    backbone.init_weights()
    assert torch.equal(backbone.pos_embed.detach(), state["pos_embed"])


@pytest.mark.parametrize(
    "content",
    [{"model": {"classifier.weight": torch.zeros(3, 3)}}, {"model": {"epoch": 3}}],
    ids=["unrelated-keys", "no-tensors"],
)
def test_load_file_without_matching_keys(tmp_path, content):
    path = tmp_path / "unrelated.pth"
    torch.save(content, path)
    backbone = tiny_backbone(init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        backbone.init_weights()


def test_load_file_of_other_architecture(tmp_path):
    path = tmp_path / "deeper.pth"
    # A 3-block encoder: blocks.2.* has no place in the 2-block backbone.
    write_mae_style_file(path, img_size=64, depth=3)
    backbone = tiny_backbone(init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(CheckpointError, match="blocks.2"):
        backbone.init_weights()


def test_load_file_missing_block(tmp_path):
    path = tmp_path / "shallow.pth"
    write_mae_style_file(path, img_size=64, depth=1)
    backbone = tiny_backbone(init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(CheckpointError, match="blocks.1"):
        backbone.init_weights()


# ---------------------------------------------------------------- ADE20K labels


@pytest.fixture()
def reduced_label(tmp_path) -> torch.Tensor:
    """Load the annotation [[0, 1], [2, 3]] with mmseg's LoadAnnotations and reduce_zero_label."""
    path = tmp_path / "label.png"
    Image.fromarray(np.array([[0, 1], [2, 3]], dtype=np.uint8), mode="L").save(path)
    results = LoadAnnotations()(dict(seg_map_path=str(path), reduce_zero_label=True, seg_fields=[]))
    return torch.from_numpy(results["gt_seg_map"].astype(np.int64))


def test_reduce_zero_label_map(reduced_label):
    assert reduced_label.tolist() == [[255, 0], [1, 2]]


def test_reduce_zero_label_loss_ignores_255(reduced_label):
    cfg = Config.fromfile(str(DEMO_CONFIG))
    # Other tests may leave another default scope behind; mmseg modules build in "mmseg".
    with DefaultScope.overwrite_default_scope("mmseg"):
        head = MODELS.build(cfg.model.auxiliary_head)
    assert head.ignore_index == 255
    sample = SegDataSample(gt_sem_seg=PixelData(data=reduced_label[None]))

    torch.manual_seed(0)
    logits = torch.randn(1, 150, 2, 2, requires_grad=True)
    loss = head.loss_by_feat(logits, [sample])["loss_ce"]
    loss.backward()
    assert torch.count_nonzero(logits.grad[0, :, 0, 0]) == 0
    assert torch.count_nonzero(logits.grad[0, :, 0, 1]) > 0
    assert torch.count_nonzero(logits.grad[0, :, 1]) > 0

    # mmseg's CrossEntropyLoss (avg_non_ignore=False) sums over valid pixels and divides by
    # all 4 pixels. The auxiliary head weighs its loss by 0.4.
    flat_logits = logits.detach()[0].flatten(1).t()  # (4, 150) in row-major pixel order
    flat_labels = reduced_label.flatten()
    valid_sum = F.cross_entropy(flat_logits[1:], flat_labels[1:], reduction="sum")
    assert loss.item() == pytest.approx(0.4 * valid_sum.item() / 4, rel=1e-5)

    changed = logits.detach().clone()
    changed[0, :, 0, 0] = torch.randn(150) * 10
    assert head.loss_by_feat(changed, [sample])["loss_ce"].item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("prediction_at_ignored", [0, 2])
def test_reduce_zero_label_iou_ignores_255(reduced_label, prediction_at_ignored):
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = dict(classes=("wall", "building", "sky"))
    prediction = reduced_label.clone()
    prediction[0, 0] = prediction_at_ignored
    metric.process({}, [dict(pred_sem_seg=dict(data=prediction[None]), gt_sem_seg=dict(data=reduced_label[None]))])
    results = metric.evaluate(size=1)
    assert results["mIoU"] == pytest.approx(100.0)
    assert results["aAcc"] == pytest.approx(100.0)


# ---------------------------------------------------------------- configs and Runner


def test_recipe_config_values():
    cfg = Config.fromfile(str(RECIPE_CONFIG))
    assert cfg.default_scope == "mmseg"
    assert cfg.custom_imports == dict(imports=["mimae.downstream"], allow_failed_imports=False)
    backbone = cfg.model.backbone
    assert backbone.type == "ViTSeg"
    assert tuple(backbone.out_indices) == (3, 5, 7, 11)
    assert backbone.drop_path_rate == 0.1
    assert tuple(backbone.img_size) == (512, 512)
    assert cfg.model.neck.rescales == [4, 2, 1, 0.5]
    assert cfg.model.decode_head.channels == 768
    assert cfg.model.auxiliary_head.in_index == 2
    assert cfg.model.auxiliary_head.loss_decode.loss_weight == 0.4
    assert cfg.model.test_cfg == dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.train_dataloader.dataset.reduce_zero_label is True
    assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05, fused=True)
    assert cfg.train_cfg.max_iters == 160000
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.end) == ("LinearLR", 1500)
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end) == ("PolyLR", 1.0, 0.0, 1500, 160000)


def test_recipe_weight_decay_groups():
    from mmengine.optim import build_optim_wrapper

    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.model.backbone.init_cfg = None
    # EncoderDecoder builds its data preprocessor in the default scope.
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(cfg.model)
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    names = {id(param): name for name, param in model.named_parameters()}
    decay = {}
    for group in optim_wrapper.optimizer.param_groups:
        for param in group["params"]:
            decay[names[id(param)]] = group["weight_decay"]
    assert len(decay) == len(names)
    for name, weight_decay in decay.items():
        no_decay = (
            name in ("backbone.pos_embed", "backbone.cls_token")
            or name.endswith(".bias")
            or ".norm" in name
            or ".bn." in name
            or name == "neck.upsample_4x.1.weight"  # the BatchNorm between the transposed convs
        )
        assert weight_decay == (0.0 if no_decay else 0.05), name

    lr = {}
    for group in optim_wrapper.optimizer.param_groups:
        for param in group["params"]:
            lr[names[id(param)]] = group["lr"]
    base = cfg.optim_wrapper.optimizer.lr
    depth = cfg.model.backbone.depth
    # Layer decay 0.65: block N at lr x 0.65 ** (depth - N), embeddings at 0.65 ** (depth + 1).
    assert lr["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(base * 0.65**depth)
    assert lr["backbone.pos_embed"] == pytest.approx(base * 0.65 ** (depth + 1))
    assert lr["decode_head.conv_seg.weight"] == pytest.approx(base)


def test_demo_config_matches_demo_encoder():
    cfg = Config.fromfile(str(DEMO_CONFIG))
    pretrain = Config.fromfile(str(REPO_ROOT / "configs/pretrain/mae_vit-base-p16_8xb512-amp-coslr-1600e_in1k_demo.py"))
    for key in ("embed_dim", "depth", "num_heads"):
        assert cfg.model.backbone[key] == pretrain.model.encoder[key], key
    assert cfg.model.backbone.patch_size == pretrain.model.encoder.patch_size
    assert tuple(cfg.model.backbone.out_indices) == (0, 1, 2, 3)


def run_demo(tmp_path: Path, max_iters: int):
    from mmengine.runner import Runner

    encoder_path = tmp_path / "demo_encoder.pth"
    write_mae_style_file(encoder_path, img_size=64, embed_dim=192, depth=4)
    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.work_dir = str(tmp_path / "work")
    cfg.train_cfg.max_iters = max_iters
    cfg.model.backbone.init_cfg.checkpoint = str(encoder_path)
    cfg.train_dataloader.dataset.data_root = str(DEMO_DATA_ROOT)
    cfg.val_dataloader.dataset.data_root = str(DEMO_DATA_ROOT)
    cfg.test_dataloader.dataset.data_root = str(DEMO_DATA_ROOT)
    # The Runner makes "mmseg" the process-wide default scope; the context restores the
    # previous scope afterwards, so later tests still build from their own registries.
    with DefaultScope.overwrite_default_scope("mmseg"):
        runner = Runner.from_cfg(cfg)
        runner.train()
    return runner


@pytest.mark.timeout(600)
def test_demo_runner_smoke(tmp_path):
    runner = run_demo(tmp_path, max_iters=2)
    miou = runner.message_hub.get_scalar("val/mIoU").current()
    assert math.isfinite(miou)
    assert 0.0 <= miou <= 100.0
    assert runner.iter == 2
    assert (tmp_path / "work" / "iter_2.pth").is_file()

    log_text = "".join(path.read_text() for path in (tmp_path / "work").glob("*/*.log"))
    assert "resampling pos_embed" in log_text
    counts = re.search(r"loaded\s+(\d+) of (\d+) model tensors", log_text)
    assert counts is not None
    assert counts.group(1) == counts.group(2)
