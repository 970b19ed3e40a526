"""Training-engine pieces: the safe runner, the layer-wise lr decay constructor and a bf16 optimizer wrapper."""
from .layer_decay import LayerDecayOptimWrapperConstructor
from .optim_wrapper import BF16OptimWrapper
from .runner import RUN_CHECKPOINT_GLOBALS, SafeRunner, config_from_checkpoint, load_run_checkpoint

__all__ = ["BF16OptimWrapper", "LayerDecayOptimWrapperConstructor", "RUN_CHECKPOINT_GLOBALS", "SafeRunner", "config_from_checkpoint",
           "load_run_checkpoint"]
