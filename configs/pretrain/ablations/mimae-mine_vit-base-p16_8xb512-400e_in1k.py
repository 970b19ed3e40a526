# MI-MAE with the Donsker-Varadhan (MINE) bound instead of InfoNCE as the MI-max estimator.
_base_ = ["../mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k.py"]

model = dict(mi_max=dict(_delete_=True, type="MINE", hidden_dim=2048, proj_dim=256, critic_dim=512, ema_decay=0.99))
