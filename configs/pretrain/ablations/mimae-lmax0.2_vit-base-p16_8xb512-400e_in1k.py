# λ sweep: MI-max weight lambda_max = 0.2 (default 0.05).
_base_ = ["../mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k.py"]

model = dict(lambda_max=0.2)
