"""Training-engine pieces: the safe runner."""
from .runner import RUN_CHECKPOINT_GLOBALS, SafeRunner, load_run_checkpoint

__all__ = ["RUN_CHECKPOINT_GLOBALS", "SafeRunner", "load_run_checkpoint"]
