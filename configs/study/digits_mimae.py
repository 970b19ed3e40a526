# Equal-compute study on scikit-learn's handwritten digits (8 x 8 upsampled to 32 x 32):
# full MI-MAE. The other methods of the study inherit this file and change one thing.
# Every method processes 256 encoder views per step: 64 images x 4 views here.
_base_ = ["../pretrain/mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k.py"]

data_root = "work_dirs/study/digits/"  # written by tools/study_equal_compute.py
img_size = 32
model = dict(
    encoder=dict(img_size=img_size, patch_size=4, embed_dim=128, depth=4, num_heads=4),
    decoder=dict(embed_dim=64, depth=2, num_heads=4),
    mi_max=dict(hidden_dim=256, proj_dim=64),
    mi_min=dict(hidden_dim=128),
    # Digits are gray: the pixel mean and std of the whole set (0-255 units) on every channel.
    data_preprocessor=dict(mean=[78.0, 78.0, 78.0], std=[96.0, 96.0, 96.0]),
)
train_pipeline = [
    dict(type="LoadImagePIL"),
    dict(type="RandomResizedCropPIL", size=img_size, scale=(0.5, 1.0), interpolation="bicubic"),
    dict(type="PackImage"),  # no flip: mirrored digits are other shapes
]
train_dataloader = dict(
    batch_size=64,
    num_workers=1,
    persistent_workers=True,
    pin_memory=False,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(data_root=data_root, data_prefix=dict(img_path="train"), verify="none", pipeline=train_pipeline),
)
max_iters = 500
warmup_iters = 50
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1.5e-3, betas=(0.9, 0.95), weight_decay=0.05, fused=True),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys={"pos_embed": dict(decay_mult=0.0), "cls_token": dict(decay_mult=0.0),
                                    "mask_token": dict(decay_mult=0.0)}),
)
auto_scale_lr = dict(base_batch_size=64, enable=False)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters),
    dict(type="CosineAnnealingLR", T_max=max_iters - warmup_iters, by_epoch=False, begin=warmup_iters,
         end=max_iters, eta_min=0.0),
]
train_cfg = dict(_delete_=True, type="IterBasedTrainLoop", max_iters=max_iters)
default_hooks = dict(
    logger=dict(interval=50),
    # Every 100 iterations, so the k-NN read-out can follow accuracy over compute.
    checkpoint=dict(by_epoch=False, interval=100, max_keep_ckpts=-1, save_last=True, save_optimizer=False),
)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
log_processor = dict(by_epoch=False)
