# UperNet on a ViT-B/16 backbone, ADE20K (SceneParse150), 512 x 512 crops, 160k iterations.
#
# The recipe is mmsegmentation 1.2.2's configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py,
# which reports 48.13 mIoU single-scale for MAE ViT-B (the MAE paper reports 48.1).
# Total batch 16 = 8 GPUs x 2 images per GPU; with another GPU count, keep the total at 16.
# The run is fp32. `tools/train.py --amp` switches to mixed precision, as mmseg's file name
# ("amp") suggests, although that file's own `fp16 = dict(...)` key has no effect in mmengine.
#
# Departures from the mmseg recipe:
# - The backbone is mimae's ViTSeg with an absolute position embedding only, resampled to each
#   input's grid. mmseg's MAE backbone adds a BEiT-style relative position bias and layer scale to
#   every block, but the pretraining encoder has neither, so there is nothing to load into them.
# - Test images are padded to a multiple of the patch size (16) and the padding is cut off the
#   prediction, because the backbone needs whole patches. mmseg pads nothing at test time.
#
# The config is self-contained instead of inheriting `mmseg::_base_/...`: that syntax imports
# pkg_resources (deprecated, and gone from setuptools >= 82), and the bases would bring an SGD
# schedule and 160k defaults that this file replaces anyway.

default_scope = "mmseg"
custom_imports = dict(imports=["mimae.downstream"], allow_failed_imports=False)

# ADEChallengeData2016.zip from the MIT SceneParsing benchmark, unpacked under data/ade/, contains
# images/{training,validation}/*.jpg and annotations/{training,validation}/*.png.
dataset_type = "ADE20KDataset"
data_root = "data/ade/ADEChallengeData2016"
crop_size = (512, 512)
num_classes = 150
# Annotation value 0 is "other" (not one of the 150 classes): reduce_zero_label maps 0 to 255
# (ignored by the loss and by IoUMetric) and every class c in 1..150 to c - 1.
reduce_zero_label = True

# Tensor-only encoder file: the official MAE release (mae_pretrain_vit_base.pth, loaded as it is)
# or the output of tools/convert_checkpoint.py for a mimae pretraining run.
pretrained_checkpoint = "checkpoints/mae_pretrain_vit_base.pth"

# SyncBN across the 8 GPUs. mmengine's Runner turns it into BatchNorm in a non-distributed run.
norm_cfg = dict(type="SyncBN", requires_grad=True)
embed_dim = 768

data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    # Training crops smaller than crop_size (images below 512 px after the resize) are padded to it.
    size=crop_size,
    test_cfg=dict(size_divisor=16),
)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type="ViTSeg",
        img_size=crop_size,
        patch_size=16,
        embed_dim=embed_dim,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path_rate=0.1,
        out_indices=(3, 5, 7, 11),
        with_cp=False,
        init_cfg=dict(type="Pretrained", checkpoint=pretrained_checkpoint),
    ),
    # Strides 4, 8, 16 and 32 from the stride-16 outputs of blocks 3, 5, 7 and 11.
    neck=dict(type="Feature2Pyramid", embed_dim=embed_dim, rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
    decode_head=dict(
        type="UPerHead",
        in_channels=[embed_dim] * 4,
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=768,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type="FCNHead",
        in_channels=embed_dim,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    # Windows of 512 with stride 341 (one third overlap) over images whose short side is 512.
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(341, 341)),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    # reduce_zero_label comes from the dataset below.
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    # Loaded after Resize: the metric compares against the annotation at its original size.
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
        reduce_zero_label=reduce_zero_label,
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
        reduce_zero_label=reduce_zero_label,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator

# AdamW as in the mmseg recipe, with layer-wise lr decay 0.65: a backbone parameter at layer
# id i of ViT-B (0 = embeddings, block N = N + 1) trains at lr x 0.65 ** (13 - i), neck and
# heads at lr. Norms, biases (every 1-D parameter), pos_embed and cls_token get no weight decay.
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05, fused=True),
    constructor="LayerDecayOptimWrapperConstructor",
    paramwise_cfg=dict(layer_decay_rate=0.65),
)
max_iters = 160000
warmup_iters = 1500
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=16000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=16000, max_keep_ckpts=3),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False

# Stop on a NaN or infinite loss term before its checkpoint is written, and record every
# logged term per iteration in work_dir/loss_trace.json (hooks of mimae's pretraining runner).
custom_hooks = [dict(type="mimae.NonFiniteLossHook"), dict(type="mimae.LossTraceHook")]
