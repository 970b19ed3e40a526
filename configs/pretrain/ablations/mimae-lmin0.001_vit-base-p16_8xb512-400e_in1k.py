# λ sweep: MI-min weight lambda_min = 0.001 (default 0.01).
_base_ = ["../mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k.py"]

model = dict(lambda_min=0.001)
