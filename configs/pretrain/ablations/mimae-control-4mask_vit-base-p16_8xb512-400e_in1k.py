# Control: MAE with 4 orthogonal masks per image and no mutual-information terms.
# Same views and compute as MI-MAE; any gain of MI-MAE over this comes from the MI terms.
_base_ = ["../mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k.py"]

model = dict(mi_max=None, mi_min=None)
