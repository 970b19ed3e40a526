"""An MMEngine ``Runner`` that reads checkpoints safely, resumes exactly, writes atomically
and checks its data before training.

* MMEngine 0.10.7 calls ``torch.load`` without ``weights_only``. Since torch 2.6 that
  defaults to True, and resuming fails on the objects a Runner stores beside the
  tensors. This runner keeps ``weights_only=True``. It saves the message hub's history
  buffers as plain arrays, because their default pickle refers to methods through
  ``getattr``, which a safe loader must reject. It allow-lists only numpy's array and
  scalar types, so no checkpoint, the run's own included, is ever fully unpickled. A
  file that needs more raises :class:`UnsafeCheckpointError`, and nothing in it runs.
* With ``resume=True`` the latest complete checkpoint in ``work_dir`` wins over
  ``load_from``; ``load_from`` then only initializes a run that has nothing to resume.
* Checkpoints are written under a temporary name (``.partial``) and renamed, then
  ``last_checkpoint`` is replaced atomically, and only then are checkpoints beyond
  ``max_keep_ckpts`` deleted (:class:`SafeCheckpointHook`). MMEngine 0.10.7's
  ``CheckpointHook`` deletes first, so a run killed while saving could lose its only
  checkpoint. A run killed at any point therefore leaves a complete latest checkpoint.
* Checkpoints carry the random state (torch, numpy, Python) of every rank. On resume
  each rank restores its own after the data loader has skipped the finished iterations
  and before the next batch is drawn, so masks and main-process augmentation continue
  as in an uninterrupted run.
* On a machine without CUDA, ``launcher='pytorch'`` starts a gloo process group and
  wraps the model in DDP without device ids; MMEngine 0.10.7 assumes a GPU for both.
* Every data loader's dataset config passes :func:`mimae.data_checks.check_dataset_config`
  before the dataset is built (``data_check=dict(verify='none'|'header'|'full')`` in
  the config; default ``'header'``).
"""
from __future__ import annotations

import atexit
import datetime
import os
import os.path as osp
import pickle
import random
import re
import zipfile
from collections import deque

import numpy as np
import torch
from mmengine.dist import all_gather_object, broadcast_object_list, is_distributed, is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import is_model_wrapper
from mmengine.registry import MODEL_WRAPPERS, RUNNERS
from mmengine.runner import Runner

from mimae.checkpoint import rejected_global
from mimae.data_checks import DataCheckError, check_dataset_config
from mimae.registry import HOOKS

# ---------------------------------------------------------------------------------------
# reading checkpoints


def _numpy_globals() -> list:
    """Return the numpy types that ``meta`` and the message hub of a Runner checkpoint contain."""
    reconstruct = getattr(np, "_core", np.core).multiarray._reconstruct
    scalar = getattr(np, "_core", np.core).multiarray.scalar
    dtypes = [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "uint32", "bool")]
    return [reconstruct, scalar, np.ndarray, np.dtype, *dtypes]


# Non-tensor types a Runner checkpoint may hold; everything else is rejected by torch.load.
RUN_CHECKPOINT_GLOBALS = _numpy_globals()
HISTORY_MARK = "__history_buffer__"
PARTIAL_SUFFIX = ".partial"
CHECKPOINT_NAME = re.compile(r"^(iter|epoch)_(\d+)\.pth$")


class UnsafeCheckpointError(pickle.UnpicklingError):
    """Error for a checkpoint that contains objects other than tensors, numpy values and plain containers."""

    def __init__(self, filename: str, error: Exception) -> None:
        detail = rejected_global(error) or repr(error)
        super().__init__(
            f"rejected checkpoint {filename!r}: it contains an object that torch.load(weights_only=True) "
            f"does not allow ({detail}). Loading it would need full unpickling, which can run code stored "
            "in the file, so it was not loaded and nothing in it ran. Use a checkpoint written by "
            "tools/train.py or a weight file exported by tools/convert_checkpoint.py; for a file you trust, "
            "save its tensors again with torch.save(state_dict)"
        )


def load_run_checkpoint(filename: str, map_location="cpu", mmap: bool = False) -> dict:
    """Read a checkpoint written by a Runner with ``weights_only=True`` and the allow-list.

    ``mmap=True`` maps the tensors instead of reading them, for a look at ``meta`` only.

    Raises:
        FileNotFoundError: when the file does not exist.
        UnsafeCheckpointError: when the file contains any other object.
    """
    if not osp.isfile(filename):
        raise FileNotFoundError(f"checkpoint not found: {filename!r}")
    with torch.serialization.safe_globals(RUN_CHECKPOINT_GLOBALS):
        try:
            # torch maps only zip-format files; a legacy-format file is read in full.
            mmap = mmap and zipfile.is_zipfile(filename)
            return torch.load(filename, map_location=map_location, weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(filename, err) from err


def has_training_state(checkpoint) -> bool:
    """Return True when a loaded checkpoint contains a Runner's training state (``meta`` with ``iter``)."""
    return isinstance(checkpoint, dict) and "iter" in checkpoint.get("meta", {})


def config_from_checkpoint(checkpoint: dict):
    """Return the run's config stored in a Runner checkpoint (``meta['cfg']``), or None."""
    from mmengine.config import Config

    text = checkpoint.get("meta", {}).get("cfg")
    return Config.fromstring(text, file_format=".py") if text else None


def _is_run_checkpoint(filename: str) -> bool:
    """Return True when ``filename`` contains a Runner's training state (``meta`` with ``iter``)."""
    try:
        checkpoint = load_run_checkpoint(filename, mmap=True)
    except Exception:  # an unreadable file is reported when it is loaded as weights
        return False
    return has_training_state(checkpoint)


# ---------------------------------------------------------------------------------------
# message hub history buffers


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


# ---------------------------------------------------------------------------------------
# random state


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


# ---------------------------------------------------------------------------------------
# checkpoint files on disk


def is_complete_checkpoint(path: str) -> bool:
    """Return whether ``path`` is a non-empty checkpoint file whose zip directory is intact.

    torch.save writes a zip archive whose central directory comes last, so a file cut
    off while being written fails the check. A file in torch's legacy (non-zip) format
    is accepted unchecked.
    """
    if not osp.isfile(path) or osp.getsize(path) == 0:
        return False
    with open(path, "rb") as f:
        is_zip_start = f.read(4) == b"PK\x03\x04"
    return zipfile.is_zipfile(path) if is_zip_start else True


def _check_requested_checkpoint(filename: str) -> None:
    """Raise for a ``--resume`` path that is missing, a folder, a pointer file or incomplete."""
    hint = "Pass a checkpoint of a training run, or --resume without a path for the work dir's latest"
    if osp.isdir(filename):
        raise IsADirectoryError(f"--resume {filename}: this is a folder, not a checkpoint file. {hint}")
    if not osp.isfile(filename):
        raise FileNotFoundError(f"--resume {filename}: file not found. {hint}")
    if osp.basename(filename) == "last_checkpoint":
        with open(filename) as f:
            target = f.read().strip()
        raise ValueError(f"--resume {filename}: this text file names the latest checkpoint, {target!r}. "
                         "Pass that path, or --resume without a path")
    if filename.endswith(PARTIAL_SUFFIX) or not is_complete_checkpoint(filename):
        raise ValueError(f"--resume {filename}: an incomplete checkpoint (an interrupted save or a cut copy). "
                         f"{hint}")


def latest_complete_checkpoint(work_dir: str) -> str | None:
    """Return the checkpoint to resume from: ``last_checkpoint`` when it names a complete file,
    else the complete ``iter_N.pth``/``epoch_N.pth`` with the highest N, else None.

    ``*.partial`` files are never returned.
    """
    pointer = osp.join(work_dir, "last_checkpoint")
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip()
        if named and not named.endswith(PARTIAL_SUFFIX) and is_complete_checkpoint(named):
            return named
        print_log(f"{pointer} names {named!r}, which is missing or incomplete; looking for the newest "
                  "complete checkpoint in the work dir", logger="current", level=30)
    if not osp.isdir(work_dir):
        return None
    candidates = []
    for name in os.listdir(work_dir):
        match = CHECKPOINT_NAME.match(name)
        path = osp.join(work_dir, name)
        if match and is_complete_checkpoint(path):
            candidates.append((int(match.group(2)), name, path))
    return max(candidates)[2] if candidates else None


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees either the old or the new content."""
    partial = path + PARTIAL_SUFFIX
    with open(partial, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def remove_partial_files(folder: str) -> list[str]:
    """Delete ``*.partial`` files left in ``folder`` by an interrupted write; return their names."""
    if not osp.isdir(folder):
        return []
    removed = sorted(name for name in os.listdir(folder) if name.endswith(PARTIAL_SUFFIX))
    for name in removed:
        os.remove(osp.join(folder, name))
    return removed


def _is_local(path: str) -> bool:
    return "://" not in str(path)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """``CheckpointHook`` that deletes old checkpoints only after the new one is complete.

    The order per save is: write the new checkpoint (atomically, by :class:`SafeRunner`),
    replace ``last_checkpoint`` atomically, then delete checkpoints beyond
    ``max_keep_ckpts``. SafeRunner uses it in place of a configured ``CheckpointHook``.
    """

    def _save_checkpoint_with_step(self, runner, step, meta):
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)

        expired = []
        # A best-checkpoint save in the same step reuses the step already recorded.
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            kept = [*self.keep_ckpt_ids, step]
            expired, kept = kept[:-self.max_keep_ckpts], kept[-self.max_keep_ckpts:]
            self.keep_ckpt_ids = deque(kept, self.max_keep_ckpts)
            runner.message_hub.update_info("keep_ckpt_ids", kept)

        runner.save_checkpoint(
            self.out_dir, filename, self.file_client_args, save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
            backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return

        write_text_atomic(osp.join(runner.work_dir, "last_checkpoint"), self.last_ckpt)
        for old_step in expired:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):
                self.file_backend.rmtree(path)


def _is_plain_checkpoint_hook(hook_type) -> bool:
    if isinstance(hook_type, str):
        return hook_type.split(".")[-1] == "CheckpointHook"
    return hook_type is CheckpointHook


# ---------------------------------------------------------------------------------------
# the runner


@RUNNERS.register_module()
class SafeRunner(Runner):
    """Runner with safe checkpoint reading, latest-first exact resume, atomic checkpoint
    writes, CPU distributed training and data checks before training."""

    _loaded_random_state: dict | None = None
    _pending_random_state: dict | None = None
    _rank_random_states: list | None = None

    # -- environment and model ---------------------------------------------------------

    def setup_env(self, env_cfg: dict) -> None:
        if self.distributed and not is_distributed() and self.launcher == "pytorch" \
                and not torch.cuda.is_available():
            _init_cpu_process_group(env_cfg.get("dist_cfg", {}))
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg, model):
        if self.distributed and not is_model_wrapper(model) and not torch.cuda.is_available():
            # DDP rejects device_ids for a CPU module, and MMEngine 0.10.7 always passes them.
            cfg = dict(model_wrapper_cfg) if model_wrapper_cfg else dict(
                type="MMDistributedDataParallel", broadcast_buffers=False,
                find_unused_parameters=self.cfg.get("find_unused_parameters", False))
            cfg.setdefault("type", "MMDistributedDataParallel")
            wrapper = MODEL_WRAPPERS.get(cfg["type"]) if isinstance(cfg["type"], str) else cfg["type"]
            if isinstance(wrapper, type) and issubclass(wrapper, torch.nn.parallel.DistributedDataParallel):
                cfg.setdefault("device_ids", None)
            model_wrapper_cfg = cfg
        return super().wrap_model(model_wrapper_cfg, model)

    def register_default_hooks(self, hooks=None) -> None:
        hooks = dict(hooks) if hooks is not None else {}
        checkpoint = hooks.get("checkpoint", dict(type="CheckpointHook", interval=1))
        if isinstance(checkpoint, dict) and _is_plain_checkpoint_hook(checkpoint.get("type")):
            hooks["checkpoint"] = {**checkpoint, "type": SafeCheckpointHook}
        super().register_default_hooks(hooks)

    # -- data --------------------------------------------------------------------------

    def build_dataloader(self, dataloader, seed=None, diff_rank_seed=False):
        """Check the data of ``dataloader`` (a config) with :mod:`mimae.data_checks`, then build it."""
        if isinstance(dataloader, dict):
            self._check_data(dataloader.get("dataset"))
            if "generator" not in dataloader:
                # A new iterator draws its workers' base seed from this generator instead of the
                # global state that draws the masks, so a resumed epoch-based run masks as before.
                dataloader = {**dataloader, "generator": torch.Generator().manual_seed(seed or 0)}
        return Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)

    def _check_data(self, dataset_cfg) -> None:
        verify = (self.cfg.get("data_check") or {}).get("verify", "header")
        message, failure = None, None
        if is_main_process():
            try:
                check_dataset_config(dataset_cfg, verify)
            except Exception as err:  # any failure, so that the other ranks learn of it below
                failure = err
                message = str(err) if isinstance(err, DataCheckError) else f"{type(err).__name__}: {err}"
        if self.world_size > 1:
            # Rank 0 reads the files. It shares its verdict, so every rank stops on a failure
            # instead of waiting in the next collective for rank 0.
            shared = [message]
            broadcast_object_list(shared)
            message = shared[0]
        if failure is not None:
            raise failure
        if message is not None:
            raise DataCheckError(f"the data check failed on rank 0: {message}")

    # -- hooks -------------------------------------------------------------------------

    def call_hook(self, fn_name: str, **kwargs) -> None:
        # The packing runs first, so hooks and the file always see the same layout.
        if fn_name == "before_save_checkpoint":
            meta = kwargs["checkpoint"]["meta"]
            pack_history_buffers(kwargs["checkpoint"])
            states = self._rank_random_states or [capture_random_state()]
            meta["random_state"] = states[0]
            meta["rank_random_states"] = states
        elif fn_name == "after_load_checkpoint":
            unpack_history_buffers(kwargs["checkpoint"])
            self._loaded_random_state = self._random_state_of_rank(kwargs["checkpoint"].get("meta", {}))
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

    def _random_state_of_rank(self, meta: dict) -> dict | None:
        states = meta.get("rank_random_states")
        if states is None:  # written before per-rank states were stored
            states = [meta["random_state"]] if "random_state" in meta else None
        if states is None:
            return None
        if len(states) != self.world_size:
            self.logger.warning(
                f"the checkpoint contains the random state of {len(states)} process(es) but this run has "
                f"{self.world_size}; random state not restored, so masks and augmentation will differ "
                "from an uninterrupted run")
            return None
        return states[self.rank]

    # -- loading -----------------------------------------------------------------------

    def resume(self, filename: str, *args, **kwargs) -> None:
        self._loaded_random_state = None
        super().resume(filename, *args, **kwargs)
        self._pending_random_state = self._loaded_random_state

    def load_checkpoint(self, filename: str, map_location="cpu", strict: bool = False,
                        revise_keys=((r"^module\.", ""),)):
        if not osp.isfile(filename):
            return super().load_checkpoint(filename, map_location, strict, revise_keys)
        with torch.serialization.safe_globals(RUN_CHECKPOINT_GLOBALS):
            try:
                return super().load_checkpoint(filename, map_location, strict, revise_keys)
            except pickle.UnpicklingError as err:
                raise UnsafeCheckpointError(filename, err) from err

    def load_or_resume(self) -> None:
        if self._has_loaded:
            return
        if self._resume:
            requested = self.cfg.get("resume_from")
            if requested is not None:
                # Checked before the partial files are removed, so a named .partial file is
                # reported as incomplete instead of being deleted and then not found.
                _check_requested_checkpoint(requested)
            if is_main_process():
                for name in remove_partial_files(self.work_dir):
                    self.logger.info(f"removed {name}, an incomplete checkpoint left by an interrupted save")
            latest = latest_complete_checkpoint(self.work_dir)
            if requested is not None:
                self._resume_from_requested(requested, latest)
                return
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

    def _resume_from_requested(self, filename: str, latest: str | None) -> None:
        """Resume from ``filename``, a path given to ``tools/train.py --resume``.

        An explicit path wins over the work dir's latest checkpoint, as in MMEngine, so
        that a run can go back to an earlier checkpoint. A requeued job that passes the
        same path again would repeat the iterations after it, so the log warns when the
        work dir contains another checkpoint.
        """
        # Mapped, not read: the resume below reads the tensors. A pickled object raises UnsafeCheckpointError.
        if not has_training_state(load_run_checkpoint(filename, mmap=True)):
            raise ValueError(
                f"--resume {filename}: not a checkpoint of a training run (it has no meta.iter, so no "
                "optimizer or iteration to continue from). To start from these weights, pass "
                f"--cfg-options load_from={filename} without --resume")
        if latest is not None and osp.realpath(latest) != osp.realpath(filename):
            self.logger.warning(
                f"resuming from {filename} as --resume requests, although work_dir contains {latest}. "
                "Checkpoints written from now on replace those of the same name. A requeued job "
                "should pass --resume without a path to continue from the latest checkpoint")
        else:
            self.logger.info(f"resuming from {filename}, as --resume requests")
        self.resume(filename)
        self._has_loaded = True

    # -- saving ------------------------------------------------------------------------

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        """Write the checkpoint as ``filename.partial`` and rename it when complete.

        Every rank must call this, as ``CheckpointHook`` does, because the random
        states of all ranks are gathered into the checkpoint; only rank 0 writes.
        """
        self._check_finite_parameters(filename)
        state = capture_random_state()
        self._rank_random_states = all_gather_object(state) if self.world_size > 1 else [state]
        try:
            if not _is_local(out_dir):
                super().save_checkpoint(out_dir, filename, *args, **kwargs)
                return
            partial = filename + PARTIAL_SUFFIX
            super().save_checkpoint(out_dir, partial, *args, **kwargs)
            if is_main_process():
                os.replace(osp.join(out_dir, partial), osp.join(out_dir, filename))
        finally:
            self._rank_random_states = None

    def _check_finite_parameters(self, filename: str) -> None:
        """Raise instead of saving weights that hold NaN or infinity.

        Such a checkpoint would replace the last good one as the latest. Buffers are not
        checked, because a model may keep infinite values there on purpose. DDP keeps the
        parameters equal on every rank, so all ranks raise together.
        """
        model = self.model.module if is_model_wrapper(self.model) else self.model
        bad = [name for name, param in model.named_parameters() if not torch.isfinite(param.detach()).all()]
        if bad:
            latest = latest_complete_checkpoint(self.work_dir) or "none"
            raise FloatingPointError(
                f"{len(bad)} parameter(s) hold NaN or infinity at iteration {self.iter + 1} (first: "
                f"{', '.join(bad[:5])}); {filename} was not written and the latest checkpoint is still "
                f"{latest}. Lower the learning rate or check the input data, then resume with --resume")


def _init_cpu_process_group(dist_cfg: dict) -> None:
    """Start the process group of a torchrun launch on a machine without CUDA (gloo only)."""
    settings = dict(dist_cfg)
    backend = settings.pop("backend", "gloo")
    if backend != "gloo":
        print_log(f"dist_cfg.backend={backend!r} needs GPUs; using 'gloo' on this machine without CUDA",
                  logger="current", level=30)
    if settings.get("timeout") is not None:
        settings["timeout"] = datetime.timedelta(seconds=settings["timeout"])
    torch.distributed.init_process_group(backend="gloo", **settings)
    # Tear the group down at a normal exit instead of leaving gloo's threads to the C++
    # static destructors; tools/train.py and tools/test.py close it earlier, after a barrier.
    # NOTE: 2-process CPU launches have rarely aborted at exit with "terminate called without
    # an active exception", after the run had finished and saved its checkpoint. Whether the
    # barrier cures it is unconfirmed.
    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

