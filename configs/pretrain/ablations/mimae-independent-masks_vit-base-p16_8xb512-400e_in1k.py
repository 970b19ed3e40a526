# MI-MAE with 4 independently drawn masks per image: views may share visible patches.
_base_ = ["../mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k.py"]

model = dict(mask_strategy="independent")
