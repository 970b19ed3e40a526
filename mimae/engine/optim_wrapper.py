"""An optimizer wrapper that trains under bf16 autocast on any device, the CPU included."""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class BF16OptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward pass runs under ``torch.autocast(dtype=torch.bfloat16)``.

    MMEngine's ``AmpOptimWrapper`` refuses devices other than CUDA, NPU, MLU and MUSA, so
    it cannot train on a CPU. bf16 keeps float32's exponent range, so no loss scaling is
    needed: parameters, gradients and optimizer state stay float32, and only the
    operators that autocast lists run in bf16 (mimae keeps softmax and losses float32).

    Args:
        device_type: autocast device type; by default that of the model's first parameter.
    """

    def __init__(self, *args, device_type: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.device_type = device_type

    @contextmanager
    def optim_context(self, model: nn.Module):
        device_type = self.device_type or next(model.parameters()).device.type
        with super().optim_context(model), torch.autocast(device_type, dtype=torch.bfloat16):
            yield
