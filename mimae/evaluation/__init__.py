"""Read-outs of a frozen encoder: k-NN and linear probe."""
from .readout import build_encoder_from_state, extract_features, knn_accuracy, linear_probe_accuracy

__all__ = ["build_encoder_from_state", "extract_features", "knn_accuracy", "linear_probe_accuracy"]
