# ViTDet Mask R-CNN with a ViT-B/16 backbone from MAE or MI-MAE pretraining, COCO 2017,
# large-scale jitter at 1024 px, 100 epochs. Published results of this recipe with MAE
# ViT-B on COCO val: 51.6 box AP / 45.9 mask AP (detectron2 projects/ViTDet README) and
# 51.6 / 45.7 (mmdet 3.x projects/ViTDet README).
#
# The base configs are read from the installed mmdet package; the `mmdet::` prefix makes
# MMEngine 0.10.7 import pkg_resources, which setuptools < 82 provides.
_base_ = [
    "mmdet::_base_/models/mask-rcnn_r50_fpn.py",
    "mmdet::_base_/default_runtime.py",
]

custom_imports = dict(imports=["mimae.downstream"], allow_failed_imports=False)

# Encoder weights exported from pretraining ({'model': ...} with timm/MAE key names).
# Override with --cfg-options model.backbone.init_cfg.checkpoint=PATH.
pretrained = "checkpoints/mae_vit-base-p16_encoder.pth"

image_size = (1024, 1024)
norm_cfg = dict(type="LN2d", eps=1e-6)

model = dict(
    # Every image is at most 1024 x 1024 after the pipeline, so padding each batch to a
    # multiple of 1024 gives exactly 1024 x 1024 and the backbone always gets the 64 x 64
    # token grid of training. The padding is added after normalization, so it is zero
    # (the mean pixel) as in detectron2's ViTDet, and `img_shape` keeps the unpadded size
    # that predicted boxes are clipped to.
    data_preprocessor=dict(pad_size_divisor=image_size[0], pad_mask=True),
    backbone=dict(
        _delete_=True,
        type="ViTDet",
        img_size=image_size,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path_rate=0.1,
        window_size=14,
        global_block_indexes=(2, 5, 8, 11),
        use_rel_pos=True,
        pretrain_img_size=224,
        with_cp=False,
        init_cfg=dict(type="Pretrained", checkpoint=pretrained),
    ),
    neck=dict(
        _delete_=True,
        type="SimpleFPN",
        in_channels=768,
        out_channels=256,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        num_outs=5,
        norm_cfg=norm_cfg,
        act_cfg=dict(type="GELU"),
    ),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=dict(
            type="Shared4Conv1FCBBoxHead",
            conv_out_channels=256,
            norm_cfg=norm_cfg,
        ),
        mask_head=dict(norm_cfg=norm_cfg),
    ),
)

# Large-scale jitter: resize the 1024 target by a random factor in [0.1, 2.0], then crop
# to at most 1024 x 1024. The data preprocessor pads to 1024 x 1024.
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="RandomResize", scale=image_size, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(
        type="RandomCrop",
        crop_type="absolute_range",
        crop_size=image_size,
        recompute_bbox=True,
        allow_negative_crop=True,
    ),
    dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type="PackDetInputs"),
]
# The longer side is resized to 1024, and the data preprocessor pads to 1024 x 1024.
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=image_size, keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(
        type="PackDetInputs",
        meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
    ),
]

dataset_type = "CocoDataset"
data_root = "data/coco/"
train_dataloader = dict(
    batch_size=8,  # per GPU: 8 GPUs x 8 images = 64 images per iteration
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file="annotations/instances_train2017.json",
        data_prefix=dict(img="train2017/"),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file="annotations/instances_val2017.json",
        data_prefix=dict(img="val2017/"),
        test_mode=True,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader

val_evaluator = dict(
    # CocoMetric that reports 0 AP, not an empty dict, when nothing is detected.
    type="SafeCocoMetric",
    ann_file=data_root + "annotations/instances_val2017.json",
    metric=["bbox", "segm"],
    format_only=False,
)
test_evaluator = val_evaluator

# 100 epochs = 184375 iterations x 64 images / 118000 images per epoch (detectron2's count).
max_iters = 184375
# Validation and checkpoints every 5000 iterations. The loop also validates after the last one.
interval = 5000
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=interval)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

# AdamW with weight decay 0.1 and layer-wise lr decay 0.7: a backbone parameter at layer
# id i of ViT-B (0 = embeddings, block N = N + 1) trains at lr x 0.7 ** (13 - i); neck and
# heads at lr. No weight decay on norms, biases, pos_embed and rel-pos tables (detectron2
# keeps it on biases and rel-pos tables). AmpOptimWrapper needs a CUDA device.
optim_wrapper = dict(
    type="AmpOptimWrapper",
    loss_scale="dynamic",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1, fused=True),
    constructor="LayerDecayOptimWrapperConstructor",
    paramwise_cfg=dict(layer_decay_rate=0.7),
)

# Linear warm-up over 250 iterations from lr x 0.001, then lr x 0.1 at each milestone.
# The milestones are detectron2's: 163889 = 184375 x 8/9 and 177546 = 184375 x 26/27,
# which are 88.9 and 96.3 epochs (published as the 88 and 96 epoch steps).
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(
        type="MultiStepLR",
        by_epoch=False,
        begin=0,
        end=max_iters,
        milestones=[163889, 177546],
        gamma=0.1,
    ),
]

default_hooks = dict(
    logger=dict(type="LoggerHook", interval=50),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=interval, max_keep_ckpts=5),
)
log_processor = dict(type="LogProcessor", window_size=50, by_epoch=False)

# The lr above is for 64 images per iteration. `tools/train.py --auto-scale-lr` rescales it for other
# total batch sizes.
auto_scale_lr = dict(base_batch_size=64)

# Stop on a NaN or infinite loss term before its checkpoint is written, and record every
# logged term per iteration in work_dir/loss_trace.json (hooks of mimae's pretraining runner).
custom_hooks = [dict(type="mimae.NonFiniteLossHook"), dict(type="mimae.LossTraceHook")]
