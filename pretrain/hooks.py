"""Training hooks for pretraining runs."""
from __future__ import annotations

import json
import math
import os

from mmengine.hooks import Hook

from mimae.registry import HOOKS


def _to_float(value) -> float:
    """Return a logged value as a float without keeping its autograd graph."""
    return float(value.detach()) if hasattr(value, "detach") else float(value)


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop the run when a logged loss term is NaN or infinite.

    It runs before the checkpoint hook (higher priority), so the iteration that produced
    the value never reaches a checkpoint and the last good one stays the latest.
    """

    priority = "ABOVE_NORMAL"

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not outputs:
            return
        for name, value in outputs.items():
            number = _to_float(value)
            if not math.isfinite(number):
                raise FloatingPointError(
                    f"{name} is {number} at iteration {runner.iter + 1}; stopping before any checkpoint "
                    "of this iteration is written. Lower the learning rate, check the input data, or "
                    "resume from the last checkpoint with --resume"
                )


@HOOKS.register_module()
class LossTraceHook(Hook):
    """Record every logged term (losses and diagnostics) at every iteration.

    Writes ``loss_trace.json`` (a list of ``{"iter": i, term: value, ...}``) into the work
    dir every ``flush_interval`` iterations and at the end of training, so the start
    and end of each term can be read without the log window's averaging.
    """

    priority = "LOW"

    def __init__(self, flush_interval: int = 100) -> None:
        self.flush_interval = flush_interval
        self.records: list[dict] = []

    def before_train(self, runner) -> None:
        path = os.path.join(runner.work_dir, "loss_trace.json")
        if runner.iter > 0 and os.path.isfile(path):
            # A resumed run keeps the records of the iterations it already completed.
            with open(path) as f:
                self.records = [r for r in json.load(f) if r["iter"] <= runner.iter]

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        record = {"iter": runner.iter + 1}
        record.update({name: _to_float(value) for name, value in (outputs or {}).items()})
        self.records.append(record)
        if (runner.iter + 1) % self.flush_interval == 0:
            self._flush(runner)

    def after_train(self, runner) -> None:
        self._flush(runner)

    def _flush(self, runner) -> None:
        path = os.path.join(runner.work_dir, "loss_trace.json")
        with open(f"{path}.partial", "w") as f:
            json.dump(self.records, f)
        os.replace(f"{path}.partial", path)
