"""MMEngine pretraining runner pieces: datasets, transforms and hooks."""
