# MI-MAE with only the MI-minimization term (CLUB on input and latent); no InfoNCE.
_base_ = ["../mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k.py"]

model = dict(mi_max=None)
