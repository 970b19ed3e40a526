# MAE ViT-B/16 pretraining on ImageNet-1K, the published recipe (MAE paper; facebookresearch/mae
# PRETRAIN.md): mask ratio 0.75, normalized-pixel targets, 8-block 512-d decoder,
# AdamW (0.9, 0.95) with weight decay 0.05, base lr 1.5e-4 per 256 images, total batch
# 4096 = 8 GPUs x 512, cosine schedule with 40 warm-up epochs, 1600 epochs.
default_scope = "mimae"
custom_imports = dict(imports=["mimae.models", "pretrain"], allow_failed_imports=False)

data_root = "data/imagenet/"  # ImageNet-1K in folder layout: data/imagenet/train/<class>/<image>
batch_size = 512  # per GPU
img_size = 224

model = dict(
    type="MAE",
    encoder=dict(type="MAEViT", img_size=img_size, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    decoder=dict(type="MAEDecoder", embed_dim=512, depth=8, num_heads=16),
    mask_ratio=0.75,
    num_views=1,
    norm_pix_loss=True,
    # Images are decoded as RGB; ImageNet mean and std in 0-255 units.
    data_preprocessor=dict(
        type="ImgDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]
    ),
)

train_pipeline = [
    dict(type="LoadImagePIL"),
    dict(type="RandomResizedCropPIL", size=img_size, scale=(0.2, 1.0), interpolation="bicubic"),
    dict(type="RandomFlipPIL", prob=0.5),
    dict(type="PackImage"),
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    drop_last=True,
    # SeededSampler: DefaultSampler order; each sample's crop and flip follow from (seed, epoch, index),
    # so a resumed run repeats the augmentation of an uninterrupted one.
    sampler=dict(type="SeededSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(
        type="ImageFolder",
        data_root=data_root,
        data_prefix=dict(img_path="train"),
        verify="header",
        pipeline=train_pipeline,
    ),
)

max_epochs = 1600
warmup_epochs = 40
# Absolute lr = 1.5e-4 x 4096 / 256 = 2.4e-3; auto_scale_lr rescales it for other batches.
optim_wrapper = dict(
    type="AmpOptimWrapper",
    dtype="bfloat16",
    # fused=True: one kernel per parameter tensor instead of about ten element-wise passes.
    optimizer=dict(type="AdamW", lr=1.5e-4 * 4096 / 256, betas=(0.9, 0.95), weight_decay=0.05, fused=True),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            "pos_embed": dict(decay_mult=0.0),
            "cls_token": dict(decay_mult=0.0),
            "mask_token": dict(decay_mult=0.0),
        },
    ),
)
auto_scale_lr = dict(base_batch_size=4096, enable=True)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type="CosineAnnealingLR", T_max=max_epochs - warmup_epochs, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, eta_min=0.0, convert_to_iter_based=True),
]
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs)

default_hooks = dict(
    runtime_info=dict(type="RuntimeInfoHook"),
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=100),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=3, save_last=True),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
custom_hooks = [dict(type="NonFiniteLossHook"), dict(type="LossTraceHook")]
env_cfg = dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method="fork"), dist_cfg=dict(backend="nccl"))
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="Visualizer", vis_backends=vis_backends)
log_processor = dict(window_size=10, by_epoch=True)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0, diff_rank_seed=True)
