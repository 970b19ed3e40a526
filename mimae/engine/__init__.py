"""Training-engine pieces: the safe runner and the layer-wise lr decay constructor."""
from .layer_decay import LayerDecayOptimWrapperConstructor
from .runner import RUN_CHECKPOINT_GLOBALS, SafeRunner, config_from_checkpoint, load_run_checkpoint

__all__ = ["LayerDecayOptimWrapperConstructor", "RUN_CHECKPOINT_GLOBALS", "SafeRunner", "config_from_checkpoint",
           "load_run_checkpoint"]
