"""Batch collation that sends small batches from a loader worker by value.

A tensor that leaves a data-loader worker normally moves through shared memory: the
worker creates a segment, and the main process receives its file descriptor over a
socket, which needs the worker to be scheduled again. For a batch of a few hundred
kilobytes, such as the 16 crops of 64 x 64 pixels of the demo configs, that exchange
costs more than copying the bytes through the worker's result pipe. Larger tensors keep
the shared-memory path, which copies nothing.
"""
from __future__ import annotations

import copy

import torch
from mmengine.dataset import default_collate
from torch.utils.data import get_worker_info

from mimae.registry import FUNCTIONS

__all__ = ["inline_collate"]

INLINE_BYTES = 1 << 20


def _tensor_from_bytes(data: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not data:  # torch.frombuffer rejects an empty buffer
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)


class _ByValue:
    """Wrapper that pickles ``tensor`` as its bytes, so that unpickling returns a plain tensor."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def __reduce__(self):
        tensor = self.tensor.contiguous()
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        return _tensor_from_bytes, (data, tensor.dtype, tuple(tensor.shape))


def _plain(tensor: torch.Tensor) -> bool:
    """Tell whether ``tensor`` is a dense CPU tensor that its bytes and shape describe fully."""
    return (type(tensor) is torch.Tensor and tensor.device.type == "cpu" and tensor.layout == torch.strided
            and not tensor.is_quantized and not tensor.requires_grad and not tensor.is_conj()
            and not tensor.is_neg())


def _by_value(data, max_bytes: int):
    if isinstance(data, torch.Tensor):
        small = _plain(data) and data.untyped_storage().nbytes() <= max_bytes
        return _ByValue(data) if small else data
    if isinstance(data, dict):
        converted = {key: _by_value(value, max_bytes) for key, value in data.items()}
        try:
            clone = copy.copy(data)  # keeps a dict subclass such as OrderedDict
            clone.update(converted)
            return clone
        except TypeError:
            return converted
    if isinstance(data, (list, tuple)) and not hasattr(data, "_fields"):
        return type(data)(_by_value(value, max_bytes) for value in data)
    return data


@FUNCTIONS.register_module()
def inline_collate(data_batch: list, max_inline_bytes: int = INLINE_BYTES):
    """Collate with ``default_collate``, then mark small tensors to be sent by value.

    Inside a loader worker, every plain dense tensor of at most ``max_inline_bytes`` is
    marked and arrives as a contiguous tensor. Outside a worker the batch is unchanged."""
    batch = default_collate(data_batch)
    if get_worker_info() is None:
        return batch
    return _by_value(batch, max_inline_bytes)
