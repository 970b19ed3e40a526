"""Training hooks for pretraining runs; downstream configs use them as ``mimae.<name>``."""
from __future__ import annotations

import errno
import json
import logging
import math
import operator
import os

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import torch
from mmengine.dist import all_reduce
from mmengine.hooks import Hook
from mmengine.logging import print_log

from mimae.registry import HOOKS


def _to_float(value) -> float:
    """Return a logged value as a float without keeping its autograd graph."""
    return float(value.detach()) if hasattr(value, "detach") else float(value)


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop the run when a logged loss term is NaN or infinite.

    It runs before the checkpoint hook (higher priority), so the iteration that produced
    the value never reaches a checkpoint and the last good one stays the latest. In
    distributed training the ranks share one verdict per iteration (an all-reduce of a
    flag), so every rank stops at the same iteration instead of waiting in a collective
    for the rank that stopped.
    """

    priority = "ABOVE_NORMAL"

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        values = {name: _to_float(value) for name, value in (outputs or {}).items()}
        bad = {name: value for name, value in values.items() if not math.isfinite(value)}
        stop = bad
        if runner.world_size > 1:
            flag = torch.tensor(1.0 if bad else 0.0)
            all_reduce(flag, op="max")
            stop = bool(flag.item())
        if not stop:
            return
        iteration = runner.iter + 1
        last = runner.message_hub.get_info("last_ckpt") or "no checkpoint yet"
        advice = (f"Training stopped before any checkpoint of this iteration was written; the latest "
                  f"checkpoint is {last}. Lower the learning rate, check the input data, or resume from the "
                  "last checkpoint with --resume")
        if not bad:
            raise FloatingPointError(f"another rank reported a non-finite loss at iteration {iteration} "
                                     f"(this is rank {runner.rank}; see the other ranks' logs). {advice}")
        # The weighted terms name the cause; the total 'loss' only repeats it.
        names = sorted(bad, key=lambda name: (name == "loss", name))
        terms = ", ".join(f"{name}={bad[name]}" for name in names)
        raise FloatingPointError(f"non-finite loss at iteration {iteration}: {terms}. {advice}")


@HOOKS.register_module()
class LossTraceHook(Hook):
    """Record every logged term (losses and diagnostics) at every iteration.

    Writes ``loss_trace.json`` (a list of ``{"iter": i, term: value, ...}``) into the work
    dir every ``flush_interval`` iterations, before every checkpoint and at the end of
    training. The start and end of each term can then be read without the log window's
    averaging, and a resumed run finds the records of every iteration its checkpoint
    covers. Only rank 0 records, and its values are those of its own batch.
    """

    priority = "LOW"

    def __init__(self, flush_interval: int = 100) -> None:
        self.flush_interval = flush_interval
        self.records: list[dict] = []

    def before_train(self, runner) -> None:
        path = os.path.join(runner.work_dir, "loss_trace.json")
        if runner.rank == 0 and runner.iter > 0 and os.path.isfile(path):
            # A resumed run keeps the records of the iterations it already completed.
            with open(path) as f:
                self.records = [r for r in json.load(f) if r["iter"] <= runner.iter]

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if runner.rank != 0:
            return
        record = {"iter": runner.iter + 1}
        record.update({name: _to_float(value) for name, value in (outputs or {}).items()})
        self.records.append(record)
        if (runner.iter + 1) % self.flush_interval == 0:
            self._flush(runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if runner.rank == 0:
            self._flush(runner)

    def after_train(self, runner) -> None:
        if runner.rank == 0:
            self._flush(runner)

    def _flush(self, runner) -> None:
        path = os.path.join(runner.work_dir, "loss_trace.json")
        with open(f"{path}.partial", "w") as f:
            json.dump(self.records, f)
        os.replace(f"{path}.partial", path)


@HOOKS.register_module()
class LoaderPipeHook(Hook):
    """Let the pipe that carries batches from the training loader's workers hold ``size`` bytes.

    With ``mimae.inline_collate`` a small batch travels through that pipe by value. A Linux
    pipe has a capacity of 64 KiB by default, so the main process reads a batch of a few
    hundred kilobytes in several parts, and before each part the worker has to be
    scheduled again to write it. In 300-iteration MAE demo runs on 2 CPUs busy training,
    the median fetch of a ready 200 KB batch took 0.79 to 0.95 ms with the default pipe
    and 0.40 to 0.57 ms with a 1 MiB one.

    Before each training iteration the hook reads the pipe's capacity and raises it to
    ``size`` with ``fcntl`` (``F_SETPIPE_SZ``) where it is smaller. Batches fetched before
    the first iteration's hooks run (the first batch, and on resume the batches the loop
    skips) still pass through the default pipe. An unprivileged process may set at most
    ``/proc/sys/fs/pipe-max-size`` bytes (1 MiB by default), within per-user limits.

    It reaches the pipe through attributes private to PyTorch's multi-process loader
    iterator: the loader's own iterator (persistent workers) or that of an
    ``IterBasedTrainLoop``. An epoch-based loop without persistent workers keeps its
    iterator to itself. The hook does nothing without workers or on systems other than
    Linux, and logs one warning when it cannot reach or resize the pipe.
    """

    priority = "LOW"
    DEFAULT_PIPE_BYTES = 1 << 16  # a Linux pipe's capacity unless set otherwise

    def __init__(self, size: int = 1 << 20) -> None:
        size = operator.index(size)  # fcntl takes an integer only
        if size < self.DEFAULT_PIPE_BYTES:
            raise ValueError(f"LoaderPipeHook size must be at least {self.DEFAULT_PIPE_BYTES} bytes, a pipe's "
                             f"default capacity, got {size}")
        self.size = size
        self._gave_up = False  # set after a warning: the hook then stops trying

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        loader = runner.train_dataloader
        if self._gave_up or getattr(loader, "num_workers", 0) == 0:
            return
        if not hasattr(fcntl, "F_SETPIPE_SZ"):
            return  # Only Linux lets a process set a pipe's capacity.
        iterator = getattr(loader, "_iterator", None)
        if iterator is None:
            iterator = getattr(getattr(runner.train_loop, "dataloader_iterator", None), "_iterator", None)
        if iterator is None:
            self._give_up("the training loop keeps the loader's iterator to itself (an epoch-based loop without "
                          "persistent workers). Set train_dataloader.persistent_workers=True to let the hook "
                          "reach the pipe")
            return
        reader = getattr(getattr(iterator, "_worker_result_queue", None), "_reader", None)
        if reader is None:
            self._give_up(f"{type(iterator).__name__} has no result pipe where this PyTorch version kept it "
                          "(_worker_result_queue._reader)")
            return
        try:
            if fcntl.fcntl(reader.fileno(), fcntl.F_GETPIPE_SZ) < self.size:
                fcntl.fcntl(reader.fileno(), fcntl.F_SETPIPE_SZ, self.size)
        except OSError as error:
            if error.errno == errno.EPERM:
                advice = ("Use LoaderPipeHook(size=...) of at most /proc/sys/fs/pipe-max-size, or raise that "
                          "limit (or the per-user limits pipe-user-pages-soft and pipe-user-pages-hard)")
            else:
                advice = "Check the size"
            self._give_up(f"failed to set the loader's result pipe to {self.size} bytes: {error}. {advice}")

    def _give_up(self, reason: str) -> None:
        self._gave_up = True
        print_log(f"LoaderPipeHook: {reason}. The pipe keeps its capacity.", logger="current", level=logging.WARNING)
