# ViTDet Mask R-CNN with a ViT-L/16 backbone from MAE or MI-MAE pretraining, COCO 2017,
# large-scale jitter at 1024 px, 100 epochs. It inherits the ViT-B recipe and changes what
# detectron2's projects/ViTDet/configs/COCO/mask_rcnn_vitdet_l_100ep.py changes over its ViT-B
# file: width 1024, 24 blocks, 16 heads, drop path 0.4, global attention in blocks 5, 11, 17
# and 23, and layer-wise lr decay 0.8. Data, heads, optimizer, lr, weight decay and the
# 184375-iteration schedule stay those of ViT-B, as in detectron2. Published result of this
# recipe with MAE ViT-L on COCO val: 55.5 box AP / 49.2 mask AP (detectron2 projects/ViTDet README).
_base_ = ["./mask-rcnn_vit-b-p16-simplefpn_8xb8-lsj-amp-100e_coco.py"]

# Encoder weights exported from pretraining ({'model': ...} with timm/MAE key names); the
# official mae_pretrain_vit_large.pth loads unchanged. Override with
# --cfg-options model.backbone.init_cfg.checkpoint=PATH.
pretrained = "checkpoints/mae_vit-large-p16_encoder.pth"

embed_dim = 1024
depth = 24

model = dict(
    backbone=dict(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=16,  # head width 1024 / 16 = 64, as in ViT-B (768 / 12)
        drop_path_rate=0.4,
        # Every sixth block attends globally: 24 blocks in 4 groups of 6, as 12 blocks in
        # 4 groups of 3 with blocks 2, 5, 8, 11 in ViT-B.
        global_block_indexes=(5, 11, 17, 23),
        init_cfg=dict(type="Pretrained", checkpoint=pretrained),
    ),
    # SimpleFPN builds its stride-4 and stride-8 levels from the 1024-channel map
    # (1024 -> 512 -> 256 and 1024 -> 512) before the 256-channel 1x1 and 3x3 convs.
    neck=dict(in_channels=embed_dim),
)

# Layer-wise lr decay 0.8: a backbone parameter at layer id i of ViT-L (0 = embeddings,
# block N = N + 1) trains at lr x 0.8 ** (25 - i), so block 0 at lr x 0.8 ** 24 = lr x 0.0047;
# neck and heads at lr.
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.8))
