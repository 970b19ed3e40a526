# UperNet on a ViT-L/16 backbone, ADE20K (SceneParse150), 512 x 512 crops, 160k iterations.
#
# It inherits the ViT-B recipe (mmseg 1.2.2's MAE ViT-B UperNet settings). The ViT-L changes come
# from BEiT's official ViT-L UperNet recipe at 512 px, microsoft/unilm
# beit/semantic_segmentation/configs/beit/upernet/upernet_beit_large_24_512_slide_160k_ade20k.py.
# That recipe uses width 1024, 24 blocks, 16 heads, drop path 0.2 and features from blocks 7, 11,
# 15 and 23. Its UPerHead has 1024 channels, and it trains with AdamW at lr 2e-5, weight decay
# 0.05 and layer-wise lr decay 0.95, 1500 warm-up iterations and 8 GPUs x 2 images. Inference
# slides 512 windows with stride 341, as for ViT-B. mmseg
# 1.2.2's configs/beit/beit-large_upernet_8xb1-amp-160k_ade20k-640x640.py uses the same
# backbone outputs, channels, lr and layer decay at 640 px.
#
# NOTE: MAE ViT-L settings for ADE20K are not in mmseg 1.2.2 or in BEiT's repository. The
# lr 2e-5, layer decay 0.95 and drop path 0.2 below are BEiT-L's and were not tuned for MAE or
# MI-MAE encoders, which the ViT-B recipe trains at lr 1e-4 with layer decay 0.65.
_base_ = ["./upernet_vit-b-p16_8xb2-160k_ade20k-512x512.py"]

# Tensor-only encoder file: the official MAE release (mae_pretrain_vit_large.pth, loaded as it is)
# or the output of tools/convert_checkpoint.py for a mimae pretraining run.
pretrained_checkpoint = "checkpoints/mae_pretrain_vit_large.pth"
embed_dim = 1024

model = dict(
    backbone=dict(
        embed_dim=embed_dim,
        depth=24,
        num_heads=16,
        drop_path_rate=0.2,
        # The 4 outputs sit after 1/3, 1/2, 2/3 and all of the 24 blocks (ViT-B: blocks 3, 5, 7, 11).
        out_indices=(7, 11, 15, 23),
        init_cfg=dict(type="Pretrained", checkpoint=pretrained_checkpoint),
    ),
    neck=dict(embed_dim=embed_dim),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=1024),
    # The auxiliary FCN head reads the third output (block 15) and keeps 256 channels.
    auxiliary_head=dict(in_channels=embed_dim),
)

# Layer-wise lr decay 0.95: a backbone parameter at layer id i of ViT-L (0 = embeddings,
# block N = N + 1) trains at lr x 0.95 ** (25 - i), so block 0 at lr x 0.95 ** 24 = lr x 0.29;
# neck and heads at lr.
optim_wrapper = dict(optimizer=dict(lr=2e-5), paramwise_cfg=dict(layer_decay_rate=0.95))
