"""``inline_collate`` sends small batches from loader workers by value and changes nothing else."""
from __future__ import annotations

import collections
import io
import pickle
from multiprocessing.reduction import ForkingPickler

import torch
from mmengine.dataset import default_collate
from mmengine.registry import FUNCTIONS, init_default_scope
import torch.multiprocessing  # noqa: F401  (registers the shared-memory reductions of tensors)

from pretrain.collate import _by_value, _ByValue, inline_collate


class Samples(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(index)
        return dict(inputs=torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=generator),
                    extra=collections.OrderedDict(weight=torch.randn(5, generator=generator).to(torch.bfloat16),
                                                  big=torch.zeros(300, 300), empty=torch.zeros(0, 4)),
                    data_samples=dict(img_path=f"image_{index}.jpg"))


def _batches(num_workers: int, collate) -> list[dict]:
    loader = torch.utils.data.DataLoader(Samples(), batch_size=4, num_workers=num_workers, collate_fn=collate)
    return list(loader)


def _assert_same(batch: dict, expected: dict) -> None:
    assert type(batch["inputs"]) is torch.Tensor
    assert torch.equal(batch["inputs"], expected["inputs"])
    assert batch["inputs"].dtype == torch.uint8
    assert batch["extra"]["weight"].dtype == torch.bfloat16
    assert torch.equal(batch["extra"]["weight"], expected["extra"]["weight"])
    assert torch.equal(batch["extra"]["big"], expected["extra"]["big"])
    assert type(batch["extra"]) is collections.OrderedDict
    assert batch["extra"]["empty"].shape[1:] == (0, 4)
    assert batch["data_samples"] == expected["data_samples"]


def test_worker_batches_plain_tensors():
    expected = _batches(0, default_collate)
    for got, want in zip(_batches(1, inline_collate), expected, strict=True):
        _assert_same(got, want)
        got["inputs"][0, 0, 0, 0] = 7  # writable, like a tensor from shared memory


def test_outside_worker_unchanged():
    batch = inline_collate([Samples()[0], Samples()[1]])
    assert type(batch["inputs"]) is torch.Tensor
    _assert_same(batch, default_collate([Samples()[0], Samples()[1]]))


def test_only_small_tensors_by_value():
    batch = dict(small=torch.ones(4), large=torch.ones(1024), items=[torch.ones(2)], name="x",
                 sparse=torch.ones(2).to_sparse(), grad=torch.ones(2, requires_grad=True),
                 conj=torch.ones(2, dtype=torch.complex64).conj(),
                 quantized=torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8))
    marked = _by_value(batch, max_bytes=1024)
    for key in ("sparse", "grad", "conj", "quantized"):
        assert marked[key] is batch[key], key
    assert isinstance(marked["small"], _ByValue)
    assert isinstance(marked["items"][0], _ByValue)
    assert type(marked["large"]) is torch.Tensor
    assert marked["name"] == "x"


def _forking_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def test_by_value_pickles_bytes():
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)[:, 1:]  # not contiguous
    data = _forking_pickle(_ByValue(tensor))
    assert b"rebuild_storage" not in data
    assert b"rebuild_storage" in _forking_pickle(tensor.clone())  # what a plain tensor sends
    restored = pickle.loads(data)
    assert type(restored) is torch.Tensor
    assert torch.equal(restored, tensor)


def test_registered_in_mimae_scope():
    init_default_scope("mimae")
    assert FUNCTIONS.get("mimae.inline_collate") is inline_collate
