"""MI-MAE: mask-invariant mutual information for masked image modeling."""
