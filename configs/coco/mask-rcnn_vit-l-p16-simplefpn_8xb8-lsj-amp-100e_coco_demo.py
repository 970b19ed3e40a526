# CPU-sized sibling of mask-rcnn_vit-l-p16-simplefpn_8xb8-lsj-amp-100e_coco.py. The ViT-B
# demo already shrinks model, data and schedule to the bundled data; this file adds what the
# ViT-L recipe changes that still applies to a 4-block encoder: drop path 0.4 and layer
# decay 0.8. Width, depth and global blocks stay those of the tiny demo encoder, so the
# demo pretraining files load into it.
_base_ = ["./mask-rcnn_vit-b-p16-simplefpn_8xb8-lsj-amp-100e_coco_demo.py"]

model = dict(backbone=dict(drop_path_rate=0.4))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.8))
