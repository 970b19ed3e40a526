# CPU-sized sibling of mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k.py for the bundled demo photos: a 4-block ViT with
# 192-d tokens on 64 x 64 crops (a 4 x 4 patch grid), 500 iterations of batch 16, plain
# fp32 optimizer. Everything else is inherited from the published recipe.
_base_ = ["./mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k.py"]

img_size = 64
model = dict(
    encoder=dict(img_size=img_size, embed_dim=192, depth=4, num_heads=3),
    decoder=dict(embed_dim=128, depth=2, num_heads=4),
    mi_max=dict(hidden_dim=256, proj_dim=64),
    mi_min=dict(hidden_dim=128),
)

train_pipeline = [
    dict(type="LoadImagePIL"),
    dict(type="RandomResizedCropPIL", size=img_size, scale=(0.2, 1.0), interpolation="bicubic"),
    dict(type="RandomFlipPIL", prob=0.5),
    dict(type="PackImage"),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=True,
    pin_memory=False,
    # A batch of 16 small crops is cheaper to copy through the worker's pipe than to hand
    # over as shared memory.
    collate_fn=dict(type="mimae.inline_collate"),
    # An iteration-based run on 30 images: one endless sampler instead of a restart every epoch.
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        data_root="data/demo/coco/",
        data_prefix=dict(img_path="images"),
        # Only the detection training split, so the detection validation images stay unseen.
        ann_file="annotations/instances_train.json",
        verify="full",
        # The 64-pixel crops (smallest area 0.2) need a short side of 64 / sqrt(0.2) = 143 px.
        # Each photo is copied once at a 160 px short side, and a sample is ready about 4x sooner.
        downscale=dict(short_side=160, cache_dir="work_dirs/cache/demo_coco"),
        pipeline=train_pipeline,
    ),
)

max_iters = 500
warmup_iters = 50
optim_wrapper = dict(type="OptimWrapper", _delete_=True,
                     # lr 1.5e-3: the recipe rule (1.5e-4 x 16 / 256) is too slow to move in 500 iterations.
                     optimizer=dict(type="AdamW", lr=1.5e-3, betas=(0.9, 0.95), weight_decay=0.05, fused=True),
                     paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                                        custom_keys={"pos_embed": dict(decay_mult=0.0),
                                                     "cls_token": dict(decay_mult=0.0),
                                                     "mask_token": dict(decay_mult=0.0)}))
auto_scale_lr = dict(base_batch_size=16, enable=False)
# The recipe's hooks, and a 1 MiB result pipe that takes a whole demo batch (about 200 KB) at
# once. A pipe has 64 KiB by default, and each further part waits for the worker to be scheduled.
custom_hooks = [dict(type="NonFiniteLossHook"), dict(type="LossTraceHook"), dict(type="LoaderPipeHook")]
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters),
    dict(type="CosineAnnealingLR", T_max=max_iters - warmup_iters, by_epoch=False,
         begin=warmup_iters, end=max_iters, eta_min=0.0),
]
train_cfg = dict(_delete_=True, type="IterBasedTrainLoop", max_iters=max_iters)
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1, save_last=True),
)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
log_processor = dict(by_epoch=False)
