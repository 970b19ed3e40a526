"""Training hooks for pretraining runs; downstream configs use them as ``mimae.<name>``."""
from __future__ import annotations

import json
import math
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
    scheduled again to write it. In the demo runs, with every CPU busy training, that
    took about half of the median time to fetch a ready batch (0.8 to 0.95 ms against
    0.40 to 0.55 ms with a 1 MiB pipe). The hook raises the pipe's capacity
    with ``fcntl`` (``F_SETPIPE_SZ``) once for each loader iterator, at the first
    iteration that iterator serves. An unprivileged process may set at most
    ``/proc/sys/fs/pipe-max-size`` bytes, 1 MiB by default.

    It reaches the pipe through attributes private to PyTorch's multi-process loader
    iterator: the loader's own iterator (persistent workers) or that of an
    ``IterBasedTrainLoop``. Without workers, on systems other than Linux, or when those
    attributes are missing, it does nothing; in the last case it says so once.
    """

    priority = "LOW"

    def __init__(self, size: int = 1 << 20) -> None:
        if size <= 0:
            raise ValueError(f"LoaderPipeHook size must be a positive number of bytes, got {size}")
        self.size = size
        self._seen: set[int] = set()  # ids of the result queues already handled
        self._warned = False

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        iterator = getattr(runner.train_dataloader, "_iterator", None)
        if iterator is None:
            iterator = getattr(getattr(runner.train_loop, "dataloader_iterator", None), "_iterator", None)
        if iterator is None or type(iterator).__name__ == "_SingleProcessDataLoaderIter":
            return
        queue = getattr(iterator, "_worker_result_queue", None)
        reader = getattr(queue, "_reader", None)
        if reader is None:
            self._warn_once(f"{type(iterator).__name__} has no result pipe where this PyTorch version "
                            "kept it (_worker_result_queue._reader); the pipe keeps its default size")
            return
        if id(queue) in self._seen:
            return
        self._seen.add(id(queue))
        set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
        if set_size is None:
            return  # Only Linux lets a process set a pipe's capacity.
        try:
            fcntl.fcntl(reader.fileno(), set_size, self.size)
        except OSError as error:
            self._warn_once(f"could not set the loader's result pipe to {self.size} bytes ({error}). Use "
                            "LoaderPipeHook(size=...) of at most /proc/sys/fs/pipe-max-size, or raise that limit")

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            print_log(f"LoaderPipeHook: {message}", logger="current", level=30)
