"""Downstream field cases: weight layouts, position tables, fine-tuning start, COCO edge cases, ViT-L recipes.

Each test runs the real code path: the backbones' own ``init_weights``, mmengine's Runner
with the demo configs, mmdet's CocoDataset, pipelines and CocoMetric on the bundled COCO
images, mmengine's optimizer constructor. Models are tiny (ViT-L recipes are built with
fewer blocks) and everything runs on CPU.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope

import mimae.downstream  # noqa: F401  (registers ViTDet, ViTSeg, SimpleFPN, SafeCocoMetric, the constructor)
from convert_checkpoint import convert
from mimae.checkpoint import CheckpointError
from mimae.downstream.vit_seg import ViTSeg
from mimae.downstream.vitdet import ViTDet
from mimae.models import MAE, VisionTransformer
from mimae.models.pos_embed import sincos_2d

REPO_ROOT = Path(__file__).resolve().parents[1]
COCO_ROOT = REPO_ROOT / "data/demo/coco"
ADE_ROOT = REPO_ROOT / "data/demo/ade20k/ADEChallengeData2016"
DET_DEMO = REPO_ROOT / "configs/coco/mask-rcnn_vit-b-p16-simplefpn_8xb8-lsj-amp-100e_coco_demo.py"
SEG_DEMO = REPO_ROOT / "configs/ade20k/upernet_vit-b-p16_8xb2-160k_ade20k-512x512_demo.py"
DET_VIT_L = REPO_ROOT / "configs/coco/mask-rcnn_vit-l-p16-simplefpn_8xb8-lsj-amp-100e_coco.py"
SEG_VIT_L = REPO_ROOT / "configs/ade20k/upernet_vit-l-p16_8xb2-160k_ade20k-512x512.py"

# COCO 2017 ids of the demo training split: 86 is a grayscale JPEG, 508 has no annotation,
# 257 and 540 each have one crowd region (iscrowd=1) among ordinary objects.
GRAYSCALE_ID = 86
UNANNOTATED_ID = 508
CROWD_IDS = (257, 540)

# ViTDet's tensors that no pretrained encoder has: they start at zero.
REL_POS_SUFFIXES = (".rel_pos_h", ".rel_pos_w")


def tiny_encoder_state(img_size=64, embed_dim=32, depth=2, num_heads=2) -> OrderedDict:
    """Return an encoder state dict in which no tensor keeps its initial value."""
    torch.manual_seed(0)
    encoder = VisionTransformer(img_size=img_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    return OrderedDict((k, v + 0.01 * torch.randn_like(v)) for k, v in encoder.state_dict().items())


def to_mmpretrain_names(state: dict) -> dict:
    """Rename timm/MAE keys to mmpretrain 1.2.0's MAEViT names (``backbone.`` prefix included).

    The table is written out here, independent of ``mimae.key_maps``, so the test checks
    the mapping rather than repeating it.
    """
    renamed = {}
    for key, value in state.items():
        name = key.replace("patch_embed.proj.", "patch_embed.projection.")
        name = name.replace("blocks.", "layers.").replace(".norm1.", ".ln1.").replace(".norm2.", ".ln2.")
        name = name.replace(".mlp.fc1.", ".ffn.layers.0.0.").replace(".mlp.fc2.", ".ffn.layers.1.")
        if name.startswith("norm."):
            name = "ln1." + name[len("norm."):]
        renamed["backbone." + name] = value
    renamed["neck.mask_token"] = torch.zeros(1, 1, 16)
    renamed["neck.decoder_embed.weight"] = torch.zeros(16, 32)
    return renamed


# Layouts of one encoder: official MAE, mmengine, prefixed and mmpretrain files.
LAYOUTS = {
    "model": lambda state: {"model": dict(state)},
    "state_dict": lambda state: {"state_dict": dict(state), "meta": {"epoch": 1}},
    "backbone-prefix": lambda state: {"state_dict": {f"backbone.{k}": v for k, v in state.items()}},
    "encoder-prefix": lambda state: {"state_dict": {f"encoder.{k}": v for k, v in state.items()}},
    "module-prefix": lambda state: {"model": {f"module.{k}": v for k, v in state.items()}},
    "mmpretrain": lambda state: {"state_dict": to_mmpretrain_names(state)},
}


def build_backbone(kind: str, checkpoint: str | None, **overrides) -> nn.Module:
    """Build a 2-block, 32-d backbone for 64 x 64 inputs that loads ``checkpoint`` in init_weights."""
    init_cfg = dict(type="Pretrained", checkpoint=checkpoint) if checkpoint else None
    if kind == "vitdet":
        options = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, window_size=2, global_block_indexes=(1,),
                       pretrain_img_size=64, init_cfg=init_cfg)
        options.update(overrides)
        return ViTDet(**options)
    options = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, out_indices=(0, 1), init_cfg=init_cfg)
    options.update(overrides)
    return ViTSeg(**options)


# ---------------------------------------------------------------------------------------
# weight layouts: every encoder tensor filled, whatever the layout


@pytest.mark.parametrize("kind", ["vitdet", "vitseg"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_fills_every_encoder_tensor(tmp_path: Path, kind: str, layout: str) -> None:
    state = tiny_encoder_state()
    path = tmp_path / f"encoder_{layout}.pth"
    torch.save(LAYOUTS[layout](state), path)
    backbone = build_backbone(kind, str(path))

    backbone.init_weights()

    encoder_keys = [k for k in backbone.state_dict() if not k.endswith(REL_POS_SUFFIXES)]
    filled = [k for k in encoder_keys if torch.equal(backbone.state_dict()[k], state[k])]
    assert len(filled) / len(encoder_keys) == 1.0, sorted(set(encoder_keys) - set(filled))
    rel_pos = [v for k, v in backbone.state_dict().items() if k.endswith(REL_POS_SUFFIXES)]
    assert all(float(table.abs().sum()) == 0.0 for table in rel_pos)


@pytest.mark.parametrize("kind", ["vitdet", "vitseg"])
def test_unmatched_file_names_file_and_keys(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "resnet_classifier.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}}, path)
    backbone = build_backbone(kind, str(path))

    with pytest.raises(CheckpointError) as error:
        backbone.init_weights()

    message = str(error.value)
    assert str(path) in message
    assert "first keys in the file: ['conv1.weight', 'fc.weight']" in message


# ---------------------------------------------------------------------------------------
# position tables resampled to any grid, with or without a cls slot in the file


def bicubic(grid_table: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """Resample ``(1, Hs * Ws, C)`` to ``(1, Hd * Wd, C)`` with F.interpolate (bicubic, no corners)."""
    dim = grid_table.shape[-1]
    grid = grid_table.reshape(1, *src_hw, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=dst_hw, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, dim)


@pytest.mark.parametrize("kind", ["vitdet", "vitseg"])
@pytest.mark.parametrize("with_cls_slot", [True, False], ids=["cls-slot", "no-cls-slot"])
@pytest.mark.parametrize("target_px", [(48, 80), (64, 64)], ids=["3x5", "4x4"])
def test_pos_embed_fits_any_grid(tmp_path: Path, kind: str, with_cls_slot: bool, target_px) -> None:
    state = tiny_encoder_state(img_size=224)  # a 14 x 14 table
    grid_table = torch.randn(1, 196, 32)
    cls_slot = torch.randn(1, 1, 32)
    state["pos_embed"] = torch.cat([cls_slot, grid_table], dim=1) if with_cls_slot else grid_table
    path = tmp_path / "encoder_224.pth"
    torch.save({"model": state}, path)
    size_key = "pretrain_img_size" if kind == "vitdet" else "img_size"
    backbone = build_backbone(kind, str(path), **{size_key: target_px})

    backbone.init_weights()

    dst_hw = (target_px[0] // 16, target_px[1] // 16)
    loaded = backbone.pos_embed.detach()
    assert loaded.shape == (1, 1 + dst_hw[0] * dst_hw[1], 32)
    torch.testing.assert_close(loaded[:, 1:], bicubic(grid_table, (14, 14), dst_hw))
    expected_cls = cls_slot if with_cls_slot else torch.zeros(1, 1, 32)
    assert torch.equal(loaded[:, :1], expected_cls)


@pytest.mark.parametrize("kind", ["vitdet", "vitseg"])
def test_pos_embed_of_same_non_square_grid_kept(tmp_path: Path, kind: str) -> None:
    state = tiny_encoder_state(img_size=(48, 80))  # a 3 x 5 table with a cls slot
    state["pos_embed"] = torch.randn(1, 1 + 15, 32)
    path = tmp_path / "encoder_48x80.pth"
    torch.save({"model": state}, path)
    size_key = "pretrain_img_size" if kind == "vitdet" else "img_size"
    # 16 slots also fit a 4 x 4 grid without a cls slot, so the file's grid is given.
    init_cfg = dict(type="Pretrained", checkpoint=str(path), pos_embed_grid=(3, 5))
    backbone = build_backbone(kind, None, init_cfg=init_cfg, **{size_key: (48, 80)})

    backbone.init_weights()

    assert torch.equal(backbone.pos_embed.detach(), state["pos_embed"])


@pytest.mark.parametrize("kind", ["vitdet", "vitseg"])
@pytest.mark.parametrize("file_grid", [(3, 5), (4, 4)], ids=["3x5-cls-slot", "4x4-no-cls-slot"])
def test_pos_embed_of_two_readings_rejected(tmp_path: Path, kind: str, file_grid) -> None:
    state = tiny_encoder_state()
    rows = file_grid[0] * file_grid[1]
    state["pos_embed"] = torch.randn(1, 16, 32)  # 1 + 3 x 5 or 4 x 4 slots
    path = tmp_path / "encoder_16_slots.pth"
    torch.save({"model": state}, path)
    size_key = "pretrain_img_size" if kind == "vitdet" else "img_size"

    ambiguous = build_backbone(kind, str(path), **{size_key: (48, 80)})
    with pytest.raises(CheckpointError, match=r"16 slots, which can be one cls slot and a 3x5 grid or a 4x4 grid "
                                              r"without a cls slot.*pos_embed_grid=\(H, W\)"):
        ambiguous.init_weights()

    init_cfg = dict(type="Pretrained", checkpoint=str(path), pos_embed_grid=file_grid)
    backbone = build_backbone(kind, None, init_cfg=init_cfg, **{size_key: (48, 80)})
    backbone.init_weights()
    loaded = backbone.pos_embed.detach()
    grid_table = state["pos_embed"][:, 16 - rows:]
    torch.testing.assert_close(loaded[:, 1:], bicubic(grid_table, file_grid, (3, 5)))
    expected_cls = state["pos_embed"][:, :1] if rows == 15 else torch.zeros(1, 1, 32)
    assert torch.equal(loaded[:, :1], expected_cls)


def test_pos_embed_grid_that_does_not_fit_rejected(tmp_path: Path) -> None:
    state = tiny_encoder_state()
    state["pos_embed"] = torch.randn(1, 16, 32)
    path = tmp_path / "encoder_16_slots.pth"
    torch.save({"model": state}, path)
    init_cfg = dict(type="Pretrained", checkpoint=str(path), pos_embed_grid=(2, 5))
    backbone = build_backbone("vitseg", None, init_cfg=init_cfg, img_size=(48, 80))
    with pytest.raises(CheckpointError, match="16 slots, which is not the 2x5 grid of pos_embed_grid"):
        backbone.init_weights()


def test_pos_embed_of_no_grid_rejected(tmp_path: Path) -> None:
    state = tiny_encoder_state()
    state["pos_embed"] = torch.randn(1, 15, 32)  # 15 or 14 patches: not the 4 x 4 grid, not square
    path = tmp_path / "odd_table.pth"
    torch.save({"model": state}, path)
    backbone = build_backbone("vitseg", str(path))

    with pytest.raises(CheckpointError, match="15 slots, which is neither the model's 4x4 grid nor a square grid"):
        backbone.init_weights()


# ---------------------------------------------------------------------------------------
# fine-tuning starts from the loaded weights (real Runner, demo configs)


class BackboneSnapshot(Hook):
    """Copy the backbone's tensors when training starts, after init_weights and any resume."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}

    def before_train(self, runner) -> None:
        self.state = {k: v.detach().clone() for k, v in runner.model.backbone.state_dict().items()}


def export_demo_encoder(tmp_path: Path) -> tuple[Path, OrderedDict]:
    """Export the demo encoder (192-d, 4 blocks, 64 px) with tools/convert_checkpoint.py."""
    state = tiny_encoder_state(img_size=64, embed_dim=192, depth=4, num_heads=3)
    source = tmp_path / "pretrain_weights.pth"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in state.items()}}, source)
    exported = tmp_path / "demo_encoder.pth"
    convert(str(source), str(exported), num_heads=3)
    return exported, state


def train_one_iteration(cfg: Config, scope: str, tmp_path: Path) -> tuple[dict, nn.Module]:
    """Train ``cfg`` for 1 iteration without validation; return the start snapshot and the model."""
    from mmengine.runner import Runner

    cfg.work_dir = str(tmp_path / "work")
    cfg.train_cfg.max_iters = 1
    cfg.train_cfg.val_interval = 1
    cfg.val_dataloader = None
    cfg.val_cfg = None
    cfg.val_evaluator = None
    snapshot = BackboneSnapshot()
    with DefaultScope.overwrite_default_scope(scope):
        runner = Runner.from_cfg(cfg)
        runner.register_hook(snapshot)
        runner.train()
    return snapshot.state, runner.model


@pytest.mark.timeout(600)
def test_detection_finetune_starts_from_file(tmp_path: Path) -> None:
    exported, state = export_demo_encoder(tmp_path)
    cfg = Config.fromfile(str(DET_DEMO))
    cfg.model.backbone.init_cfg.checkpoint = str(exported)

    start, model = train_one_iteration(cfg, "mmdet", tmp_path)

    # ViTDet stores pos_embed at the pretraining grid (4 x 4 here), so it equals the file too.
    for key, value in start.items():
        if key.endswith(REL_POS_SUFFIXES):
            assert float(value.abs().sum()) == 0.0, key
        else:
            assert torch.equal(value, state[key]), key
    trained = model.backbone.blocks[3].attn.qkv.weight.detach()
    assert not torch.equal(trained, state["blocks.3.attn.qkv.weight"])


@pytest.mark.timeout(600)
def test_segmentation_finetune_starts_from_file(tmp_path: Path) -> None:
    exported, state = export_demo_encoder(tmp_path)
    cfg = Config.fromfile(str(SEG_DEMO))
    cfg.model.backbone.init_cfg.checkpoint = str(exported)
    cfg.train_dataloader.dataset.data_root = str(ADE_ROOT)

    start, model = train_one_iteration(cfg, "mmseg", tmp_path)

    for key, value in start.items():
        if key == "pos_embed":
            continue
        assert torch.equal(value, state[key]), key
    # The 4 x 4 pretraining table is resampled to the 8 x 8 grid of the 128 px crop.
    expected_pos = torch.cat([state["pos_embed"][:, :1], bicubic(state["pos_embed"][:, 1:], (4, 4), (8, 8))], dim=1)
    torch.testing.assert_close(start["pos_embed"], expected_pos)
    trained = model.backbone.blocks[3].attn.qkv.weight.detach()
    assert not torch.equal(trained, state["blocks.3.attn.qkv.weight"])


# ---------------------------------------------------------------------------------------
# COCO evaluation: grayscale image, image without annotations, crowd regions


def write_coco_subset(tmp_path: Path, image_ids: tuple[int, ...]) -> Path:
    """Write the demo training annotations restricted to ``image_ids``."""
    full = json.loads((COCO_ROOT / "annotations/instances_train.json").read_text())
    subset = dict(full)
    subset["images"] = [image for image in full["images"] if image["id"] in image_ids]
    subset["annotations"] = [ann for ann in full["annotations"] if ann["image_id"] in image_ids]
    path = tmp_path / "instances_subset.json"
    path.write_text(json.dumps(subset))
    return path


def build_coco_dataset(ann_file: Path, pipeline: list, test_mode: bool = True):
    from mmdet.registry import DATASETS

    cfg = Config.fromfile(str(DET_DEMO))
    dataset_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    dataset_cfg.update(ann_file=str(ann_file), pipeline=pipeline, test_mode=test_mode)
    with DefaultScope.overwrite_default_scope("mmdet"):
        return DATASETS.build(dataset_cfg)


def build_coco_metric(ann_file: Path, dataset_meta: dict):
    from mmdet.registry import METRICS

    cfg = Config.fromfile(str(DET_DEMO))
    metric_cfg = copy.deepcopy(cfg.val_evaluator)
    metric_cfg.ann_file = str(ann_file)
    with DefaultScope.overwrite_default_scope("mmdet"):
        metric = METRICS.build(metric_cfg)
    metric.dataset_meta = dataset_meta
    return metric


def index_of(dataset, image_id: int) -> int:
    return next(i for i in range(len(dataset)) if dataset.get_data_info(i)["img_id"] == image_id)


def test_demo_training_split_drops_unannotated_image() -> None:
    cfg = Config.fromfile(str(DET_DEMO))
    train = build_coco_dataset(COCO_ROOT / "annotations/instances_train.json", cfg.train_pipeline, test_mode=False)

    ids = {train.get_data_info(i)["img_id"] for i in range(len(train))}

    assert UNANNOTATED_ID not in ids  # filter_empty_gt=True
    assert GRAYSCALE_ID in ids
    assert len(ids) == 29


def test_demo_test_pipeline_grayscale_and_unannotated(tmp_path: Path) -> None:
    from mmdet.registry import MODELS
    from mmengine.dataset import pseudo_collate
    from mmengine.evaluator import Evaluator

    cfg = Config.fromfile(str(DET_DEMO))
    ann_file = write_coco_subset(tmp_path, (GRAYSCALE_ID, UNANNOTATED_ID))
    dataset = build_coco_dataset(ann_file, cfg.test_pipeline)
    gray = dataset[index_of(dataset, GRAYSCALE_ID)]
    empty = dataset[index_of(dataset, UNANNOTATED_ID)]

    # The 640 x 512 grayscale JPEG becomes 3 equal channels, longer side 128.
    assert gray["inputs"].shape == (3, 128, 102)
    assert torch.equal(gray["inputs"][0], gray["inputs"][1])
    assert torch.equal(gray["inputs"][1], gray["inputs"][2])
    assert len(gray["data_samples"].gt_instances) == 3
    assert len(empty["data_samples"].gt_instances) == 0
    assert empty["data_samples"].gt_instances.bboxes.shape == (0, 4)

    torch.manual_seed(0)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(model_cfg)
    model.init_weights()
    model.eval()
    batch = pseudo_collate([gray, empty])
    with torch.no_grad():
        outputs = model.test_step(batch)
    evaluator = Evaluator(build_coco_metric(ann_file, dataset.metainfo))
    evaluator.process(data_samples=outputs, data_batch=batch)
    results = evaluator.evaluate(2)

    assert [sample.pred_instances.masks.shape[-2:] for sample in outputs] == [(640, 512), (480, 640)]
    for kind in ("bbox", "segm"):
        assert math.isfinite(results[f"coco/{kind}_mAP"])
        assert 0.0 <= results[f"coco/{kind}_mAP"] <= 1.0


def ground_truth_predictions(dataset, crowd_score: float | None) -> list[dict]:
    """Turn each image's loaded annotations into predictions with score 1.

    Crowd regions (ignore flag set) are left out, or predicted with ``crowd_score``.
    """
    samples = []
    for index in range(len(dataset)):
        results = dataset[index]
        ignore = torch.as_tensor(results["gt_ignore_flags"], dtype=torch.bool)
        keep = ~ignore if crowd_score is None else torch.ones_like(ignore)
        scores = torch.where(ignore, crowd_score if crowd_score is not None else 0.0, 1.0)
        masks = torch.as_tensor(results["gt_masks"].to_ndarray(), dtype=torch.bool)
        samples.append(
            dict(
                img_id=results["img_id"],
                ori_shape=results["ori_shape"],
                pred_instances=dict(
                    bboxes=results["gt_bboxes"].tensor[keep],
                    scores=scores[keep].float(),
                    labels=torch.as_tensor(results["gt_bboxes_labels"], dtype=torch.long)[keep],
                    masks=masks[keep],
                ),
            )
        )
    return samples


@pytest.fixture(scope="module")
def edge_case_images(tmp_path_factory):
    """The grayscale, unannotated and crowd images with their annotations as loaded by mmdet."""
    tmp_path = tmp_path_factory.mktemp("coco_edge_cases")
    ann_file = write_coco_subset(tmp_path, (GRAYSCALE_ID, UNANNOTATED_ID, *CROWD_IDS))
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True)]
    return ann_file, build_coco_dataset(ann_file, pipeline)


def evaluate_predictions(ann_file: Path, dataset, samples: list[dict]) -> dict:
    metric = build_coco_metric(ann_file, dataset.metainfo)
    metric.process({}, samples)
    return metric.evaluate(size=len(samples))


def test_crowd_regions_loaded_as_ignored(edge_case_images) -> None:
    _, dataset = edge_case_images

    flags = {dataset[i]["img_id"]: np.asarray(dataset[i]["gt_ignore_flags"]) for i in range(len(dataset))}

    assert set(flags) == {GRAYSCALE_ID, UNANNOTATED_ID, *CROWD_IDS}
    assert int(flags[257].sum()) == 1
    assert int(flags[540].sum()) == 1
    assert int(flags[GRAYSCALE_ID].sum()) == 0
    assert flags[UNANNOTATED_ID].size == 0


@pytest.mark.parametrize("crowd_score", [None, 0.5], ids=["crowd-not-predicted", "crowd-predicted"])
def test_ground_truth_predictions_score_one(edge_case_images, crowd_score) -> None:
    ann_file, dataset = edge_case_images

    results = evaluate_predictions(ann_file, dataset, ground_truth_predictions(dataset, crowd_score))

    for kind in ("bbox", "segm"):
        assert results[f"coco/{kind}_mAP"] == pytest.approx(1.0), kind
        assert results[f"coco/{kind}_mAP_50"] == pytest.approx(1.0), kind
        assert results[f"coco/{kind}_mAP_75"] == pytest.approx(1.0), kind


def test_false_detection_on_unannotated_image_counts(edge_case_images) -> None:
    ann_file, dataset = edge_case_images
    samples = ground_truth_predictions(dataset, crowd_score=None)
    empty = next(sample for sample in samples if sample["img_id"] == UNANNOTATED_ID)
    height, width = empty["ori_shape"]
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    mask[0, 10:60, 20:90] = True
    # A person (label 0) scored above every true detection, on the image without annotations.
    empty["pred_instances"] = dict(
        bboxes=torch.tensor([[20.0, 10.0, 90.0, 60.0]]),
        scores=torch.tensor([2.0]),
        labels=torch.tensor([0]),
        masks=mask,
    )

    results = evaluate_predictions(ann_file, dataset, samples)

    for kind in ("bbox", "segm"):
        assert results[f"coco/{kind}_mAP"] < 1.0, kind


# ---------------------------------------------------------------------------------------
# ViT-L recipes


def test_vit_l_detection_recipe_builds() -> None:
    from mmdet.registry import MODELS

    cfg = Config.fromfile(str(DET_VIT_L))
    backbone = cfg.model.backbone
    assert (backbone.embed_dim, backbone.depth, backbone.num_heads) == (1024, 24, 16)
    assert backbone.drop_path_rate == 0.4
    assert tuple(backbone.global_block_indexes) == (5, 11, 17, 23)
    assert (backbone.window_size, backbone.patch_size, backbone.pretrain_img_size) == (14, 16, 224)
    assert cfg.model.neck.in_channels == 1024
    assert cfg.optim_wrapper.paramwise_cfg == dict(layer_decay_rate=0.8)
    assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1, fused=True)
    assert cfg.train_cfg.max_iters == 184375
    assert cfg.param_scheduler[1].milestones == [163889, 177546]

    # Full width, 2 of the 24 blocks, to keep the build CPU-sized.
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.update(depth=2, global_block_indexes=(1,), init_cfg=None)
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(model_cfg)
    assert model.backbone.embed_dim == 1024
    assert model.backbone.blocks[0].attn.num_heads == 16
    assert model.backbone.blocks[1].drop_path.p == pytest.approx(0.4)
    assert model.neck.rescales[0][0].out_channels == 512
    assert model.neck.lateral_convs[0].conv.in_channels == 256


def test_vit_l_segmentation_recipe_builds() -> None:
    from mmseg.registry import MODELS

    cfg = Config.fromfile(str(SEG_VIT_L))
    backbone = cfg.model.backbone
    assert (backbone.embed_dim, backbone.depth, backbone.num_heads) == (1024, 24, 16)
    assert backbone.drop_path_rate == 0.2
    assert tuple(backbone.out_indices) == (7, 11, 15, 23)
    assert tuple(backbone.img_size) == (512, 512)
    assert cfg.model.neck.embed_dim == 1024
    assert cfg.model.decode_head.in_channels == [1024] * 4
    assert cfg.model.decode_head.channels == 1024
    assert cfg.model.auxiliary_head.in_channels == 1024
    assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=2e-5, betas=(0.9, 0.999), weight_decay=0.05, fused=True)
    assert cfg.optim_wrapper.paramwise_cfg == dict(layer_decay_rate=0.95)
    assert cfg.param_scheduler[0].end == 1500
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.model.test_cfg == dict(mode="slide", crop_size=(512, 512), stride=(341, 341))

    # Full width, 4 of the 24 blocks (UPerHead reads 4 maps), on a 64 x 64 image.
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.update(depth=4, out_indices=(0, 1, 2, 3), img_size=(64, 64), init_cfg=None)
    model_cfg.data_preprocessor.size = (64, 64)
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(model_cfg)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64), mode="tensor")
    assert logits.shape == (1, 150, 16, 16)
    assert model.backbone.blocks[0].attn.num_heads == 16


# ---------------------------------------------------------------------------------------
# MAE utilities: non-square sin-cos table, cls token outside the mask


def mae_sincos_reference(embed_dim: int, grid_hw: tuple[int, int]) -> np.ndarray:
    """Compute MAE's 2-D sin-cos table (facebookresearch/mae util/pos_embed.py) for an H x W grid.

    MAE's function takes square grids only, and this numpy copy of its formula takes any.
    The first half of the channels encodes the column and the second half the row. Each
    half is sin, then cos, of ``position / 10000 ** (2 i / half)``.
    """
    height, width = grid_hw
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    col_angles = cols.reshape(-1, 1) * omega
    row_angles = rows.reshape(-1, 1) * omega
    return np.concatenate(
        [np.sin(col_angles), np.cos(col_angles), np.sin(row_angles), np.cos(row_angles)], axis=1
    )


def test_sincos_table_224x320_matches_mae_formula() -> None:
    encoder = VisionTransformer(img_size=(224, 320), patch_size=16, embed_dim=64, depth=1, num_heads=2)

    table = encoder.pos_embed.detach()

    expected = torch.from_numpy(mae_sincos_reference(64, (14, 20))).float()
    assert table.shape == (1, 1 + 280, 64)
    assert torch.count_nonzero(table[0, 0]) == 0
    torch.testing.assert_close(table[0, 1:], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(sincos_2d(64, (14, 20), 1), table)


def test_mae_views_keep_cls_outside_mask() -> None:
    torch.manual_seed(0)
    model = MAE(encoder=dict(img_size=256, patch_size=16, embed_dim=32, depth=1, num_heads=2),
                decoder=dict(embed_dim=16, depth=1, num_heads=2), mask_ratio=0.75)

    views = model.encode_views(torch.randn(2, 3, 256, 256))

    assert views["ids_keep"].shape == (2, 1, 64)
    assert int(views["ids_keep"].max()) < 256
    assert views["mask"].shape == (2, 1, 256)
    assert views["mask"].sum(dim=-1).tolist() == [[192.0], [192.0]]
    assert views["latent"].shape == (2, 1 + 64, 32)  # the cls token comes on top of the 64 kept patches


def test_mae_views_of_non_square_image() -> None:
    torch.manual_seed(0)
    model = MAE(encoder=dict(img_size=(224, 320), patch_size=16, embed_dim=32, depth=1, num_heads=2),
                decoder=dict(embed_dim=16, depth=1, num_heads=2), mask_ratio=0.75)
    imgs = torch.randn(1, 3, 224, 320)  # a 14 x 20 grid of 280 patches

    views = model.encode_views(imgs)

    assert views["grid"] == (14, 20)
    assert views["ids_keep"].shape == (1, 1, 70)
    assert views["mask"].sum().item() == 210
    assert views["latent"].shape == (1, 1 + 70, 32)
    # The kept tokens are the patch embeddings at ids_keep, with the 14 x 20 position table.
    full, _ = model.encoder.embed_patches(imgs)
    torch.testing.assert_close(views["visible_tokens"][0], full[0, views["ids_keep"][0, 0]])
    losses = model.loss(imgs, [])
    assert torch.isfinite(losses["loss_rec"])


# ---------------------------------------------------------------------------------------
# layer-wise lr decay with a cls token: groups and the printed table agree


class SegmentationLike(nn.Module):
    """A 2-block ViTSeg (cls token) with a register-like token, a neck and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = ViTSeg(img_size=32, embed_dim=16, depth=2, num_heads=2, out_indices=(0, 1))
        self.backbone.register_tokens = nn.Parameter(torch.zeros(1, 2, 16))
        self.neck = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 4)


@contextlib.contextmanager
def captured_log():
    logger = MMLogger.get_current_instance()
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_layer_decay_table_matches_groups() -> None:
    from mmengine.optim import build_optim_wrapper

    model = SegmentationLike()
    cfg = dict(optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05),
               constructor="LayerDecayOptimWrapperConstructor", paramwise_cfg=dict(layer_decay_rate=0.75))
    with captured_log() as records:
        wrapper = build_optim_wrapper(model, cfg)

    groups = wrapper.optimizer.param_groups
    table = next(record for record in records if record.startswith("layer-wise lr decay 0.75"))
    rows = [line.split(None, 5) for line in table.splitlines()[2:]]
    assert len(rows) == len(groups)
    for row, group in zip(rows, groups):
        layer, scale, lr, weight_decay, count = row[:5]
        assert int(layer) == group["layer_id"]
        assert float(scale) == pytest.approx(group["lr_scale"], rel=1e-3)
        assert float(lr) == pytest.approx(group["lr"], rel=1e-2)
        assert float(weight_decay) == group["weight_decay"]
        assert int(count) == len(group["params"])

    def group_of(param):
        (match,) = [g for g in groups if any(p is param for p in g["params"])]
        return match

    backbone = model.backbone
    # 2 blocks: embeddings and tokens id 0 (0.75 ** 3), block N id N + 1, neck and head id 3 (scale 1).
    for param in (backbone.cls_token, backbone.pos_embed):
        assert (group_of(param)["layer_id"], group_of(param)["weight_decay"]) == (0, 0.0)
    assert group_of(backbone.register_tokens)["layer_id"] == 0
    assert group_of(backbone.patch_embed.proj.weight)["lr"] == pytest.approx(1e-3 * 0.75**3)
    assert group_of(backbone.blocks[0].attn.qkv.weight)["lr"] == pytest.approx(1e-3 * 0.75**2)
    assert group_of(backbone.blocks[1].norm1.weight)["weight_decay"] == 0.0
    assert group_of(backbone.blocks[1].mlp.fc1.bias)["weight_decay"] == 0.0
    assert group_of(backbone.blocks[1].mlp.fc1.weight)["weight_decay"] == 0.05
    assert group_of(model.neck.weight)["lr"] == pytest.approx(1e-3)
    assert group_of(model.head.weight)["layer_id"] == 3
