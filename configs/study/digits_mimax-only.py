# Equal-compute study: MI-MAE with only the InfoNCE (MI-max) term.
_base_ = ["./digits_mimae.py"]

model = dict(mi_min=None)
