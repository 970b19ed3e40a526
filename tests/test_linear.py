"""``Linear`` and ``PatchEmbed`` compute what the torch layers compute, FX traces ``Mlp`` and ``Block``, and TorchScript scripts ``Mlp``."""
from __future__ import annotations

import contextlib
import os
import re
import warnings

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from mimae.models import layers
from mimae.models.layers import Block, Linear, Mlp, PatchEmbed

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


@contextlib.contextmanager
def threads(count: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def run(layer: Linear, x: torch.Tensor):
    """Forward and backward of ``layer``; return the output, the gradients and the profiled op names."""
    x = x.detach().requires_grad_()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = layer(x)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    grads = (x.grad, layer.weight.grad, layer.bias.grad)
    layer.zero_grad(set_to_none=True)
    return out.detach(), grads, {event.key for event in prof.key_averages()}


@needs_onednn
@pytest.mark.parametrize("shape", [(4, 100, 256), (400, 256)])
def test_onednn_path_matches_f_linear(shape):
    torch.manual_seed(0)
    layer = Linear(256, 768)
    x = torch.randn(*shape)
    with threads(2):
        try:
            Linear.use_onednn = True
            out, grads, ops = run(layer, x)
            assert "aten::mkldnn_convolution" in ops, "the oneDNN path was not taken"
            Linear.use_onednn = False
            ref_out, ref_grads, ref_ops = run(layer, x)
        finally:
            Linear.use_onednn = None
    assert not any("convolution" in name for name in ref_ops)
    assert out.shape == ref_out.shape == (*shape[:-1], 768)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-4)
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)


@needs_onednn
@pytest.mark.parametrize("vendor, onednn", [("AuthenticAMD", True), ("GenuineIntel", False), ("", False)])
def test_default_kernel_follows_cpu_vendor(monkeypatch, vendor, onednn):
    monkeypatch.setattr(layers, "cpu_vendor", lambda: vendor)
    layer = Linear(256, 768)
    with threads(2):
        _, _, ops = run(layer, torch.randn(400, 256))
        assert ("aten::mkldnn_convolution" in ops) == onednn
        layer.use_onednn = not onednn  # an explicit setting wins over the vendor rule
        _, _, ops = run(layer, torch.randn(400, 256))
        assert ("aten::mkldnn_convolution" in ops) == (not onednn)


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="no /proc/cpuinfo")
def test_cpu_vendor_reads_proc_cpuinfo():
    with open("/proc/cpuinfo") as f:
        found = re.search(r"^vendor_id\s*:\s*(\S+)", f.read(), re.MULTILINE)
    assert layers.cpu_vendor() == (found.group(1) if found else "")
    assert layers.onednn_preferred() == (layers.cpu_vendor() == "AuthenticAMD")


@needs_onednn
def test_non_contiguous_input():
    torch.manual_seed(0)
    layer = Linear(256, 768)
    layer.use_onednn = True
    x = torch.randn(256, 4, 100).permute(1, 2, 0)  # (4, 100, 256), not contiguous
    with threads(2):
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-4)


def test_plain_linear_fallback_cases():
    torch.manual_seed(0)
    small, big = Linear(8, 4), Linear(256, 768)
    x = torch.randn(400, 256)
    cases = {
        "small product": lambda: small(torch.randn(3, 8)),
        "one thread": lambda: big(x),
        "autocast": lambda: big(x),
        "float64": lambda: big.double()(x.double()),
    }
    for name, call in cases.items():
        count = 1 if name == "one thread" else 2
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "autocast")
        with threads(count), autocast, profile(activities=[ProfilerActivity.CPU]) as prof:
            call()
        ops = {event.key for event in prof.key_averages()}
        assert not any("convolution" in op for op in ops), name
    assert list(big.state_dict()) == ["weight", "bias"]
    assert isinstance(big, torch.nn.Linear)


def test_empty_input_and_wrong_width():
    layer = Linear(256, 768)
    with threads(2):
        assert layer(torch.randn(0, 256)).shape == (0, 768)
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            layer(torch.randn(70000, 255))


def test_fx_tracing_of_block():
    torch.manual_seed(0)
    block = Block(32, 4)
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(torch.fx.symbolic_trace(block)(x), block(x))


def test_scripting_and_fx_tracing():
    torch.manual_seed(0)
    mlp = Mlp(16, 32)
    x = torch.randn(2, 16)
    torch.testing.assert_close(torch.fx.symbolic_trace(mlp)(x), mlp(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript
        scripted = torch.jit.script(mlp)
    torch.testing.assert_close(scripted(x), mlp(x))


@pytest.mark.parametrize("autocast", [False, True])
def test_patch_embed_matches_its_convolution(autocast):
    torch.manual_seed(0)
    embed = PatchEmbed(patch_size=8, in_chans=3, embed_dim=32)
    x = torch.randn(2, 3, 24, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        tokens, grid = embed(x)
        expected = embed.proj(x).flatten(2).transpose(1, 2)
    assert grid == (3, 5)
    assert tokens.shape == (2, 15, 32)
    tolerance = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens, expected, **tolerance)
    upstream = torch.randn(tokens.shape)
    grads = torch.autograd.grad(tokens.float(), [embed.proj.weight, embed.proj.bias], upstream)
    expected_grads = torch.autograd.grad(expected.float(), [embed.proj.weight, embed.proj.bias], upstream)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, **tolerance)
