"""``mimae.models.layers.Linear`` computes what ``nn.Linear`` computes, on either kernel."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mimae.models.layers import Linear


class OpNames(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def run(layer: Linear, x: torch.Tensor):
    x = x.detach().requires_grad_()
    out = layer(x)
    grad = torch.randn_like(out, generator=torch.Generator().manual_seed(1))
    out.backward(grad)
    grads = (x.grad, layer.weight.grad, layer.bias.grad)
    layer.zero_grad(set_to_none=True)
    return out.detach(), grads


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")
@pytest.mark.parametrize("shape", [(4, 100, 256), (400, 256)])
def test_onednn_path_matches_f_linear(shape):
    torch.manual_seed(0)
    layer = Linear(256, 768)
    x = torch.randn(*shape)
    with OpNames() as ops:
        out, grads = run(layer, x)
    assert any("convolution" in name for name in ops.names), "the oneDNN path was not taken"
    Linear.use_onednn = False
    try:
        with OpNames() as ops:
            ref_out, ref_grads = run(layer, x)
    finally:
        Linear.use_onednn = True
    assert not any("convolution" in name for name in ops.names)
    assert out.shape == ref_out.shape == (*shape[:-1], 768)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-4)
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)


def test_non_contiguous_input():
    torch.manual_seed(0)
    layer = Linear(256, 768)
    x = torch.randn(256, 4, 100).permute(1, 2, 0)  # (4, 100, 256), not contiguous
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-4)


def test_small_products_autocast_and_state_dict_take_plain_linear():
    torch.manual_seed(0)
    layer = Linear(8, 4)
    x = torch.randn(3, 8)
    with OpNames() as ops:
        out = layer(x)
    assert not any("convolution" in name for name in ops.names)
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
    big = Linear(256, 768)
    with torch.autocast("cpu", dtype=torch.bfloat16), OpNames() as ops:
        assert big(torch.randn(400, 256)).dtype == torch.bfloat16
    assert not any("convolution" in name for name in ops.names)
    assert list(big.state_dict()) == ["weight", "bias"]
    assert isinstance(big, torch.nn.Linear)
