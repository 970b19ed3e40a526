# CPU-sized sibling of mask-rcnn_vit-b-p16-simplefpn_8xb8-lsj-amp-100e_coco.py for the
# bundled demo data (30 training and 9 validation COCO images). It uses the 4-block, 192-d
# ViT of the demo pretraining configs, large-scale jitter at 128 px and narrower heads, and
# trains 60 iterations of batch 2 in fp32 with one validation and one checkpoint at the
# end. Everything else is inherited from the published recipe.
_base_ = ["./mask-rcnn_vit-b-p16-simplefpn_8xb8-lsj-amp-100e_coco.py"]

# Written by tools/run_demo.py after the demo MAE pretraining. Set another file with
# --cfg-options model.backbone.init_cfg.checkpoint=PATH.
pretrained = "work_dirs/demo/mae_encoder.pth"

image_size = (128, 128)
channels = 64
norm_cfg = dict(type="LN2d", eps=1e-6)

model = dict(
    data_preprocessor=dict(pad_size_divisor=image_size[0]),
    backbone=dict(
        img_size=image_size,
        embed_dim=192,
        depth=4,
        num_heads=3,
        # The 128 px input gives an 8 x 8 token grid: two 4 x 4 windows per axis.
        window_size=4,
        global_block_indexes=(1, 3),
        # The demo encoder is pretrained on 64 px crops, a 4 x 4 grid.
        pretrain_img_size=64,
        init_cfg=dict(type="Pretrained", checkpoint=pretrained),
    ),
    neck=dict(in_channels=192, out_channels=channels),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels),
        bbox_head=dict(in_channels=channels, conv_out_channels=channels, fc_out_channels=256),
        mask_roi_extractor=dict(out_channels=channels),
        mask_head=dict(num_convs=2, in_channels=channels, conv_out_channels=channels),
    ),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=128)),
    ),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=100),
        # After 60 iterations few class scores pass mmdet's default 0.05; a lower threshold
        # gives the metric enough detections to rank.
        rcnn=dict(score_thr=0.001),
    ),
)

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
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=image_size, keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(
        type="PackDetInputs",
        meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
    ),
]

data_root = "data/demo/coco/"
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        ann_file="annotations/instances_train.json",
        data_prefix=dict(img="images/"),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        ann_file="annotations/instances_val.json",
        data_prefix=dict(img="images/"),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + "annotations/instances_val.json")
test_evaluator = val_evaluator

max_iters = 60
# The loop validates after the last iteration whatever the interval.
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)

# fp32 for CPU, at the recipe's lr without batch scaling: scaling from 64 to 2 images
# would give 3e-6, which barely moves the weights in 60 iterations.
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1, fused=True),
    constructor="LayerDecayOptimWrapperConstructor",
    paramwise_cfg=dict(layer_decay_rate=0.7),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=10),
    # Steps at the recipe's fractions of the schedule: 60 x 8/9 = 53 and 60 x 26/27 = 58.
    dict(type="MultiStepLR", by_epoch=False, begin=0, end=max_iters, milestones=[53, 58], gamma=0.1),
]

default_hooks = dict(
    logger=dict(interval=10),
    # save_last writes the final checkpoint even when max_iters is overridden.
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1, save_last=True),
)
log_processor = dict(window_size=10)
env_cfg = dict(dist_cfg=dict(backend="gloo"))
