# CPU-sized sibling of upernet_vit-l-p16_8xb2-160k_ade20k-512x512.py. The ViT-B demo already
# shrinks model, data and schedule to the bundled data; this file adds what the ViT-L recipe
# changes that still applies to a 4-block encoder: drop path 0.2 and layer decay 0.95. The
# demo keeps its own lr (1e-3), because the recipe's 2e-5 does not move 60 iterations.
_base_ = ["./upernet_vit-b-p16_8xb2-160k_ade20k-512x512_demo.py"]

model = dict(backbone=dict(drop_path_rate=0.2))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.95))
