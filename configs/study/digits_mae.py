# Equal-compute study: plain MAE, one random mask per image. 256 images x 1 view per step
# keeps the encoder views per step equal to the 4-view methods (64 images x 4 views).
_base_ = ["./digits_mimae.py"]

model = dict(num_views=1, mi_max=None, mi_min=None)
train_dataloader = dict(batch_size=256)
