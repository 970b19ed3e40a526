# MI-MAE ViT-B/16 pretraining on ImageNet-1K. The paper (Huang et al., ICLR 2025) follows
# MAE's recipe and trains 400 epochs with N = 4 orthogonal masks per image: each image is
# encoded and decoded four times, so 400 MI-MAE epochs cost about 1600 MAE epochs.
# The MI weights, temperature, pooling and head sizes below are inferred defaults: the
# paper does not publish them (see docs/method.md).
_base_ = ["./mae_vit-base-p16_8xb512-amp-coslr-1600e_in1k.py"]

model = dict(
    type="MIMAE",
    num_views=4,
    mask_ratio=0.75,  # with 4 views, 1 - 1/4: the visible sets tile the grid exactly
    mask_strategy="orthogonal",
    pooling="mean",
    mi_max=dict(type="InfoNCE", hidden_dim=2048, proj_dim=256, temperature=0.2, symmetric=True),
    mi_min=dict(type="CLUB", hidden_dim=512),
    lambda_max=0.05,
    lambda_min=0.01,
    lambda_q=1.0,
)

max_epochs = 400
warmup_epochs = 40  # as in MAE, whose recipe uses 40 warm-up epochs at every schedule length
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-4, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type="CosineAnnealingLR", T_max=max_epochs - warmup_epochs, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, eta_min=0.0, convert_to_iter_based=True),
]
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs)
