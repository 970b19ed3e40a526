"""Transformer layers shared by the pretraining encoder and the downstream backbones.

Parameter names follow timm and the official MAE code (``attn.qkv``, ``mlp.fc1``,
``norm1``), so their checkpoints load without key surgery.
"""
from __future__ import annotations

import threading
import warnings
from functools import cache, partial

import torch
import torch.fx  # noqa: F401  (Linear asks torch.fx whether it is tracing)
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .pos_embed import resize_rel_pos

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping patches and project each to ``embed_dim``.

    The projection is stored as a ``Conv2d`` (kernel and stride ``patch_size``), as in
    timm and the official MAE code, so checkpoints load unchanged.
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(
        self, x: torch.Tensor, ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Return tokens ``(B, H * W, C)`` and the grid ``(H, W)``.

        With ``ids`` ``(B, K)`` (row-major grid indices in ``[0, H * W)``), only those
        patches are projected and the tokens are ``(B, K, C)``, in the order of ``ids``.
        """
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the patch size {self.patch_size}; "
                "resize or pad the input"
            )
        # The stride equals the kernel, so the convolution is one matrix product over flattened
        # patches. As F.linear, forward and backward ran 3.7 times faster under bf16 autocast on an Intel Xeon.
        batch, channels, p = x.shape[0], x.shape[1], self.patch_size
        grid = (height // p, width // p)
        # Each patch's pixels in the order of the kernel's weights: (channel, row, column).
        patches = x.reshape(batch, channels, grid[0], p, grid[1], p).permute(0, 2, 4, 1, 3, 5)
        if ids is None:
            patches = patches.reshape(batch, grid[0] * grid[1], channels * p * p)
        else:
            check_patch_ids(ids, batch, grid)
            # Index the grid's rows and columns of the strided view, so only the K patches are copied.
            rows = torch.arange(batch, device=x.device)[:, None]
            patches = patches[rows, ids // grid[1], ids % grid[1]].reshape(batch, ids.shape[1], channels * p * p)
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)
        return F.linear(patches, weight, self.proj.bias), grid


def check_patch_ids(ids: torch.Tensor, batch: int, grid: tuple[int, int], distinct: bool = False) -> None:
    """Raise a ValueError unless ``ids`` is ``(batch, K)`` with values in ``[0, H * W)``.

    With ``distinct=True`` no row may repeat an id either. On a GPU and under
    ``torch.compile`` the values are checked on the device, without waiting for it.
    """
    num_patches = grid[0] * grid[1]
    if ids.dim() != 2 or ids.shape[0] != batch:
        raise ValueError(f"patch ids of shape {tuple(ids.shape)} do not match the batch: expected ({batch}, K)")
    if ids.numel() == 0:
        return
    ordered = ids.sort(dim=-1).values if distinct else None
    if ids.device.type == "cpu" and not torch.compiler.is_compiling():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= num_patches:
            raise ValueError(f"patch ids range from {low} to {high}, outside the {grid[0]}x{grid[1]} grid's "
                             f"[0, {num_patches}); pass row-major grid indices")
        if distinct:
            repeated = (ordered[:, 1:] == ordered[:, :-1]).any(dim=-1)
            if bool(repeated.any()):
                row = int(repeated.nonzero()[0, 0])
                raise ValueError(f"patch ids repeat an id in row {row} ({ids[row].tolist()}); each visible token "
                                 "needs its own patch id")
        return
    valid = ((ids >= 0) & (ids < num_patches)).all()
    if distinct:
        valid = valid & (ordered[:, 1:] != ordered[:, :-1]).all()
    torch._assert_async(valid, "patch ids outside the grid or repeated")


def _fx_symbolic_tracing() -> bool:
    """Return whether ``torch.fx.symbolic_trace`` is tracing (``is_fx_tracing`` logs a warning)."""
    trace = torch.fx._symbolic_trace
    return getattr(trace, "is_fx_symbolic_tracing", trace.is_fx_tracing)()


@cache
def cpu_info() -> dict[str, str]:
    """Return the first processor's fields of ``/proc/cpuinfo`` (``vendor_id``, ``cpu family``), or {}."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_vendor() -> str:
    """Return the CPU's ``vendor_id`` ('GenuineIntel', 'AuthenticAMD'), or ''."""
    return cpu_info().get("vendor_id", "")


def cpu_family() -> int | None:
    """Return the CPU's ``cpu family`` number (25 for AMD Zen 3 and Zen 4, 26 for Zen 5), or None."""
    family = cpu_info().get("cpu family", "")
    return int(family) if family.isdigit() else None


@cache
def cpu_bf16_products() -> bool:
    """Return whether PyTorch runs bfloat16 matrix products on this CPU with native kernels.

    PyTorch sends them to oneDNN on CPUs with AVX-512 (BW, VL, DQ), AVX-NE-CONVERT or AMX.
    Elsewhere they take a generic loop. On an AMD EPYC of family 23 (AVX2 only) a bf16
    product of two 2048 x 2048 matrices ran at 0.18 GFLOP/s, against 70 in float32.
    There bf16 autocast only slows training down.
    """
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return torch.backends.mkldnn.is_available() and check is not None and bool(check())


# The reason bf16 autocast is slow where cpu_bf16_products() is false, for warnings and reports.
NO_NATIVE_BF16 = ("this CPU has no native bf16 matrix products (PyTorch needs AVX-512, AVX-NE-CONVERT or AMX "
                  "for them), so bf16 autocast runs them in a generic loop, hundreds of times slower than float32")


LINEAR_KERNELS = ("linear", "onednn", "onednn_linear")


def default_linear_kernel() -> str:
    """Return the float32 CPU kernel that :class:`Linear` takes by default on this CPU.

    ``"onednn"`` on AMD CPUs of family 26 (Zen 5) or later, ``"onednn_linear"`` on family 25
    (Zen 3 and Zen 4) and ``"linear"`` elsewhere: on Intel CPUs, on older AMD CPUs and where
    the family is unknown (see :class:`Linear`).
    """
    if cpu_vendor() != "AuthenticAMD":
        return "linear"
    family = cpu_family()
    if family is None or family < 25:
        return "linear"
    return "onednn_linear" if family == 25 else "onednn"


class Linear(nn.Linear):
    """``nn.Linear`` that can run large float32 products on the CPU through oneDNN.

    On the CPU ``F.linear`` calls MKL's GEMM. PyTorch also reaches oneDNN's products, by
    two routes: a 1 x 1 convolution over a channels-last view of the input, and the
    linear (inner product) operator that ``torch.compile`` uses for CPU linear layers
    (``torch.ops.mkldnn._linear_pointwise``). ``kernel`` chooses, for float32 inputs on
    the CPU:

    - ``"linear"``: ``F.linear``, forward and backward through MKL.
    - ``"onednn"``: forward and backward as a oneDNN convolution.
    - ``"onednn_linear"``: the forward pass and the input gradient through oneDNN's
      linear operator. The weight gradient goes through that operator when the layer has
      more inputs than outputs (``_weight_gradient`` has the exact rule) and through MKL
      otherwise, and the bias gradient is a sum. A differentiated backward pass
      (``create_graph=True``) runs MKL's differentiable products.
    - ``None`` (default): :func:`default_linear_kernel` for this CPU.

    Measured on the MAE ViT-B layer shapes (docs/benchmarks.md): on an AMD EPYC of
    family 26 (Zen 5), forward and backward through the oneDNN convolution took about
    half of MKL's time. On an AMD EPYC of family 25 (Zen 4), timed alone, oneDNN's
    linear operator ran the forward products at 209 to 218 GFLOP/s, against 172 to 202
    through MKL and 188 to 215 through the convolution. It ran the input gradients at
    181 to 219 GFLOP/s, against 171 to 200 through MKL. For the weight gradients MKL was
    the fastest, except in layers with more inputs than outputs (``_weight_gradient``).
    On an Intel Xeon with AVX-512 and AMX, forward and backward through the oneDNN
    convolution took 1.1 to 1.6 times MKL's time. On an AMD EPYC of family 23 (Zen 1,
    AVX2 only) the MAE step took 8.4 s with the linear operator and 11.8 s with the
    convolution, against 7.6 s through MKL. oneDNN's input and weight gradients of the
    encoder's layers ran at 38 to 56 GFLOP/s there, against 63 to 71 through MKL.
    NOTE: ``"onednn_linear"`` was measured on family 25 only, and there on Zen 4
    (model 17) only. Family 26 keeps the convolution, and Intel CPUs keep MKL, because
    the linear operator was not timed on them.

    The view needs no copy of a contiguous input, and parameters, state-dict keys and
    initialization are those of ``nn.Linear``. ``F.linear`` always runs for products
    under ``ONEDNN_MIN_MACS`` multiply-adds, for other dtypes and devices, under autocast,
    with one torch thread (PyTorch then picks its slow reference convolution, not oneDNN),
    when ``torch.backends.mkldnn.enabled`` is false, under TorchScript or FX tracing, and
    under ``torch.compile``, which chooses its own kernels. PyTorch also sends a
    convolution with few input elements (up to about 20 000) to its reference kernel, so
    some products just above ``ONEDNN_MIN_MACS`` do not reach oneDNN through the
    convolution. Inside :func:`checkpointed`, and in a PyTorch build without the private
    linear operator, ``"onednn_linear"`` layers take ``"onednn"``.
    """

    kernel: str | None = None
    ONEDNN_MIN_MACS = 1 << 24  # smaller products ran slower through the convolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            kernel = self._cpu_kernel(x)
            if kernel == "onednn":
                return _onednn_conv(x, self.weight, self.bias)
            if kernel == "onednn_linear":
                rows = x.numel() // self.in_features
                out = _OneDNNLinear.apply(x.reshape(rows, self.in_features), self.weight, self.bias)
                return out.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)

    @torch.jit.unused
    def _cpu_kernel(self, x: torch.Tensor) -> str:
        if torch.compiler.is_compiling():
            # The compiler picks the products' kernels itself. This comes first: tracing
            # the CPU lookup (a file read) would break the graph at every layer.
            return "linear"
        kernel = default_linear_kernel() if self.kernel is None else self.kernel
        if kernel not in LINEAR_KERNELS:
            raise ValueError(f"invalid Linear.kernel {kernel!r}: expected None or one of {LINEAR_KERNELS}")
        if kernel == "linear":
            return "linear"
        if kernel == "onednn_linear" and not _onednn_linear_available():
            kernel = "onednn"
        if kernel == "onednn_linear" and _checkpoint_state.active:
            # With early stop (torch's default), checkpointing recomputes a block's forward
            # pass only until its last saved tensor is stored again. The convolution stores
            # its inputs before it computes, so the recomputation stops before the block's
            # last product. The custom function stores them after its forward pass, which
            # the recomputation would then run.
            kernel = "onednn"
        onednn = (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
                  and torch.get_num_threads() > 1 and not _fx_symbolic_tracing()
                  and x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                  and self.weight.device.type == "cpu" and x.dim() >= 2 and x.shape[-1] == self.in_features
                  and not torch.is_autocast_enabled("cpu")
                  and x.numel() > 0 and x.numel() * self.out_features >= self.ONEDNN_MIN_MACS)
        return kernel if onednn else "linear"


def _onednn_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Compute ``F.linear(x, weight, bias)`` as a oneDNN 1 x 1 convolution."""
    channels = x.shape[-1]
    rows = x.numel() // channels
    # (rows, C) row-major is the memory of an NHWC image (1, rows, 1, C).
    image = x.reshape(1, rows, 1, channels).permute(0, 3, 1, 2)
    out = F.conv2d(image, weight[:, :, None, None], bias)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])


@cache
def _onednn_linear_available() -> bool:
    """Return whether this PyTorch build has the oneDNN linear operator (a private one, used by ``torch.compile``)."""
    return hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Compute ``F.linear(x, weight, bias)`` for a 2-D float32 ``x`` with oneDNN's linear operator."""
    if x.dtype != torch.float32:  # float64, in gradient checks: the operator rejects it
        return F.linear(x, weight, bias)
    if not (weight.is_contiguous() or weight.t().is_contiguous()):
        # oneDNN reads any strided weight correctly, but only a contiguous or transposed one
        # reaches its fast kernels. A sliced or expanded one took its reference kernel, about
        # a thousand times slower than MKL.
        return F.linear(x, weight, bias)
    # The operator rejects an input with strided rows and reads a strided bias as if it were
    # contiguous.
    bias = None if bias is None else bias.contiguous()
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


def _weight_gradient(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Return ``grad.t() @ x``, the weight gradient of a linear layer with 2-D input ``x``.

    oneDNN's linear operator on the transposed gradient computes it for a narrowing layer
    (more inputs than outputs, as an MLP's second layer) with at least 256 inputs and 16
    outputs, on float32 inputs with at least one row. MKL computes it otherwise, and in a
    differentiated backward pass, where the product has to stay differentiable.

    Timed on an AMD EPYC of family 25 (median of 40 alternating calls, four timings), the
    weight gradient of the MAE encoder's second MLP layer (400 rows, 3072 to 768) ran at
    199 to 204 GFLOP/s through the operator. Through MKL it ran at 150 to 182. For the
    decoder's (1576 rows, 2048 to 512) the timings ranged from 200 against 185 to 184
    against 189. Other narrowing shapes with 2048 or 384 inputs and 16 to 256 outputs
    were 1.2 to 2.6 times as fast through the operator. It was slower for 32 inputs (65536
    rows, 32 to 16) and for a single output, and MKL was as fast or faster for layers that
    do not narrow.
    """
    if (x.shape[1] > grad.shape[1] and x.shape[1] >= 256 and grad.shape[1] >= 16 and grad.shape[0] > 0
            and x.dtype == torch.float32 and not torch.is_grad_enabled()):
        return _onednn_linear(grad.t(), x.t(), None)
    return grad.t().mm(x)


class _OneDNNLinear(torch.autograd.Function):
    """Linear layer on ``(rows, C)``: forward pass and input gradient through oneDNN's linear
    operator, weight gradient as ``_weight_gradient`` chooses, bias gradient as a sum.

    oneDNN's operator has no derivative of its own. When the backward pass is itself
    differentiated (``create_graph=True``, ``torch.func.grad``), it runs as differentiable
    matrix products, so double backward works. ``jvp`` serves forward-mode AD, and
    ``vmap`` gets a generated rule. Under ``vmap`` PyTorch runs the operator once per
    sample, with a warning that it has no batching rule: correct, but slow.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias = inputs
        needs_x, needs_weight, _ = ctx.needs_input_grad
        # Keep only what the gradients need, as F.linear's backward does: the input for the
        # weight gradient, the weight for the input gradient. The unwrapped inputs inside
        # vmap's generated rule do not require grad, so ``requires_grad`` cannot decide this.
        ctx.save_for_backward(x if needs_weight else None, weight if needs_x else None)
        ctx.save_for_forward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        grad_x = grad_weight = grad_bias = None
        if needs_x:
            grad_x = grad.mm(weight) if torch.is_grad_enabled() else _onednn_linear(grad, weight.t(), None)
        if needs_weight:
            grad_weight = _weight_gradient(grad, x)
        if needs_bias and ctx.has_bias:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias

    @staticmethod
    def jvp(ctx, x_t: torch.Tensor | None, weight_t: torch.Tensor | None, bias_t: torch.Tensor | None):
        x, weight = ctx.saved_tensors
        out_t = None
        for term in (None if x_t is None else F.linear(x_t, weight),
                     None if weight_t is None else F.linear(x, weight_t),
                     bias_t):
            if term is not None:
                out_t = term if out_t is None else out_t + term
        return out_t


class Mlp(nn.Module):
    """Two-layer feed-forward block."""

    def __init__(self, dim: int, hidden_dim: int, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_hw: tuple[int, int],
    k_hw: tuple[int, int],
) -> torch.Tensor:
    """Compute the decomposed relative-position bias of MViTv2/ViTDet.

    Args:
        q: queries ``(B, H_q * W_q, C)`` (one head per batch entry).
        rel_pos_h, rel_pos_w: tables along height and width; resampled when their
            length does not match ``2 * max(q, k) - 1`` of that axis.
        q_hw, k_hw: query and key grids.

    Returns:
        Bias ``(B, H_q * W_q, H_k * W_k)`` to add to the attention logits.
    """
    (qh, qw), (kh, kw) = q_hw, k_hw
    table_h = _axis_table(rel_pos_h, qh, kh)
    table_w = _axis_table(rel_pos_w, qw, kw)
    batch, _, dim = q.shape
    r_q = q.reshape(batch, qh, qw, dim)
    bias_h = torch.einsum("bhwc,hkc->bhwk", r_q, table_h)  # (B, qh, qw, kh)
    bias_w = torch.einsum("bhwc,wkc->bhwk", r_q, table_w)  # (B, qh, qw, kw)
    bias = bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
    return bias.reshape(batch, qh * qw, kh * kw)


def _axis_table(rel_pos: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """Return the per-pair table ``(q_size, k_size, C)`` for one axis."""
    length = 2 * max(q_size, k_size) - 1
    rel_pos = resize_rel_pos(rel_pos, length)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[offsets.long()]


CPU_AUTOCAST_KERNELS = ("flash_fp32", "flash", "compiled")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run attention with ``F.scaled_dot_product_attention``, or on the CPU with the kernel
    that the sequence, the dtype and ``Attention.cpu_autocast_kernel`` select.

    PyTorch's CPU flash-attention kernel ran 1.4 to 3 times slower on bfloat16 inputs than
    on float32 ones for the MAE encoder and decoder shapes on an AVX-512 CPU
    (docs/benchmarks.md). Under CPU autocast with 16-bit inputs the kernel setting applies:

    - ``"flash_fp32"`` (default): the flash kernel on float32 copies of the inputs, with the
      output cast back to the input dtype.
    - ``"flash"``: the flash kernel on the 16-bit inputs.
    - ``"compiled"``: for bfloat16 inputs without a mask, the product of queries and keys,
      a float32 softmax and the product with the values, compiled by ``torch.compile``
      (see :func:`compiled_attention`). Other inputs take ``"flash_fp32"``.

    On the CPU without autocast, float32 attention without a mask over at most
    ``Attention.cpu_explicit_max_keys`` keys runs as two batched products and a softmax
    (:func:`explicit_attention`): the flash kernel was slower on such short sequences.
    """
    if torch.jit.is_scripting() or _fx_symbolic_tracing() or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    if (q.dtype == torch.float32 and attn_mask is None and k.shape[-2] <= Attention.cpu_explicit_max_keys
            and q.shape[-1] > 0 and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()):
        return explicit_attention(q, k, v)
    if q.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled("cpu"):
        kernel = Attention.cpu_autocast_kernel
        if kernel not in CPU_AUTOCAST_KERNELS:
            raise ValueError(f"invalid Attention.cpu_autocast_kernel {kernel!r}: expected one of {CPU_AUTOCAST_KERNELS}")
        if (kernel == "compiled" and attn_mask is None and q.dtype == torch.bfloat16 and q.dim() == 4
                and q.shape[0] == k.shape[0] == v.shape[0]):
            if torch.compiler.is_compiling():
                return explicit_attention(q, k, v)  # part of a graph that torch.compile is building
            if compiled_attention_works():
                return compiled_attention(q, k, v)
        if kernel != "flash":
            return flash_fp32_attention(q, k, v, attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Return ``softmax(q k^T / sqrt(d)) v`` for ``(B, heads, L, d)`` inputs, written out.

    The softmax runs in float32 and its weights enter the last product in the input
    dtype. On an AMD EPYC of family 25 with 2 threads, float32 forward and backward for
    the ViT-B encoder's 50 tokens per view (8 images, 12 heads of 64) took 3.4 ms against
    4.3 ms for the CPU flash kernel. For 100 tokens they took 9.7 against 12.4 ms. For
    197 tokens the flash kernel was faster. The attention weights stay in memory for the
    backward pass, ``B * heads * L * L`` values, where the flash kernel recomputes them.
    """
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)
    return torch.matmul(scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype), v)


_compiled_explicit_attention = None
_compiled_attention_status: bool | None = None
_compiled_layouts: set[tuple] = set()
_compiled_lock = threading.Lock()
_trial_lock = threading.Lock()

# Score bytes per call of the compiled attention, so that they stay in the last-level
# cache (32 MiB on the benchmark machine). The four-view decoder's attention
# (32 x 16 heads x 197 x 197) took about 40 ms in chunks of 3 to 8 images and 70 ms in one call.
COMPILED_SCORE_BYTES = 24 << 20
# torch.compile specializes the attention to each input layout: shapes, strides, grad and
# inference modes. After torch._dynamo.config.recompile_limit layouts (8 in torch 2.14)
# dynamo runs the function uncompiled, which is slower than the flash kernel. So layouts
# beyond this count, the trial's included, take the float32 flash kernel.
COMPILED_LAYOUTS_MAX = 7


def compiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attend with the compiled explicit attention, in batch chunks whose float32 scores
    take at most ``COMPILED_SCORE_BYTES``.

    Inputs are ``(B, heads, L, head_dim)``. On an AVX-512 CPU with bfloat16 inputs,
    forward and backward took about half the time of the float32 flash kernel for the MAE
    encoder and decoder shapes (docs/benchmarks.md). Queries, keys and the attention
    weights enter their products in the input dtype, as in an uncompiled attention under
    autocast, so the result is less precise than the float32 flash kernel's.

    The graph is compiled for fixed shapes, once per input layout. After
    ``COMPILED_LAYOUTS_MAX`` layouts, new ones run :func:`flash_fp32_attention`.
    """
    global _compiled_explicit_attention
    if _compiled_explicit_attention is None:
        _compiled_explicit_attention = torch.compile(explicit_attention, dynamic=False)
    batch, heads, length, _ = q.shape
    rows = _chunk_rows(batch, max(1, COMPILED_SCORE_BYTES // max(1, heads * length * k.shape[-2] * 4)))
    chunks = list(zip(q.split(rows), k.split(rows), v.split(rows)))
    # Dynamo also guards on the grad mode and on the dispatch keys that inference mode drops.
    state = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
    layouts = {(tuple((t.shape, t.stride(), t.requires_grad, t.is_inference()) for t in chunk), state)
               for chunk in chunks}
    with _compiled_lock:
        if len(_compiled_layouts | layouts) > COMPILED_LAYOUTS_MAX:
            return flash_fp32_attention(q, k, v)
        _compiled_layouts.update(layouts)
    if len(chunks) == 1:
        return _compiled_explicit_attention(q, k, v)
    return torch.cat([_compiled_explicit_attention(*chunk) for chunk in chunks])


def _chunk_rows(batch: int, max_rows: int) -> int:
    """Return the rows per chunk: all of ``batch`` if it fits in ``max_rows``, else the
    largest divisor of ``batch`` up to ``max_rows`` (equal chunks need one compiled shape),
    or ``max_rows`` when that divisor is under half of it."""
    if batch <= max_rows:
        return batch
    divisor = max(d for d in range(1, max_rows + 1) if batch % d == 0)
    return divisor if 2 * divisor >= max_rows else max_rows


def flash_fp32_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run the flash kernel on float32 copies of 16-bit inputs, with autocast off, and cast
    the output back to the input dtype."""
    # A boolean mask selects keys, and any other mask is added to the scores.
    mask = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.float()
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    return out.to(q.dtype)


def compiled_attention_works() -> bool:
    """Return whether :func:`compiled_attention` compiles and runs, trying it once per process.

    ``torch.compile`` needs a C++ compiler on the CPU. When the trial fails, a warning
    names the error and ``attend`` takes the ``"flash_fp32"`` kernel instead. The trial
    runs forward and backward whatever the caller's grad mode, inference mode and
    saved-tensor hooks (activation checkpointing), and draws its inputs from its own
    generator, so the global random stream stays as it was.
    """
    global _compiled_attention_status
    if _compiled_attention_status is not None:
        return _compiled_attention_status
    with _trial_lock:  # one trial and at most one warning, also with several threads
        if _compiled_attention_status is None:
            _compiled_attention_status = _try_compiled_attention()
    return _compiled_attention_status


def _try_compiled_attention() -> bool:
    try:
        generator = torch.Generator().manual_seed(0)
        with (torch.inference_mode(False), torch.enable_grad(),
              torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t),
              torch.autocast("cpu", dtype=torch.bfloat16)):
            # Made here, so that under inference mode they are still normal tensors.
            q, k, v = (torch.randn(2, 2, 8, 8, generator=generator).to(torch.bfloat16).requires_grad_()
                       for _ in range(3))
            out = compiled_attention(q, k, v)
            out.float().sum().backward()
        return True
    except Exception as error:  # torch.compile raises many error types
        message = str(error).splitlines()[0] if str(error) else ""
        warnings.warn(f"Attention.cpu_autocast_kernel='compiled' is set, but the compiled attention failed "
                      f"its trial ({type(error).__name__}: {message}); attention runs the float32 flash "
                      "kernel instead. On the CPU torch.compile needs a working C++ compiler", stacklevel=3)
        return False


class Attention(nn.Module):
    """Multi-head self-attention on ``scaled_dot_product_attention`` (see :func:`attend`).

    With ``rel_pos_size`` set, the block holds decomposed relative-position tables
    ``rel_pos_h`` and ``rel_pos_w`` of length ``2 * size - 1`` per axis (zero init).
    """

    # The kernel of ``attend`` on the CPU under 16-bit autocast: one of CPU_AUTOCAST_KERNELS.
    # tools/train.py --amp selects "compiled" on a machine without a GPU.
    cpu_autocast_kernel: str = "flash_fp32"
    # Float32 attention on the CPU over at most this many keys runs explicit_attention; 0 turns it off.
    # NOTE: the limit was timed on an AMD EPYC of family 25 only, not on Intel or newer AMD CPUs.
    cpu_explicit_max_keys: int = 128

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        rel_pos_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.use_rel_pos = rel_pos_size is not None
        if self.use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size[1] - 1, self.head_dim))

    def forward(self, x: torch.Tensor, grid_hw: tuple[int, int] | None = None,
                query_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over ``x`` ``(B, L, C)``. ``grid_hw`` is required with relative positions.

        With ``query_rows`` ``(B, M)``, only those tokens query, all tokens of ``x`` are keys
        and values, and the output is ``(B, M, C)``.
        """
        return self.attend_qkv(self.qkv(x), grid_hw, query_rows)

    def attend_qkv(self, qkv: torch.Tensor, grid_hw: tuple[int, int] | None = None,
                   query_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from the qkv projection ``(B, L, 3 C)`` of the tokens, as :meth:`forward` does."""
        batch, length, dim = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        qkv = qkv.reshape(batch, length, 3, self.num_heads, self.head_dim)
        # Split along dim 2, so the backward pass stacks the three gradients straight into the
        # (B, L, 3, heads, head_dim) layout without a copy. Each is then (B, heads, L, head_dim).
        q, k, v = qkv.unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if query_rows is not None:
            if self.use_rel_pos:
                raise ValueError("query_rows is not supported with relative position attention")
            index = query_rows[:, None, :, None].expand(-1, self.num_heads, -1, self.head_dim)
            q = q.gather(2, index)
        bias = None
        if self.use_rel_pos:
            if grid_hw is None:
                raise ValueError("relative position attention needs the token grid (H, W)")
            # The bias uses unscaled queries, as in ViTDet, so its trained tables load unchanged.
            flat_q = q.reshape(batch * self.num_heads, length, self.head_dim)
            bias = rel_pos_bias(flat_q, self.rel_pos_h, self.rel_pos_w, grid_hw, grid_hw)
            bias = bias.reshape(batch, self.num_heads, length, length).to(q.dtype)
        x = attend(q, k, v, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(batch, q.shape[2], dim))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block on a token sequence ``(B, L, C)``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        rel_pos_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, rel_pos_size=rel_pos_size)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid_hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_scattered(self, base: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Return ``forward(x)`` for ``x``: ``base`` ``(1, L, C)`` in every sample, with
        ``values`` ``(B, M, C)`` written at ``rows`` ``(B, M)``.

        The norm and qkv projection run once for the ``L`` rows of ``base`` and once per
        sample for the ``M`` written rows, instead of once per sample for all ``L`` rows.
        """
        x = scatter_rows(base, rows, values)
        qkv = scatter_rows(self.attn.qkv(self.norm1(base)), rows, self.attn.qkv(self.norm1(values)))
        x = x + self.drop_path(self.attn.attend_qkv(qkv))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_rows(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Return the block's output ``(B, M, C)`` for the tokens at ``rows`` ``(B, M)`` only.

        Every token of ``x`` is still a key and value, so the result equals
        ``forward(x)`` gathered at ``rows``, for about ``M / L`` of the work after the
        qkv projection.
        """
        attended = self.attn(self.norm1(x), query_rows=rows)
        x = x.gather(1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1])) + self.drop_path(attended)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def scatter_rows(base: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Return ``base`` ``(1, L, C)`` repeated for each sample, with ``values`` ``(B, M, C)`` written at ``rows`` ``(B, M)``."""
    return base.expand(values.shape[0], -1, -1).scatter(1, rows.unsqueeze(-1).expand(-1, -1, base.shape[-1]), values)


class _CheckpointState(threading.local):
    """Per-thread flag that tells whether the current call runs inside :func:`checkpointed`."""

    active = False


_checkpoint_state = _CheckpointState()


def _run_checkpointed(function, *args, **kwargs):
    previous = _checkpoint_state.active
    _checkpoint_state.active = True
    try:
        return function(*args, **kwargs)
    finally:
        _checkpoint_state.active = previous


def checkpointed(function, *args, **kwargs):
    """Return ``function(*args, **kwargs)`` under non-reentrant activation checkpointing.

    Inside, :class:`Linear` layers take ``"onednn"`` where their kernel would be
    ``"onednn_linear"``, so that checkpointing's early stop ends the recomputation in the
    backward pass before each block's last product. Under ``torch.compile`` the function
    is checkpointed as it is, since dynamo falls back to eager on the thread-local switch.
    Keyword arguments go to ``function``, except those that ``checkpoint`` itself takes.
    """
    if torch.compiler.is_compiling():
        return checkpoint(function, *args, use_reentrant=False, **kwargs)
    return checkpoint(partial(_run_checkpointed, function), *args, use_reentrant=False, **kwargs)


def run_blocks(
    blocks: nn.ModuleList, x: torch.Tensor, with_cp: bool = False, **kwargs
) -> torch.Tensor:
    """Apply ``blocks`` in order, optionally with activation checkpointing."""
    for block in blocks:
        if with_cp and x.requires_grad:
            x = checkpointed(block, x, **kwargs)
        else:
            x = block(x, **kwargs)
    return x


def vit_layer_depth(param_name: str, depth: int, prefix: str = "") -> tuple[int, int]:
    """Return ``(layer_id, num_layers)`` of a ViT parameter for layer-wise lr decay.

    ``num_layers`` is ``depth + 2``. Inside the backbone (names starting with ``prefix``)
    block N has id N + 1, a final norm has the top id ``depth + 1``, and everything else
    (patch and position embeddings, cls and register tokens) has id 0. Names outside the
    backbone (neck, heads) get the top id.
    """
    num_layers = depth + 2
    if not param_name.startswith(prefix):
        return num_layers - 1, num_layers
    name = param_name[len(prefix):]
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1, num_layers
    if name.startswith(("norm.", "fc_norm.")):
        return num_layers - 1, num_layers
    return 0, num_layers


def init_blocks_trunc_normal(blocks: nn.Module) -> None:
    """Initialize linears with truncated normal (std 0.02) and zero bias, norms to identity."""
    for module in blocks.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
