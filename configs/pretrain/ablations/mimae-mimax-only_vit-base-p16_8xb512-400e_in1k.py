# MI-MAE with only the MI-maximization term (InfoNCE between views); no CLUB.
_base_ = ["../mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k.py"]

model = dict(mi_min=None)
