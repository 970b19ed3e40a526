# MI-MAE with 2 orthogonal masks per image instead of 4 (mask ratio stays 0.75, so the
# two visible sets cover half of the grid).
_base_ = ["../mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k.py"]

model = dict(num_views=2)
