"""An MMEngine ``Runner`` that reads checkpoints safely, resumes predictably and writes atomically.

* MMEngine 0.10.7 calls ``torch.load`` without ``weights_only``. Since torch 2.6 that
  defaults to True, and resuming fails on the objects a Runner stores beside the
  tensors. This runner keeps ``weights_only=True``: it saves the message hub's history
  buffers as plain arrays (their default pickle refers to methods through ``getattr``,
  which a safe loader must reject) and allow-lists only numpy's array and scalar types,
  so no checkpoint, the run's own included, is ever fully unpickled.
* With ``resume=True`` the latest checkpoint in ``work_dir`` wins over ``load_from``;
  ``load_from`` then only initializes a run that has nothing to resume.
* Checkpoints are written under a temporary name and renamed, so a run killed while
  saving leaves the previous checkpoint as the latest complete one.
* Checkpoints carry the random state of the main process (torch, numpy, Python). On
  resume it is restored after the data loader has skipped the finished iterations and
  before the next batch is drawn, so masks and main-process augmentation continue as in
  an uninterrupted run.
"""
from __future__ import annotations

import os
import os.path as osp
import random

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import find_latest_checkpoint


def _numpy_globals() -> list:
    """Return the numpy types that ``meta`` and the message hub of a Runner checkpoint contain."""
    reconstruct = getattr(np, "_core", np.core).multiarray._reconstruct
    scalar = getattr(np, "_core", np.core).multiarray.scalar
    dtypes = [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "uint32", "bool")]
    return [reconstruct, scalar, np.ndarray, np.dtype, *dtypes]


# Non-tensor types a Runner checkpoint may hold; everything else is rejected by torch.load.
RUN_CHECKPOINT_GLOBALS = _numpy_globals()
HISTORY_MARK = "__history_buffer__"


def pack_history_buffers(checkpoint: dict) -> None:
    """Replace the message hub's ``HistoryBuffer`` objects by plain dicts, in place."""
    scalars = checkpoint.get("message_hub", {}).get("log_scalars", {})
    for key, buffer in list(scalars.items()):
        if isinstance(buffer, HistoryBuffer):
            log_history, count_history = buffer.data
            scalars[key] = {HISTORY_MARK: True, "log_history": torch.as_tensor(log_history),
                            "count_history": torch.as_tensor(count_history),
                            "max_length": buffer.max_length}


def unpack_history_buffers(checkpoint: dict) -> None:
    """Rebuild the ``HistoryBuffer`` objects that :func:`pack_history_buffers` flattened."""
    scalars = checkpoint.get("message_hub", {}).get("log_scalars", {})
    for key, value in list(scalars.items()):
        if isinstance(value, dict) and value.get(HISTORY_MARK):
            scalars[key] = HistoryBuffer(value["log_history"].tolist(), value["count_history"].tolist(),
                                         value["max_length"])


def config_from_checkpoint(checkpoint: dict):
    """Return the run's config stored in a Runner checkpoint (``meta['cfg']``), or None."""
    from mmengine.config import Config

    text = checkpoint.get("meta", {}).get("cfg")
    return Config.fromstring(text, file_format=".py") if text else None


def load_run_checkpoint(filename: str, map_location="cpu") -> dict:
    """Read a checkpoint written by a Runner with ``weights_only=True`` and the allow-list."""
    if not osp.isfile(filename):
        raise FileNotFoundError(f"checkpoint not found: {filename!r}")
    with torch.serialization.safe_globals(RUN_CHECKPOINT_GLOBALS):
        return torch.load(filename, map_location=map_location, weights_only=True)


def capture_random_state() -> dict:
    """Return the random state of torch (CPU and CUDA), numpy and Python's ``random``."""
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict) -> None:
    """Set the random state captured by :func:`capture_random_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(_as_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(state):
    # torch.load returns Python's state tuple as nested lists or tuples; random wants tuples.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


class _RestoreBeforeFetch:
    """Data-loader iterator proxy that restores a random state before fetch number ``skip + 1``."""

    def __init__(self, iterator, skip: int, state: dict) -> None:
        self._iterator = iterator
        self._remaining = skip
        self._state = state

    def __next__(self):
        if self._state is not None and self._remaining == 0:
            restore_random_state(self._state)
            self._state = None
        self._remaining -= 1
        return next(self._iterator)

    def __iter__(self):
        return self

    def __getattr__(self, name):
        return getattr(self._iterator, name)


@RUNNERS.register_module()
class SafeRunner(Runner):
    """Runner with safe checkpoint reading, latest-first resume, exact random-state resume
    and atomic checkpoint writes."""

    _loaded_random_state: dict | None = None
    _pending_random_state: dict | None = None

    def call_hook(self, fn_name: str, **kwargs) -> None:
        # The packing runs first, so hooks and the file always see the same layout.
        if fn_name == "before_save_checkpoint":
            pack_history_buffers(kwargs["checkpoint"])
            kwargs["checkpoint"]["meta"]["random_state"] = capture_random_state()
        elif fn_name == "after_load_checkpoint":
            unpack_history_buffers(kwargs["checkpoint"])
            self._loaded_random_state = kwargs["checkpoint"].get("meta", {}).get("random_state")
        elif fn_name == "before_train_epoch" and self._pending_random_state is not None:
            loop = self.train_loop
            if hasattr(loop, "dataloader_iterator"):
                # Iteration-based loops skip `iter` batches after this hook, then draw the next.
                loop.dataloader_iterator = _RestoreBeforeFetch(
                    loop.dataloader_iterator, loop.iter, self._pending_random_state)
            else:
                restore_random_state(self._pending_random_state)
            self._pending_random_state = None
        super().call_hook(fn_name, **kwargs)

    def resume(self, filename: str, *args, **kwargs) -> None:
        self._loaded_random_state = None
        super().resume(filename, *args, **kwargs)
        self._pending_random_state = self._loaded_random_state

    def load_checkpoint(self, filename: str, map_location="cpu", strict: bool = False,
                        revise_keys=((r"^module\.", ""),)):
        if osp.isfile(filename):
            with torch.serialization.safe_globals(RUN_CHECKPOINT_GLOBALS):
                return super().load_checkpoint(filename, map_location, strict, revise_keys)
        return super().load_checkpoint(filename, map_location, strict, revise_keys)

    def load_or_resume(self) -> None:
        if self._has_loaded:
            return
        if self._resume:
            latest = find_latest_checkpoint(self.work_dir)
            if latest is not None:
                if self._load_from is not None:
                    self.logger.info(f"resuming from {latest}, the latest checkpoint in work_dir; "
                                     f"load_from={self._load_from} is ignored")
                else:
                    self.logger.info(f"resuming from {latest}, the latest checkpoint in work_dir")
                self.resume(latest)
                self._has_loaded = True
                return
            if self._load_from is not None and _is_run_checkpoint(self._load_from):
                self.logger.info(f"no checkpoint in work_dir; resuming from {self._load_from}")
                self.resume(self._load_from)
                self._has_loaded = True
                return
            self.logger.info("resume requested but work_dir has no checkpoint; starting fresh")
        if self._load_from is not None:
            self.load_checkpoint(self._load_from)
            self._has_loaded = True

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        partial = f"{filename}.partial"
        super().save_checkpoint(out_dir, partial, *args, **kwargs)
        os.replace(osp.join(out_dir, partial), osp.join(out_dir, filename))


def _is_run_checkpoint(filename: str) -> bool:
    """Return True when ``filename`` holds a Runner's training state (``meta`` with ``iter``)."""
    try:
        checkpoint = load_run_checkpoint(filename)
    except Exception:  # an unreadable file is reported when it is loaded as weights
        return False
    return isinstance(checkpoint, dict) and "iter" in checkpoint.get("meta", {})
