"""Under bfloat16 autocast, attention softmax and every loss stay in float32.

Attention runs in ``scaled_dot_product_attention``. Without a bias, the CPU flash kernel
takes bfloat16 inputs and keeps the softmax statistics (its log-sum-exp output) in float32.
With a bias that needs a gradient (relative positions), PyTorch takes its math path,
which upcasts bfloat16 to float32 before the softmax unless
``torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)`` is set. The tests record
the aten operators that run and check the dtypes that each softmax receives.
"""
from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mimae.downstream.vitdet import MaskedAttention
from mimae.models import CLUB, MAE, MIMAE, MINE, InfoNCE
from mimae.models.layers import Attention

SOFTMAX_OPS = ("aten._softmax.", "aten._safe_softmax.", "aten._log_softmax.", "aten.logsumexp.")
FLASH_OPS = ("aten._scaled_dot_product_flash_attention_for_cpu.",)


class OpRecorder(TorchDispatchMode):
    """Record every aten operator with the dtypes of its tensor inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[torch.dtype], list[torch.dtype]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a.dtype for a in itertools.chain(args, (kwargs or {}).values()) if isinstance(a, torch.Tensor)]
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        self.calls.append((str(func), inputs, [o.dtype for o in outputs if isinstance(o, torch.Tensor)]))
        return out

    def ops(self, prefixes: tuple[str, ...]) -> list[tuple[str, list[torch.dtype], list[torch.dtype]]]:
        return [call for call in self.calls if call[0].startswith(prefixes)]


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def attention_cases():
    torch.manual_seed(0)
    plain = Attention(64, num_heads=4)
    rel_pos = Attention(64, num_heads=4, rel_pos_size=(4, 4))
    torch.nn.init.normal_(rel_pos.rel_pos_h, std=0.5)
    torch.nn.init.normal_(rel_pos.rel_pos_w, std=0.5)
    masked = MaskedAttention(64, num_heads=4, rel_pos_size=(4, 4))
    key_mask = torch.ones(2, 16, dtype=torch.bool)
    key_mask[:, -3:] = False  # padding keys of a partial window
    return {
        "plain": (plain, lambda m, x: m(x)),
        "rel_pos": (rel_pos, lambda m, x: m(x, (4, 4))),
        "padded_window": (masked, lambda m, x: m(x, (4, 4), key_mask)),
    }


@pytest.mark.parametrize("case", ["plain", "rel_pos", "padded_window"])
def test_attention_softmax_float32(case: str) -> None:
    module, run = attention_cases()[case]
    x = torch.randn(2, 16, 64, requires_grad=True)

    with bf16_autocast(), OpRecorder() as forward:
        out = run(module, x)
    with OpRecorder() as backward:
        out.float().square().sum().backward()

    assert out.dtype == torch.bfloat16
    flash = forward.ops(FLASH_OPS)
    softmax = forward.ops(SOFTMAX_OPS)
    assert flash or softmax, "no attention kernel or softmax ran"
    for name, inputs, outputs in flash:
        assert outputs[1] == torch.float32, f"{name} keeps its log-sum-exp in {outputs[1]}"
    for name, inputs, _ in softmax + backward.ops(("aten._softmax_backward_data.",)):
        assert all(dtype == torch.float32 for dtype in inputs), f"{name} ran on {inputs}"


@pytest.mark.parametrize("case", ["plain", "rel_pos", "padded_window"])
def test_attention_close_to_float32(case: str) -> None:
    module, run = attention_cases()[case]
    x = torch.randn(2, 16, 64)

    with torch.no_grad():
        reference = run(module, x)
        with bf16_autocast():
            mixed = run(module, x)

    # bfloat16 keeps 8 significant bits; the projections round inputs and weights.
    assert torch.allclose(mixed.float(), reference, atol=0.05, rtol=0.05)


def infonce_reference(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over all ordered view pairs, in float32, from projected latents ``(B, N, d)``."""
    z = F.normalize(z.float(), dim=-1)
    batch, num_views, _ = z.shape
    losses = []
    for i in range(num_views):
        for j in range(num_views):
            if i != j:
                logits = z[:, i] @ z[:, j].T / temperature
                losses.append(F.cross_entropy(logits, torch.arange(batch)))
    return torch.stack(losses).mean()


def test_infonce_logits_float32() -> None:
    torch.manual_seed(0)
    estimator = InfoNCE(in_dim=32, hidden_dim=64, proj_dim=16, temperature=0.2)
    pooled = torch.randn(8, 4, 32)

    with bf16_autocast():
        out = estimator(pooled)
        projected = estimator.head(pooled)

    assert projected.dtype == torch.bfloat16
    assert out["loss"].dtype == torch.float32
    # Logits from a bfloat16 matmul would be off by about 1e-2 here.
    expected = infonce_reference(projected, 0.2)
    assert out["loss"].item() == pytest.approx(expected.item(), abs=1e-5)


def test_club_terms_float32() -> None:
    torch.manual_seed(0)
    club = CLUB(x_dim=32, z_dim=16, hidden_dim=64)
    x, z = torch.randn(12, 32), torch.randn(12, 16)

    with bf16_autocast():
        out = club(x, z)
        mu, logvar = club.mu(x).float(), club.logvar(x).float()

    assert out["estimate"].dtype == torch.float32
    assert out["q_nll"].dtype == torch.float32
    q_nll = 0.5 * (((z - mu) ** 2) / logvar.exp() + logvar).mean()
    inv_var = (-logvar).exp()
    positive = -0.5 * (z - mu) ** 2 * inv_var
    negative = -0.5 * ((z[None, :, :] - mu[:, None, :]) ** 2).mean(dim=1) * inv_var
    assert out["q_nll"].item() == pytest.approx(q_nll.item(), abs=1e-5)
    assert out["estimate"].item() == pytest.approx((positive - negative).mean().item(), abs=1e-5)


def test_mine_bound_float32() -> None:
    torch.manual_seed(0)
    estimator = MINE(in_dim=32, hidden_dim=64, proj_dim=16, critic_dim=32)
    pooled = torch.randn(8, 4, 32)

    with bf16_autocast(), OpRecorder() as recorder:
        out = estimator(pooled)

    assert out["loss"].dtype == torch.float32
    for name, inputs, _ in recorder.ops(SOFTMAX_OPS + ("aten.exp.",)):
        assert all(dtype == torch.float32 for dtype in inputs), f"{name} ran on {inputs}"


def tiny_model_args() -> dict:
    return dict(
        encoder=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4),
        decoder=dict(embed_dim=32, depth=1, num_heads=4),
    )


@pytest.mark.parametrize("kind", ["mae", "mimae"])
def test_pretraining_losses_float32(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "mae":
        model = MAE(**tiny_model_args())
    else:
        model = MIMAE(**tiny_model_args(), num_views=4, mi_max=dict(type="InfoNCE", hidden_dim=32, proj_dim=16),
                      mi_min=dict(type="CLUB", hidden_dim=32))
    images = torch.randn(4, 3, 32, 32)

    with bf16_autocast(), OpRecorder() as recorder:
        losses = model.loss(images)

    assert any(dtype == torch.bfloat16 for _, _, outputs in recorder.calls for dtype in outputs), "autocast was off"
    for key, value in losses.items():
        assert value.dtype == torch.float32, f"{key} is {value.dtype}"
    for name, inputs, _ in recorder.ops(SOFTMAX_OPS):
        assert all(dtype == torch.float32 for dtype in inputs), f"{name} ran on {inputs}"
    for name, _, outputs in recorder.ops(FLASH_OPS):
        assert outputs[1] == torch.float32, f"{name} keeps its log-sum-exp in {outputs[1]}"


def test_bf16_wrapper_cpu_step() -> None:
    """``tools/train.py --amp`` on a CPU selects BF16OptimWrapper: a step through MMEngine's
    ``train_step`` runs the linear layers in bf16 and keeps parameters and gradients float32."""
    from mmengine.config import Config

    from mimae.engine import BF16OptimWrapper
    from mimae.registry import build_model
    from train import merge_args, parse_args

    cfg = Config.fromfile("configs/pretrain/mae_vit-base-p16_8xb512-amp-coslr-1600e_in1k.py")
    cfg = merge_args(cfg, parse_args([cfg.filename, "--amp"]))
    if torch.cuda.is_available():
        pytest.skip("on a GPU --amp selects MMEngine's AmpOptimWrapper")
    assert cfg.optim_wrapper.type == "BF16OptimWrapper"
    assert "dtype" not in cfg.optim_wrapper
    assert "loss_scale" not in cfg.optim_wrapper

    torch.manual_seed(0)
    model = build_model(dict(type="MAE", **tiny_model_args(), data_preprocessor=dict(type="ImgDataPreprocessor")))
    wrapper = BF16OptimWrapper(optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True))
    linear_outputs = []
    model.encoder.blocks[0].mlp.fc1.register_forward_hook(lambda m, a, out: linear_outputs.append(out.dtype))
    before = model.encoder.patch_embed.proj.weight.detach().clone()
    data = dict(inputs=[torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(2)])
    log_vars = model.train_step(data, wrapper)

    assert linear_outputs == [torch.bfloat16]
    assert torch.isfinite(log_vars["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.equal(model.encoder.patch_embed.proj.weight, before)


@pytest.mark.parametrize("native", [True, False])
def test_cpu_amp_warns_without_bf16(monkeypatch, capsys, native: bool) -> None:
    """On a CPU whose bf16 products take PyTorch's generic loop, --amp still trains and warns
    that it is slower than float32, naming the fix."""
    from mmengine.config import Config

    import train

    if torch.cuda.is_available():
        pytest.skip("on a GPU --amp selects MMEngine's AmpOptimWrapper")
    monkeypatch.setattr(train, "cpu_bf16_products", lambda: native)
    cfg = Config.fromfile("configs/pretrain/mae_vit-base-p16_8xb512-amp-coslr-1600e_in1k.py")
    cfg = train.merge_args(cfg, train.parse_args([cfg.filename, "--amp"]))
    assert cfg.optim_wrapper.type == "BF16OptimWrapper"
    err = capsys.readouterr().err
    assert ("Drop --amp to train in float32" in err) is not native


def test_cpu_bf16_products_matches_torch() -> None:
    """``cpu_bf16_products`` reports the check PyTorch uses to send bf16 products to oneDNN."""
    from mimae.models.layers import cpu_bf16_products

    assert cpu_bf16_products() == torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_cpu_amp_rejects_detection() -> None:
    """mmcv's CPU RoIAlign has no bf16 kernel, so --amp on a CPU stops before building Mask R-CNN."""
    from mmengine.config import Config

    from train import merge_args, parse_args

    if torch.cuda.is_available():
        pytest.skip("on a GPU --amp selects MMEngine's AmpOptimWrapper")
    path = "configs/coco/mask-rcnn_vit-b-p16-simplefpn_8xb8-lsj-amp-100e_coco_demo.py"
    with pytest.raises(SystemExit, match="pretraining configs only.*Drop --amp"):
        merge_args(Config.fromfile(path), parse_args([path, "--amp"]))


@pytest.mark.parametrize("kernel", ["flash_fp32", "flash"])
def test_cpu_autocast_attention_kernel_dtype(kernel: str, monkeypatch) -> None:
    """Under bf16 autocast the CPU flash kernel gets float32 inputs with ``"flash_fp32"`` and
    bfloat16 ones with ``"flash"``. The block's output is bfloat16 and close to float32 either way."""
    monkeypatch.setattr(Attention, "cpu_autocast_kernel", kernel)
    module, run = attention_cases()["plain"]
    x = torch.randn(2, 16, 64, requires_grad=True)
    with bf16_autocast(), OpRecorder() as forward:
        out = run(module, x)
    with OpRecorder() as backward:
        out.float().square().sum().backward()
    expected = torch.float32 if kernel == "flash_fp32" else torch.bfloat16
    flash = forward.ops(FLASH_OPS)
    assert flash, "the flash kernel did not run"
    assert all(dtype == expected for _, inputs, _ in flash for dtype in inputs[:3])
    flash_backward = backward.ops(("aten._scaled_dot_product_flash_attention_for_cpu_backward.",))
    assert flash_backward and all(dtype == expected for _, inputs, _ in flash_backward for dtype in inputs[:3])
    assert out.dtype == torch.bfloat16
    with torch.no_grad():
        reference = run(module, x)
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=3e-2)


def profiled_event_names(step) -> set[str]:
    """Return the names of the events that ``torch.profiler`` records while ``step()`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return {event.key for event in prof.key_averages()}


def test_compiled_attention_close_to_float32(monkeypatch) -> None:
    """The ``"compiled"`` kernel runs a compiled graph instead of the flash kernel, and its
    output and input gradient stay within bf16 tolerance of float32 attention."""
    from mimae.models import layers

    if not layers.compiled_attention_works():
        pytest.skip("torch.compile does not work on this machine")
    monkeypatch.setattr(Attention, "cpu_autocast_kernel", "compiled")
    module, run = attention_cases()["plain"]
    x = torch.randn(2, 16, 64, requires_grad=True)
    result = {}

    def step():
        with bf16_autocast():
            result["out"] = run(module, x)
        result["out"].float().square().sum().backward()

    step()  # compiles for this shape
    x.grad = None
    names = profiled_event_names(step)
    assert any(name.startswith("Torch-Compiled Region") for name in names), sorted(names)
    assert not any(name.startswith("aten::_scaled_dot_product") for name in names), sorted(names)
    out, grad = result["out"], x.grad
    assert out.dtype == torch.bfloat16

    x.grad = None
    reference = run(module, x)
    reference.square().sum().backward()
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(grad, x.grad, atol=5e-2, rtol=5e-2)


def test_chunks_match_one_call(monkeypatch) -> None:
    """Splitting the batch to keep the scores within ``COMPILED_SCORE_BYTES`` changes nothing
    beyond bf16 rounding, in the output and in the gradients."""
    from mimae.models import layers

    if not layers.compiled_attention_works():
        pytest.skip("torch.compile does not work on this machine")
    torch.manual_seed(0)
    q, k, v = (torch.randn(5, 3, 12, 16, dtype=torch.bfloat16) for _ in range(3))
    results = []
    for score_bytes in (1 << 30, 3 * 12 * 12 * 4 * 2):  # one call, then chunks of 2, 2 and 1 rows
        monkeypatch.setattr(layers, "COMPILED_SCORE_BYTES", score_bytes)
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        with bf16_autocast():
            out = layers.compiled_attention(*inputs)
        out.float().square().sum().backward()
        results.append([out] + [t.grad for t in inputs])
    for whole, chunked in zip(*results):
        torch.testing.assert_close(chunked.float(), whole.float(), atol=2e-2, rtol=2e-2)


def test_compile_failure_falls_back(monkeypatch) -> None:
    """Without a working torch.compile, ``"compiled"`` warns once, naming the error, and runs
    the float32 flash kernel."""
    from mimae.models import layers

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(layers, "_compiled_explicit_attention", None)
    monkeypatch.setattr(layers, "_compiled_attention_status", None)
    monkeypatch.setattr(Attention, "cpu_autocast_kernel", "compiled")
    module, run = attention_cases()["plain"]
    x = torch.randn(2, 16, 64)
    with pytest.warns(UserWarning, match="failed its trial .RuntimeError: no C.. compiler found"):
        with bf16_autocast(), OpRecorder() as forward:
            out = run(module, x)
    flash = forward.ops(FLASH_OPS)
    assert flash and all(dtype == torch.float32 for _, inputs, _ in flash for dtype in inputs[:3])
    with warnings.catch_warnings(record=True) as later, bf16_autocast(), OpRecorder() as again:
        warnings.simplefilter("always")
        run(module, x)
    assert again.ops(FLASH_OPS)
    assert not [w for w in later if "torch.compile" in str(w.message)], "the failure was reported twice"
    assert layers._compiled_attention_status is False
    torch.testing.assert_close(out.float(), run(module, x), atol=3e-2, rtol=3e-2)


def test_masked_attention_skips_compiled_kernel(monkeypatch) -> None:
    """The compiled kernel has no mask input, so masked attention runs the same operators,
    on the same dtypes, as with ``"flash_fp32"``."""
    module, run = attention_cases()["padded_window"]
    x = torch.randn(2, 16, 64)
    records = []
    for kernel in ("compiled", "flash_fp32"):
        monkeypatch.setattr(Attention, "cpu_autocast_kernel", kernel)
        with bf16_autocast(), OpRecorder() as forward:
            out = run(module, x)
        records.append((forward.calls, out))
    (compiled_calls, compiled_out), (flash_calls, flash_out) = records
    assert compiled_calls == flash_calls
    assert any(all(dtype == torch.float32 for dtype in inputs) for _, inputs, _ in
               [*forward.ops(SOFTMAX_OPS), *forward.ops(FLASH_OPS)])
    torch.testing.assert_close(compiled_out, flash_out, atol=0, rtol=0)


def test_unknown_cpu_autocast_kernel_named(monkeypatch) -> None:
    monkeypatch.setattr(Attention, "cpu_autocast_kernel", "flash32")
    module, run = attention_cases()["plain"]
    with bf16_autocast(), pytest.raises(ValueError, match="'flash32'.*'flash_fp32', 'flash', 'compiled'"):
        run(module, torch.randn(2, 16, 64))


def test_train_amp_sets_cpu_attention(monkeypatch) -> None:
    """``tools/train.py --amp --cpu-attention K`` on a CPU sets ``Attention.cpu_autocast_kernel``;
    without ``--amp`` the setting stays."""
    from train import parse_args, select_cpu_attention

    if torch.cuda.is_available():
        pytest.skip("the setting applies to a machine without a GPU")
    monkeypatch.setattr(Attention, "cpu_autocast_kernel", "flash_fp32")
    path = "configs/pretrain/mae_vit-base-p16_8xb512-amp-coslr-1600e_in1k_demo.py"
    select_cpu_attention(parse_args([path]))
    assert Attention.cpu_autocast_kernel == "flash_fp32"
    select_cpu_attention(parse_args([path, "--amp"]))
    assert Attention.cpu_autocast_kernel == "compiled"
    select_cpu_attention(parse_args([path, "--amp", "--cpu-attention", "flash"]))
    assert Attention.cpu_autocast_kernel == "flash"


def test_boolean_mask_selects_keys_under_autocast() -> None:
    """Under CPU autocast ``attend`` keeps a boolean mask a selection of keys, as in float32."""
    from mimae.models.layers import attend

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 16) for _ in range(3))
    keep = torch.tensor([True, True, True, False, False, False]).expand(6, 6)  # (queries, keys)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    with bf16_autocast():
        got = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=keep)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("batch, max_rows, rows",
                         [(8, 9, 8), (32, 9, 8), (8, 6, 4), (7, 6, 6), (13, 5, 5), (32, 1, 1)])
def test_compiled_attention_chunk_rows(batch: int, max_rows: int, rows: int) -> None:
    """Chunks are equal where a divisor of the batch is at least half the row limit."""
    from mimae.models.layers import _chunk_rows

    assert _chunk_rows(batch, max_rows) == rows


def test_layouts_beyond_limit_take_flash(monkeypatch) -> None:
    """Once ``COMPILED_LAYOUTS_MAX`` input layouts are compiled, a new layout runs the float32
    flash kernel instead of a further compilation."""
    from mimae.models import layers

    if not layers.compiled_attention_works():
        pytest.skip("torch.compile does not work on this machine")
    monkeypatch.setattr(layers, "_compiled_layouts", set())
    monkeypatch.setattr(layers, "COMPILED_LAYOUTS_MAX", 1)
    monkeypatch.setattr(Attention, "cpu_autocast_kernel", "compiled")
    torch.manual_seed(0)
    first = [torch.randn(2, 2, 8, 8, dtype=torch.bfloat16) for _ in range(3)]
    second = [torch.randn(2, 2, 12, 8, dtype=torch.bfloat16) for _ in range(3)]
    with torch.no_grad(), bf16_autocast():
        with OpRecorder() as compiled:
            layers.attend(*first)
        with OpRecorder() as beyond:
            out = layers.attend(*second)
        with OpRecorder() as again:
            layers.attend(*first)
    assert not compiled.ops(FLASH_OPS)
    flash = beyond.ops(FLASH_OPS)
    assert flash and all(dtype == torch.float32 for _, inputs, _ in flash for dtype in inputs[:3])
    assert not again.ops(FLASH_OPS)
    assert len(layers._compiled_layouts) == 1
    reference = F.scaled_dot_product_attention(*(t.float() for t in second))
    torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_compiled_trial_under_no_grad(mode: str, monkeypatch) -> None:
    """A first call under no_grad or inference mode still runs the full trial, which passes."""
    from mimae.models import layers

    if not layers.compiled_attention_works():
        pytest.skip("torch.compile does not work on this machine")
    monkeypatch.setattr(layers, "_compiled_attention_status", None)
    monkeypatch.setattr(layers, "_compiled_layouts", set())
    monkeypatch.setattr(Attention, "cpu_autocast_kernel", "compiled")
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    q, k, v = (torch.randn(2, 2, 8, 8, dtype=torch.bfloat16) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with context, bf16_autocast():
            out = layers.attend(q, k, v)
    assert layers._compiled_attention_status is True
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)


def test_trial_keeps_global_rng(monkeypatch) -> None:
    from mimae.models import layers

    monkeypatch.setattr(layers, "_compiled_attention_status", None)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    layers.compiled_attention_works()
    assert torch.equal(torch.rand(3), expected)


def test_layouts_count_grad_modes(monkeypatch) -> None:
    """Grad mode and inference mode each give a separate compiled layout, as dynamo guards on them."""
    from mimae.models import layers

    if not layers.compiled_attention_works():
        pytest.skip("torch.compile does not work on this machine")
    monkeypatch.setattr(layers, "_compiled_layouts", set())
    q, k, v = (torch.randn(2, 2, 8, 8, dtype=torch.bfloat16) for _ in range(3))
    with bf16_autocast():
        layers.compiled_attention(q, k, v)  # grad mode on, no input requires grad
        with torch.no_grad():
            layers.compiled_attention(q, k, v)
        with torch.inference_mode():
            layers.compiled_attention(q, k, v)
    assert len(layers._compiled_layouts) == 3


def test_other_ranks_take_flash_fp32(monkeypatch) -> None:
    """Inputs that are not 4-D, or whose batch sizes differ, run as with ``"flash_fp32"``."""
    monkeypatch.setattr(Attention, "cpu_autocast_kernel", "compiled")
    from mimae.models.layers import attend

    cases = [tuple(torch.randn(3, 8, 16, dtype=torch.bfloat16) for _ in range(3)),
             (torch.randn(2, 2, 8, 16, dtype=torch.bfloat16),
              torch.randn(1, 2, 8, 16, dtype=torch.bfloat16), torch.randn(1, 2, 8, 16, dtype=torch.bfloat16))]
    for q, k, v in cases:
        with bf16_autocast(), OpRecorder() as forward:
            out = attend(q, k, v)
        monkeypatch.setattr(Attention, "cpu_autocast_kernel", "flash_fp32")
        with bf16_autocast(), OpRecorder() as flash_fp32:
            attend(q, k, v)
        monkeypatch.setattr(Attention, "cpu_autocast_kernel", "compiled")
        assert forward.calls == flash_fp32.calls
        reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)
