"""Training hooks for pretraining runs; downstream configs use them as ``mimae.<name>``."""
from __future__ import annotations

import json
import math
import os

import torch
from mmengine.dist import all_reduce
from mmengine.hooks import Hook

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
