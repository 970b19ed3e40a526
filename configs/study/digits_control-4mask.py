# Equal-compute study: the control, MAE with 4 orthogonal masks and no MI terms.
_base_ = ["./digits_mimae.py"]

model = dict(mi_max=None, mi_min=None)
