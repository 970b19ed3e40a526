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
    return out.detach(), grads, op_counts(prof)


def op_counts(prof) -> dict[str, int]:
    return {event.key: event.count for event in prof.key_averages()}


def kernel_ran(counts: dict[str, int], input_grad: bool = True, narrowing: bool = False) -> str:
    """Name the kernel whose operators ran forward and backward of one layer.

    ``narrowing``: the layer has more inputs than outputs, so oneDNN's linear operator
    also computes its weight gradient.
    """
    conv = counts.get("aten::mkldnn_convolution", 0), counts.get("aten::convolution_backward", 0)
    linear_op = counts.get("mkldnn::_linear_pointwise", 0)
    if conv == (1, 1) and linear_op == 0:
        return "onednn"
    # the forward pass, the input gradient, and the weight gradient of a narrowing layer
    if conv == (0, 0) and linear_op == 1 + input_grad + narrowing:
        return "onednn_linear"
    if conv == (0, 0) and linear_op == 0:
        return "linear"
    return f"unexpected operator counts {counts}"


@needs_onednn
@pytest.mark.parametrize("kernel", ["onednn", "onednn_linear"])
@pytest.mark.parametrize("shape", [(4, 100), (400,)])
@pytest.mark.parametrize("features", [(256, 768), (768, 256)])
def test_onednn_kernels_match_f_linear(shape, features, kernel):
    torch.manual_seed(0)
    layer = Linear(*features)
    x = torch.randn(*shape, features[0])
    with threads(2):
        try:
            Linear.kernel = kernel
            out, grads, ops = run(layer, x)
            assert kernel_ran(ops, narrowing=features[0] > features[1]) == kernel
            Linear.kernel = "linear"
            ref_out, ref_grads, ref_ops = run(layer, x)
        finally:
            Linear.kernel = None
    assert kernel_ran(ref_ops) == "linear"
    assert out.shape == ref_out.shape == (*shape, features[1])
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-4)
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)


@needs_onednn
def test_onednn_linear_without_bias_or_input_grad():
    torch.manual_seed(0)
    layer, reference = Linear(256, 768, bias=False), torch.nn.Linear(256, 768, bias=False)
    reference.load_state_dict(layer.state_dict())
    layer.kernel = "onednn_linear"
    x = torch.randn(3, 200, 256)  # no grad: the backward pass computes the weight gradient only
    upstream = torch.randn(3, 200, 768)
    with threads(2), profile(activities=[ProfilerActivity.CPU]) as prof:
        layer(x).backward(upstream)
        reference(x).backward(upstream)
    assert kernel_ran(op_counts(prof), input_grad=False) == "onednn_linear"
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-3)
    x = x.requires_grad_()
    with threads(2):
        (grad_x,) = torch.autograd.grad(layer(x), x, upstream)
    torch.testing.assert_close(grad_x, upstream @ layer.weight, rtol=1e-5, atol=1e-3)


@needs_onednn
def test_onednn_linear_kernel_under_checkpointing():
    torch.manual_seed(0)
    block = Block(256, 8)
    x = torch.randn(2, 64, 256, requires_grad=True)
    with threads(2):
        try:
            Linear.kernel = "onednn_linear"
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                out = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
                grads = torch.autograd.grad(out.sum(), [x, block.mlp.fc1.weight])
            # torch's own checkpoint keeps the kernel: no convolution runs.
            ops = op_counts(prof)
            assert ops.get("mkldnn::_linear_pointwise", 0) > 0, ops
            assert "aten::mkldnn_convolution" not in ops, ops
            Linear.kernel = "linear"
            ref = block(x)
            ref_grads = torch.autograd.grad(ref.sum(), [x, block.mlp.fc1.weight])
        finally:
            Linear.kernel = None
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)


@needs_onednn
@pytest.mark.parametrize("vendor, family, kernel", [
    ("AuthenticAMD", "26", "onednn"),
    ("AuthenticAMD", "25", "onednn_linear"),
    ("AuthenticAMD", "23", "linear"),
    ("AuthenticAMD", "", "linear"),
    ("GenuineIntel", "6", "linear"),
    ("", "", "linear"),
])
def test_default_kernel_follows_cpu(monkeypatch, vendor, family, kernel):
    fields = {"vendor_id": vendor, "cpu family": family}
    monkeypatch.setattr(layers, "cpu_info", lambda: {key: value for key, value in fields.items() if value})
    assert layers.default_linear_kernel() == kernel
    layer = Linear(256, 768)
    with threads(2):
        _, _, ops = run(layer, torch.randn(400, 256))
        assert kernel_ran(ops) == kernel
        layer.kernel = "onednn" if kernel == "linear" else "linear"  # an explicit setting wins
        _, _, ops = run(layer, torch.randn(400, 256))
        assert kernel_ran(ops) == layer.kernel


def test_invalid_kernel_names_the_choices():
    layer = Linear(256, 768)
    layer.kernel = "mkl"
    with pytest.raises(ValueError, match="'mkl'.*'linear', 'onednn', 'onednn_linear'"):
        layer(torch.randn(4, 256))


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="no /proc/cpuinfo")
def test_cpu_fields_read_proc_cpuinfo():
    with open("/proc/cpuinfo") as f:
        text = f.read()
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", text, re.MULTILINE)
    family = re.search(r"^cpu family\s*:\s*(\d+)", text, re.MULTILINE)
    assert layers.cpu_vendor() == (vendor.group(1) if vendor else "")
    assert layers.cpu_family() == (int(family.group(1)) if family else None)


@needs_onednn
@pytest.mark.parametrize("kernel", ["onednn", "onednn_linear"])
def test_non_contiguous_input(kernel):
    torch.manual_seed(0)
    layer = Linear(256, 768)
    layer.kernel = kernel
    x = torch.randn(256, 4, 100).permute(1, 2, 0).requires_grad_()  # (4, 100, 256), not contiguous
    with threads(2):
        out = layer(x)
        torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-4)
        (grad_x,) = torch.autograd.grad(out.sum(), x)
        upstream = torch.randn(768, 100, 4).permute(2, 1, 0)  # a non-contiguous output gradient
        (grad_strided,) = torch.autograd.grad(layer(x), x, upstream)
    torch.testing.assert_close(grad_x, layer.weight.sum(0).expand(4, 100, -1), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad_strided, upstream @ layer.weight, rtol=1e-5, atol=1e-4)



@needs_onednn
@pytest.mark.parametrize("layout", ["feature slice", "row step", "expanded"])
def test_strided_input_narrowing_layer(layout):
    """A saved input that is neither contiguous nor transposed takes MKL for the weight
    gradient: oneDNN reads it correctly but through its reference kernel, about a thousand
    times slower."""
    torch.manual_seed(0)
    layer = Linear(3072, 768)
    layer.kernel = "onednn_linear"
    x = {"feature slice": torch.randn(400, 6144)[:, :3072],
         "row step": torch.randn(800, 3072)[::2],
         "expanded": torch.randn(1, 3072).expand(400, 3072)}[layout]
    assert not x.is_contiguous()
    assert not x.t().is_contiguous()
    upstream = torch.randn(400, 768)
    with threads(2), profile(activities=[ProfilerActivity.CPU]) as prof:
        layer(x).backward(upstream)
    assert kernel_ran(op_counts(prof), input_grad=False) == "onednn_linear"  # no third operator call
    torch.testing.assert_close(layer.weight.grad, upstream.t() @ x, rtol=1e-5, atol=1e-3)


@needs_onednn
def test_sliced_weight_takes_f_linear():
    torch.manual_seed(0)
    layer = Linear(768, 1024)  # widening, so the weight gradient takes MKL too
    layer.kernel = "onednn_linear"
    layer.weight = torch.nn.Parameter(torch.randn(1024, 1536)[:, ::2])  # neither contiguous nor transposed
    x = torch.randn(400, 768, requires_grad=True)
    with threads(2), profile(activities=[ProfilerActivity.CPU]) as prof:
        out = layer(x)
        out.backward(torch.ones_like(out))
    assert op_counts(prof).get("mkldnn::_linear_pointwise", 0) == 0
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(400, -1), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(layer.weight.grad, torch.ones(1024, 400) @ x, rtol=1e-5, atol=1e-3)


@needs_onednn
def test_backward_through_vmap():
    """Inside vmap the unwrapped inputs do not require grad, so the saved tensors follow
    ``needs_input_grad``. The operator runs once per sample there, with a warning."""
    torch.manual_seed(0)
    layer = Linear(3072, 768)
    layer.kernel = "onednn_linear"
    xs = torch.randn(4, 50, 3072, requires_grad=True)
    upstream = torch.randn(4, 50, 768)
    with threads(2), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        grads = torch.autograd.grad(torch.func.vmap(layer)(xs), [xs, layer.weight, layer.bias], upstream)
    expected = torch.autograd.grad(F.linear(xs, layer.weight, layer.bias), [xs, layer.weight, layer.bias],
                                   upstream)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)

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
        assert not any("convolution" in op or "_linear_pointwise" in op for op in ops), name
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


@pytest.mark.parametrize("autocast", [False, True])
def test_patch_embed_of_chosen_ids(autocast):
    torch.manual_seed(0)
    embed = PatchEmbed(patch_size=8, in_chans=3, embed_dim=32)
    x = torch.randn(2, 3, 24, 40)  # a 3 x 5 grid
    ids = torch.tensor([[14, 0, 7, 3], [5, 9, 1, 12]])  # any order, per image
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        tokens, grid = embed(x, ids)
        full, _ = embed(x)
    assert grid == (3, 5)
    assert tokens.shape == (2, 4, 32)
    expected = full.gather(1, ids[..., None].expand(-1, -1, 32))
    torch.testing.assert_close(tokens, expected)
    upstream = torch.randn(tokens.shape)
    grads = torch.autograd.grad(tokens.float(), [embed.proj.weight, embed.proj.bias], upstream)
    expected_grads = torch.autograd.grad(expected.float(), [embed.proj.weight, embed.proj.bias], upstream)
    tolerance = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, **tolerance)


def test_encoder_embeds_visible_patches():
    from mimae.models.vit import VisionTransformer, gather_tokens

    torch.manual_seed(0)
    encoder = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    imgs = torch.randn(2, 3, 32, 48)  # another grid than the stored table's 4 x 4
    ids = torch.tensor([[23, 2, 9], [0, 17, 11]])
    visible, grid = encoder.embed_patches(imgs, ids)
    full, _ = encoder.embed_patches(imgs)
    assert grid == (4, 6)
    torch.testing.assert_close(visible, gather_tokens(full, ids))
    torch.testing.assert_close(encoder.forward_masked(imgs, ids), encoder.forward_tokens(gather_tokens(full, ids)))


@needs_onednn
def test_checkpoint_recompute_skips_last_product():
    """Checkpointing stops the recomputation once a block's saved tensors are back. The
    default kernel on AMD CPUs before family 26 stores them after its forward pass, so
    ``run_blocks`` switches it to the convolution inside checkpoints."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(Block(256, 8) for _ in range(2))
    x = torch.randn(2, 64, 256, requires_grad=True)

    def step(kernel: str) -> tuple[int, list[torch.Tensor]]:
        Linear.kernel = kernel
        counter = FlopCounterMode(display=False)
        with counter:
            layers.run_blocks(blocks, x, with_cp=True).square().sum().backward()
        grads = [x.grad, blocks[1].mlp.fc2.weight.grad]
        x.grad = None
        blocks.zero_grad(set_to_none=True)
        return counter.get_total_flops(), grads

    with threads(2):
        try:
            flops, grads = step("onednn_linear")
            conv_flops, conv_grads = step("onednn")
            plain_flops, plain_grads = step("linear")
        finally:
            Linear.kernel = None
    # Without the switch the recomputation also runs each block's last product (fc2) again.
    assert flops == conv_flops == plain_flops
    for got, expected in zip(grads, plain_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)
    for got, expected in zip(conv_grads, plain_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)


@needs_onednn
def test_onednn_linear_kernel_higher_order_gradients():
    """Double backward, ``torch.func.grad`` and forward-mode AD through ``onednn_linear``
    give what ``F.linear`` gives."""
    from torch.func import functional_call, grad, jvp

    torch.manual_seed(0)
    layer = Linear(256, 768)
    x = torch.randn(400, 256)
    tangent = torch.randn(400, 256)
    results = {}
    with threads(2):
        for kernel in ["onednn_linear", "linear"]:
            layer.kernel = kernel
            layer.zero_grad(set_to_none=True)
            inputs = x.clone().requires_grad_()
            loss = layer(inputs).sum()
            (grad_x,) = torch.autograd.grad(loss, inputs, create_graph=True)
            (grad_x.pow(2).sum() + loss).backward()
            params = dict(layer.named_parameters())
            func_grads = grad(lambda p: functional_call(layer, p, (x,)).square().sum())(params)
            _, out_tangent = jvp(layer, (x,), (tangent,))
            results[kernel] = [layer.weight.grad, func_grads["weight"], func_grads["bias"], out_tangent]
    for got, expected in zip(results["onednn_linear"], results["linear"]):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-2)


def test_onednn_linear_function_gradgradcheck():
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layers._OneDNNLinear.apply, (x, weight, bias))
    assert torch.autograd.gradgradcheck(layers._OneDNNLinear.apply, (x, weight, bias))


@pytest.mark.parametrize("kernel", [None, "linear", "onednn", "onednn_linear"])
def test_compiled_checkpointed_encoder_has_one_graph(kernel):
    """torch.compile captures the checkpointed blocks whole: Linear leaves the kernel choice
    to the compiler, and ``checkpointed`` skips its thread-local switch."""
    import torch._dynamo.testing

    from mimae.models.vit import VisionTransformer

    torch._dynamo.reset()
    torch.manual_seed(0)
    encoder = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, with_cp=True)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(encoder, backend=counter)
    try:
        Linear.kernel = kernel
        with threads(2):
            for _ in range(2):
                compiled(torch.randn(2, 3, 32, 32)).sum().backward()
    finally:
        Linear.kernel = None
        torch._dynamo.reset()
    assert counter.frame_count == 1


@pytest.mark.parametrize("ids, message", [
    (torch.tensor([[0, 15], [1, 2]]), "range from 0 to 15, outside the 3x5 grid's"),
    (torch.tensor([[-1, 3], [1, 2]]), "range from -1 to 3"),
    (torch.tensor([[0, 1]]), r"shape \(1, 2\) do not match the batch: expected \(2, K\)"),
    (torch.tensor([0, 1]), r"shape \(2,\) do not match"),
])
def test_patch_embed_rejects_bad_ids(ids, message):
    embed = PatchEmbed(patch_size=8, in_chans=3, embed_dim=32)
    with pytest.raises(ValueError, match=message):
        embed(torch.randn(2, 3, 24, 40), ids)


@needs_onednn
def test_missing_linear_operator_takes_the_convolution(monkeypatch):
    """A PyTorch build without the private operator runs the convolution instead."""
    monkeypatch.setattr(layers, "_onednn_linear_available", lambda: False)
    layer = Linear(256, 768)
    layer.kernel = "onednn_linear"
    with threads(2):
        _, _, ops = run(layer, torch.randn(400, 256))
    assert kernel_ran(ops) == "onednn"


@pytest.mark.parametrize("keys, mask, explicit", [(50, False, True), (128, False, True), (129, False, False),
                                                  (50, True, False)])
def test_short_float32_attention_is_written_out(keys, mask, explicit):
    """Float32 CPU attention over at most ``cpu_explicit_max_keys`` keys without a mask runs
    as products and a softmax; it gives the flash kernel's output and gradients."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, keys, 16, requires_grad=True) for _ in range(3))
    attn_mask = torch.randn(keys, keys) if mask else None
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = layers.attend(q, k, v, attn_mask)
    ops = {event.key for event in prof.key_averages()}
    assert ("aten::_softmax" in ops) is explicit, ops
    assert any(op.startswith("aten::_scaled_dot_product") for op in ops) is not explicit, ops
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(out.shape)
    grads = torch.autograd.grad(out, [q, k, v], upstream)
    expected_grads = torch.autograd.grad(expected, [q, k, v], upstream)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_zero_key_limit_keeps_flash(monkeypatch):
    monkeypatch.setattr(layers.Attention, "cpu_explicit_max_keys", 0)
    q = k = v = torch.randn(2, 3, 50, 16)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        layers.attend(q, k, v)
    assert "aten::_softmax" not in {event.key for event in prof.key_averages()}


@needs_onednn
@pytest.mark.parametrize("kernel", ["onednn", "onednn_linear"])
def test_strided_bias(kernel):
    """A bias that is a strided or expanded view gives F.linear's result."""
    torch.manual_seed(0)
    layer = Linear(256, 768)
    layer.kernel = kernel
    x = torch.randn(400, 256, requires_grad=True)
    for bias in (torch.randn(1536)[::2], torch.randn(1).expand(768)):
        layer.bias = torch.nn.Parameter(bias)
        with threads(2):
            out = layer(x)
            (grad_bias,) = torch.autograd.grad(out.sum(), layer.bias)
        torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(grad_bias, torch.full_like(grad_bias, 400.0))


def test_attention_with_empty_heads():
    q = k = v = torch.randn(1, 1, 3, 0)
    assert layers.attend(q, k, v).shape == (1, 1, 3, 0)
