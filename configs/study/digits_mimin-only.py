# Equal-compute study: MI-MAE with only the CLUB (MI-min) term.
_base_ = ["./digits_mimae.py"]

model = dict(mi_max=None)
