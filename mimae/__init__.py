"""MI-MAE: mask-invariant mutual information for masked image modeling."""
__version__ = "0.1.0"
