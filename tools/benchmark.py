"""Benchmark mimae's pretraining steps and backbones against timm, mmpretrain and the GEMM ceiling.

All timed figures of one precision come from one process and one set of rounds. Every
round runs one step of each workload in turn (interleaved), so a background load slows
all of them alike. Each figure is the median over the rounds after the warm-up rounds,
and ratios between workloads are taken within one run.

Measured per workload:

* seconds per step and images per second. A training step is forward, backward and
  ``AdamW.step``, with the fused kernel for mimae and torch's default one for
  mmpretrain, as their recipes build it. A backbone or encoder step is forward and
  backward with a fixed random gradient on every output.
* FLOPs per step, counted once with ``torch.utils.flop_counter.FlopCounterMode``
  (matrix products, convolutions, oneDNN's linear operator and attention), and the FLOP/s they give at the
  median time.
* peak tensor memory during one step. On CUDA: ``torch.cuda.max_memory_allocated``.
  On the CPU: the maximum of the total of PyTorch's memory timeline
  (``torch.profiler`` with ``profile_memory=True``, ``export_memory_timeline``), which
  counts every tensor the step touches, parameters and optimizer state included.

Examples::

    python tools/benchmark.py --out work_dirs/benchmark/cpu.json
    python tools/benchmark.py --quick
    python tools/benchmark.py --device cuda --batch-size 128 --precision fp32 bf16
"""
from __future__ import annotations

import argparse
import json
import math
import os
import os.path as osp
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile, schedule
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

# Per-GPU input sizes of the downstream recipes (configs/coco and configs/ade20k).
DET_RECIPE = dict(size=1024, batch=8)
SEG_RECIPE = dict(size=512, batch=2)
PRETRAIN_CONFIGS = {
    "MAE": "configs/pretrain/mae_vit-base-p16_8xb512-amp-coslr-1600e_in1k_demo.py",
    "MI-MAE": "configs/pretrain/mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k_demo.py",
}


@dataclass
class Arch:
    """Model sizes shared by every workload of one run."""

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    window_size: int = 14
    global_blocks: tuple[int, ...] = (2, 5, 8, 11)
    seg_out_indices: tuple[int, ...] = (3, 5, 7, 11)
    head_hidden: int = 2048
    head_out: int = 256
    club_hidden: int = 512


QUICK_ARCH = Arch(img_size=64, embed_dim=192, depth=4, num_heads=3, decoder_dim=128, decoder_depth=2,
                  decoder_heads=4, window_size=4, global_blocks=(1, 3), seg_out_indices=(0, 1, 2, 3),
                  head_hidden=256, head_out=64, club_hidden=128)


@dataclass
class Workload:
    """One timed step: ``step()`` runs it, ``images`` is the number of images it processes."""

    key: str
    label: str
    images: int
    step: Callable[[], None]
    times: list[float] = field(default_factory=list)
    page_faults: list[int] = field(default_factory=list)  # minor page faults of each timed step
    flops: int = 0
    flops_by_op: dict[str, int] = field(default_factory=dict)
    peak_bytes: int | None = None
    parts: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# FLOP counting
# ---------------------------------------------------------------------------------------------

def register_cpu_attention_flops() -> None:
    """Teach ``FlopCounterMode`` the CPU flash-attention kernels.

    torch 2.14's counter has formulas for the CUDA attention kernels only. On the CPU,
    ``scaled_dot_product_attention`` runs ``_scaled_dot_product_flash_attention_for_cpu``,
    which it would count as zero FLOPs. The formulas registered here are torch's own.
    """
    aten = torch.ops.aten
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None and forward not in flop_counter.flop_registry:
        @flop_counter.register_flop_formula(forward)
        def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    if backward is not None and backward not in flop_counter.flop_registry:
        @flop_counter.register_flop_formula(backward)
        def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def register_onednn_linear_flops() -> None:
    """Teach ``FlopCounterMode`` oneDNN's linear operator, which mimae's ``Linear`` runs on some CPUs.

    torch 2.14's counter has no formula for ``mkldnn::_linear_pointwise`` and would count
    it as zero FLOPs. A product of ``rows x in`` with ``out x in`` counts ``2 rows in out``.
    """
    packet = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
    if packet is None or packet in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(packet)
    def _linear(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        rows = math.prod(x_shape[:-1])
        return 2 * rows * weight_shape[0] * weight_shape[1]


def count_flops(workload: Workload) -> None:
    """Run one step under ``FlopCounterMode`` and store the total and the per-op counts."""
    with FlopCounterMode(display=False) as counter:
        workload.step()
    workload.flops = counter.get_total_flops()
    workload.flops_by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}


# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------

def autocast_context(device: torch.device, precision: str):
    """Return the autocast context of ``precision``: bf16 autocast, or a disabled one for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def make_adamw(model: nn.Module, fused: bool) -> torch.optim.Optimizer:
    """Return AdamW with the MAE recipe's settings: torch's default implementation, or the fused kernel."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=fused or None)


def training_step(model: nn.Module, loss_fn: Callable[[], dict], device: torch.device, precision: str,
                  fused_adamw: bool):
    """Return a closure that runs forward, backward and one AdamW step of ``model``.

    The loss is the sum of every entry whose key contains ``loss``, the rule of
    MMEngine's ``BaseModel.parse_losses``.
    """
    optimizer = make_adamw(model, fused_adamw)

    def step() -> None:
        with autocast_context(device, precision):
            losses = loss_fn()
        total = sum(value for key, value in losses.items() if "loss" in key)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def backward_step(model: nn.Module, forward: Callable[[], tuple[torch.Tensor, ...]], device: torch.device,
                  precision: str):
    """Return a closure that runs ``forward`` and back-propagates a fixed random gradient into every output."""
    with torch.no_grad(), autocast_context(device, precision):
        shapes = [(out.shape, out.dtype) for out in forward()]
    generator = torch.Generator(device=device).manual_seed(1)
    grads = [torch.randn(shape, generator=generator, device=device).to(dtype) for shape, dtype in shapes]

    def step() -> None:
        with autocast_context(device, precision):
            outs = forward()
        torch.autograd.backward(outs, grads)
        model.zero_grad(set_to_none=True)

    return step


def build_mimae_model(kind: str, arch: Arch, views: int, device) -> tuple[nn.Module, str]:
    """Build an MAE (``kind='mae'``), N-mask control (``'control'``) or MI-MAE (``'mimae'``) model and its label."""
    from mimae.models import MAE, MIMAE

    torch.manual_seed(0)
    encoder = dict(img_size=arch.img_size, patch_size=arch.patch_size, embed_dim=arch.embed_dim,
                   depth=arch.depth, num_heads=arch.num_heads)
    decoder = dict(embed_dim=arch.decoder_dim, depth=arch.decoder_depth, num_heads=arch.decoder_heads)
    if kind == "mae":
        model = MAE(encoder=encoder, decoder=decoder, mask_ratio=0.75, num_views=1)
        label = "mimae MAE"
    elif kind == "control":
        model = MIMAE(encoder=encoder, decoder=decoder, mask_ratio=1 - 1 / views, num_views=views,
                      mi_max=None, mi_min=None)
        label = f"mimae control (MIMAE, N={views}, no MI terms)"
    else:
        model = MIMAE(encoder=encoder, decoder=decoder, mask_ratio=1 - 1 / views, num_views=views,
                      mi_max=dict(type="InfoNCE", hidden_dim=arch.head_hidden, proj_dim=arch.head_out),
                      mi_min=dict(type="CLUB", hidden_dim=arch.club_hidden))
        label = f"mimae MI-MAE (N={views})"
    return model.to(device).train(), label


def build_mimae_pretrain(kind: str, arch: Arch, batch: int, views: int, device, precision) -> Workload:
    """Build the training step of an MAE, N-mask control or MI-MAE model (see :func:`build_mimae_model`).

    The optimizer is the fused AdamW kernel, as mimae's recipes build it. The workload keeps
    its model, images and fused step as ``parts`` for :func:`mae_variant`.
    """
    model, label = build_mimae_model(kind, arch, views, device)
    images = torch.randn(batch, 3, arch.img_size, arch.img_size, device=device)
    step = training_step(model, lambda: model.loss(images), device, precision, fused_adamw=True)
    workload = Workload(kind, label, batch, step)
    workload.parts = dict(model=model, images=images, precision=precision, device=device)
    return workload


LINEAR_KERNEL_LABELS = {
    "linear": "through F.linear (MKL)",
    "onednn": "as oneDNN 1x1 convolutions",
    "onednn_linear": "through oneDNN's linear operator, weight gradients through MKL unless a layer narrows",
}


def other_linear_kernels() -> list[str]:
    """Return the ``Linear.kernel`` choices other than this CPU's default."""
    from mimae.models.layers import LINEAR_KERNELS, default_linear_kernel

    return [kernel for kernel in LINEAR_KERNELS if kernel != default_linear_kernel()]


def mae_variant(base: Workload, variant: str) -> Workload:
    """Return a variant of the MAE step ``base`` that shares its model and images.

    Variants:

    - ``default_adamw``: torch's default AdamW kernel, with its own optimizer state.
    - ``linear_<kernel>``: every large float32 ``mimae`` linear layer on that
      ``Linear.kernel`` (``linear``, ``onednn`` or ``onednn_linear``) instead of this
      CPU's default.
    - ``checkpointed``: activation checkpointing in every encoder and decoder block.
    - ``flash_fp32_attention``, ``flash_attention``: that ``Attention.cpu_autocast_kernel``
      instead of the run's (``--cpu-attention``).

    Sharing the model keeps one copy of the ViT-B parameters and AdamW state. With a copy
    for each variant, the 4-view steps took up to 1.5 times as long in some runs on a 24 GB machine.
    """
    model, images = base.parts["model"], base.parts["images"]
    key, label, step = f"{base.key}_{variant}", base.label, base.step
    if variant == "default_adamw":
        step = training_step(model, lambda: model.loss(images), base.parts["device"], base.parts["precision"],
                             fused_adamw=False)
        label += ", default AdamW"
    elif variant.startswith("linear_"):
        kernel = variant.removeprefix("linear_")
        step = with_class_setting(step, "Linear", "kernel", kernel)
        label += f", linear layers {LINEAR_KERNEL_LABELS[kernel]}"
    elif variant == "checkpointed":
        step = with_module_setting(step, [model.encoder, model.decoder], "with_cp", True)
        label += ", activation checkpointing"
    else:
        kernel = variant.removesuffix("_attention")
        step = with_class_setting(step, "Attention", "cpu_autocast_kernel", kernel)
        label += f", {ATTENTION_LABELS[kernel]}"
    return Workload(key, label, base.images, step)


def with_module_setting(step: Callable[[], None], modules: list[nn.Module], attribute: str,
                        value) -> Callable[[], None]:
    """Return ``step`` run with ``attribute`` of each of ``modules`` set to ``value``."""
    def run() -> None:
        saved = [getattr(module, attribute) for module in modules]
        for module in modules:
            setattr(module, attribute, value)
        try:
            step()
        finally:
            for module, old in zip(modules, saved):
                setattr(module, attribute, old)

    return run


ATTENTION_LABELS = dict(compiled="compiled attention", flash_fp32="float32 flash attention",
                        flash="bf16 flash attention")


def with_class_setting(step: Callable[[], None], class_name: str, attribute: str, value) -> Callable[[], None]:
    """Return ``step`` run with ``mimae.models.layers.<class_name>.<attribute>`` set to ``value``."""
    from mimae.models import layers

    owner = getattr(layers, class_name)

    def run() -> None:
        saved = getattr(owner, attribute)
        setattr(owner, attribute, value)
        try:
            step()
        finally:
            setattr(owner, attribute, saved)

    return run


def mmpretrain_available() -> str | None:
    """Return mmpretrain's version when it imports with the installed mmcv and torch, else None."""
    try:
        import mmpretrain
    except Exception as err:  # noqa: BLE001  (any import failure means the comparison is skipped)
        print(f"mmpretrain is not usable, its comparison is skipped: {type(err).__name__}: {err}")
        return None
    return mmpretrain.__version__


def build_mmpretrain_mae(arch: Arch, batch: int, device, precision) -> Workload:
    """Build mmpretrain 1.2.0's MAE ViT-B/16 (its ``_base_/models/mae_vit-base-p16.py``) as a training step."""
    import mmpretrain
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(osp.join(osp.dirname(mmpretrain.__file__), ".mim/configs/_base_/models/mae_vit-base-p16.py"))
    model_cfg = cfg.model
    model_cfg.pop("init_cfg", None)
    if arch != Arch():
        model_cfg.backbone.arch = dict(embed_dims=arch.embed_dim, num_layers=arch.depth, num_heads=arch.num_heads,
                                       feedforward_channels=4 * arch.embed_dim)
        model_cfg.backbone.img_size = arch.img_size
        model_cfg.neck.update(num_patches=(arch.img_size // arch.patch_size) ** 2, embed_dim=arch.embed_dim,
                              decoder_embed_dim=arch.decoder_dim, decoder_depth=arch.decoder_depth,
                              decoder_num_heads=arch.decoder_heads)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope("mmpretrain"):
        model = MODELS.build(model_cfg)
    model = model.to(device).train()
    images = torch.randn(batch, 3, arch.img_size, arch.img_size, device=device)
    # mmpretrain's MAE recipe builds torch.optim.AdamW with its default kernel.
    step = training_step(model, lambda: model.loss(images, None), device, precision, fused_adamw=False)
    return Workload("mmpretrain_mae", f"mmpretrain {mmpretrain.__version__} MAE", batch, step)


def build_encoder(kind: str, arch: Arch, batch: int, device, precision) -> Workload:
    """Build the forward and backward pass of a ViT encoder on all patches: mimae's or timm's."""
    torch.manual_seed(0)
    if kind == "timm":
        import timm

        overrides = {} if arch == Arch() else dict(img_size=arch.img_size, embed_dim=arch.embed_dim,
                                                  depth=arch.depth, num_heads=arch.num_heads)
        model = timm.create_model("vit_base_patch16_224", pretrained=False, **overrides)
        forward_features = model.forward_features
        label = f"timm {timm.__version__} vit_base_patch16_224 features"
    else:
        from mimae.models import VisionTransformer

        model = VisionTransformer(img_size=arch.img_size, patch_size=arch.patch_size, embed_dim=arch.embed_dim,
                                  depth=arch.depth, num_heads=arch.num_heads)
        forward_features = model.forward
        label = "mimae encoder (VisionTransformer)"
    model = model.to(device).train()
    images = torch.randn(batch, 3, arch.img_size, arch.img_size, device=device)
    step = backward_step(model, lambda: (forward_features(images),), device, precision)
    tokens = (arch.img_size // arch.patch_size) ** 2
    return Workload(f"{kind}_encoder", f"{label}, {tokens} tokens", batch, step)


def build_detection_backbone(arch: Arch, size: int, batch: int, device, precision) -> Workload:
    """Build the forward and backward pass of ViTDet + SimpleFPN with the COCO recipe's settings."""
    from mimae.downstream import SimpleFPN, ViTDet

    torch.manual_seed(0)
    backbone = ViTDet(img_size=size, patch_size=arch.patch_size, embed_dim=arch.embed_dim, depth=arch.depth,
                      num_heads=arch.num_heads, drop_path_rate=0.1, window_size=arch.window_size,
                      global_block_indexes=arch.global_blocks, pretrain_img_size=arch.img_size)
    backbone.init_weights()
    neck = SimpleFPN(arch.embed_dim, 256, scale_factors=(4.0, 2.0, 1.0, 0.5), num_outs=5,
                     norm_cfg=dict(type="LN2d", eps=1e-6), act_cfg=dict(type="GELU"))
    model = nn.Sequential(backbone, neck).to(device).train()
    images = torch.randn(batch, 3, size, size, device=device)
    step = backward_step(model, lambda: model(images), device, precision)
    return Workload("det_backbone", f"ViTDet + SimpleFPN {size}x{size}", batch, step)


def build_segmentation_backbone(arch: Arch, size: int, batch: int, device, precision) -> Workload:
    """Build the forward and backward pass of ViTSeg + mmseg's Feature2Pyramid with the ADE20K recipe's settings."""
    from mmseg.models.necks import Feature2Pyramid

    from mimae.downstream import ViTSeg

    torch.manual_seed(0)
    backbone = ViTSeg(img_size=size, patch_size=arch.patch_size, embed_dim=arch.embed_dim, depth=arch.depth,
                      num_heads=arch.num_heads, drop_path_rate=0.1, out_indices=arch.seg_out_indices)
    backbone.init_weights()
    # The recipe's SyncBN becomes BatchNorm outside distributed training, as mmengine's Runner does.
    neck = Feature2Pyramid(arch.embed_dim, rescales=[4, 2, 1, 0.5], norm_cfg=dict(type="BN", requires_grad=True))
    model = nn.Sequential(backbone, neck).to(device).train()
    images = torch.randn(batch, 3, size, size, device=device)
    step = backward_step(model, lambda: model(images), device, precision)
    return Workload("seg_backbone", f"ViTSeg + Feature2Pyramid {size}x{size}", batch, step)


def build_gemm_references(device, precision: str, size: int) -> list[Workload]:
    """Build the matrix-product ceilings: ``torch.mm`` and a 1x1 convolution, both ``size`` cubed."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator(device=device).manual_seed(2)
    a = torch.randn(size, size, generator=generator, device=device).to(dtype)
    b = torch.randn(size, size, generator=generator, device=device).to(dtype)
    # A 1x1 convolution over `size` pixels is the same product. It runs in oneDNN on the CPU
    # and in cuDNN on CUDA. Channels-last makes the pixels the rows of the product.
    pixels = torch.randn(1, size, 32, size // 32, generator=generator, device=device).to(dtype)
    pixels = pixels.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(size, size, 1, 1, generator=generator, device=device).to(dtype)
    conv_backend = "cuDNN" if device.type == "cuda" else "oneDNN"

    def matmul() -> None:
        torch.mm(a, b)

    def conv() -> None:
        torch.nn.functional.conv2d(pixels, weight)

    return [
        Workload("gemm_mm", f"torch.mm {size}^3 {precision}", 0, matmul),
        Workload("gemm_conv1x1", f"1x1 conv ({conv_backend}) {size}^3 {precision}", 0, conv),
    ]


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_rounds(workloads: list[Workload], device, warmup: int, repeats: int) -> None:
    """Time every workload once per round, interleaved, after ``warmup`` untimed rounds.

    Each step also records the process's minor page faults: a step that maps its memory
    afresh is slower than one that reuses memory already mapped.
    """
    for round_index in range(warmup + repeats):
        for workload in workloads:
            synchronize(device)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            workload.step()
            synchronize(device)
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                workload.times.append(elapsed)
                workload.page_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
        stage = "warm-up" if round_index < warmup else "timed"
        print(f"  round {round_index + 1}/{warmup + repeats} ({stage}) done", flush=True)


def measure_peak_memory(workload: Workload, device: torch.device) -> None:
    """Store the peak tensor memory of one step (method in the module docstring)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        workload.step()
        synchronize(device)
        workload.peak_bytes = torch.cuda.max_memory_allocated(device)
        return
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        workload.step()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # NOTE: torch 2.14 marks export_memory_timeline deprecated. Its suggested replacement
        # records CUDA memory only, so the CPU figure has no successor API yet.
        warnings.simplefilter("ignore", FutureWarning)
        path = osp.join(tmp, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        with open(path) as f:
            _, sizes = json.load(f)
    workload.peak_bytes = max(sum(categories) for categories in sizes) if sizes else None


# mimae's Linear runs large CPU float32 products as 1 x 1 convolutions or through oneDNN's
# linear operator, so both count as matrix products (the patch embedding's convolution is
# among them).
GEMM_OPS = ("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten.convolution", "aten.convolution_backward",
            "mkldnn._linear_pointwise")
MATRIX_PRODUCTS = "matrix products (mm, addmm, bmm, convolutions, oneDNN linear)"
OP_GROUPS = (
    (MATRIX_PRODUCTS, ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul",
                       "aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution",
                       "aten::thnn_conv2d", "aten::_slow_conv2d", "aten::cudnn_convolution",
                       "mkldnn::_linear_pointwise")),
    # Only attention is compiled in mimae, so the compiled graphs and their wrappers count as
    # attention; the matrix products inside them are aten::bmm calls.
    ("attention kernels, or compiled attention outside its products",
     ("aten::_scaled_dot_product", "## Call CompiledFxGraph", "CompiledFunction", "Torch-Compiled Region",
      "TorchDynamo", "AOTDispatcher", "Pregraph bytecode")),
    ("copies, gathers, scatters, cat", ("aten::copy_", "aten::cat", "aten::gather", "aten::scatter",
                                        "aten::clone", "aten::index", "aten::contiguous", "aten::_to_copy")),
    ("layer norm", ("aten::native_layer_norm",)),
    ("GELU", ("aten::gelu",)),
)


def profile_breakdown(workload: Workload, flops_by_op: dict[str, int]) -> dict:
    """Profile one step, group the operators' self time and compute the matrix products' own FLOP/s.

    The profiler records the second of two steps, so its own start-up is not in the figures.
    """
    with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=1, active=1, repeat=1)) as prof:
        for _ in range(2):
            workload.step()
            prof.step()
    averages = prof.key_averages()
    total_us = sum(event.self_cpu_time_total for event in averages)
    if total_us <= 0:
        raise RuntimeError(f"the profiler recorded no operators for {workload.label}")
    groups = {name: 0.0 for name, _ in OP_GROUPS}
    optimizer_us = 0.0
    other_us = 0.0
    for event in averages:
        if event.key.startswith("Optimizer.step"):
            optimizer_us += event.cpu_time_total
        matched = False
        for name, prefixes in OP_GROUPS:
            if event.key.startswith(prefixes):
                groups[name] += event.self_cpu_time_total
                matched = True
                break
        if not matched:
            other_us += event.self_cpu_time_total
    gemm_flops = sum(n for op, n in flops_by_op.items() if op.startswith(GEMM_OPS))
    gemm_us = groups[MATRIX_PRODUCTS]
    top = sorted(averages, key=lambda event: event.self_cpu_time_total, reverse=True)[:12]
    return dict(
        step_seconds_profiled=total_us / 1e6,
        share_by_group={name: us / total_us for name, us in groups.items()} | {"other operators": other_us / total_us},
        optimizer_step_share=optimizer_us / total_us,
        matrix_product_gflops_per_s=gemm_flops / (gemm_us / 1e6) / 1e9 if gemm_us else None,
        matrix_product_flop_share=gemm_flops / max(sum(flops_by_op.values()), 1),
        top_ops=[dict(op=event.key, self_seconds=event.self_cpu_time_total / 1e6, calls=event.count)
                 for event in top],
    )


def summarize(workload: Workload) -> dict:
    median = statistics.median(workload.times)
    summary = dict(
        label=workload.label,
        batch=workload.images,
        seconds_per_step=median,
        seconds_all=workload.times,
        images_per_s=workload.images / median if workload.images else None,
        gflop_per_step=workload.flops / 1e9,
        gflops_per_s=workload.flops / median / 1e9,
        peak_mib=workload.peak_bytes / 2**20 if workload.peak_bytes is not None else None,
        page_faults_per_step=statistics.median(workload.page_faults) if workload.page_faults else None,
        page_faults_all=workload.page_faults,
    )
    return summary


# ---------------------------------------------------------------------------------------------
# Data loading
# ---------------------------------------------------------------------------------------------

# Runs tools/train.py in this child process and records when each call of a data-loader
# iterator's __next__ started and how long it took, that is, how long training waited for
# its next batch. The time between two starts is one whole iteration.
_TIMED_TRAIN = """
import json, os, sys, time
from torch.utils.data import dataloader

waits = []
untimed_next = dataloader._BaseDataLoaderIter.__next__

def timed_next(self):
    started = time.perf_counter()
    try:
        return untimed_next(self)
    finally:
        waits.append((started, time.perf_counter() - started))

dataloader._BaseDataLoaderIter.__next__ = timed_next
out, train_script, train_args = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.argv = [train_script, *train_args]
sys.path.insert(0, os.path.dirname(train_script))
import train
try:
    train.main(train_args)
finally:
    with open(out, "w") as f:
        json.dump(waits, f)
"""


def data_loading_share(mode: str, iters: int, log_interval: int = 10, skip: int = 10) -> dict:
    """Return the data-loading share of iteration time in demo pretraining runs.

    ``mode='run'`` trains each demo pretraining config for ``iters`` iterations in a
    subprocess (tools/train.py, a temporary work dir) and reports two shares:

    * ``wait_share``: the time spent inside the data loader's ``__next__`` (waiting for
      and receiving the next batch) over the time from one such call to the next, summed
      over the iterations after the first ``skip``. This is the data-loading time the
      target is about.
    * ``share``: MMEngine's ``data_time / time`` from ``scalars.json``. ``IterTimerHook``
      starts ``data_time`` when its own ``after_train_iter`` has run, so it also counts the
      ``after_train_iter`` work of the hooks after it (parameter schedulers, logging,
      checkpoint checks) and the loop's own bookkeeping.

    ``'scalars'`` reads the newest ``scalars.json`` under ``work_dirs/demo/pretrain_*``
    (``share`` only). ``share`` leaves out the first logged record (worker start-up).
    """
    results = {}
    for name, config in PRETRAIN_CONFIGS.items():
        if mode == "run":
            with tempfile.TemporaryDirectory() as work_dir:
                waits_file = osp.join(work_dir, "waits.json")
                command = [sys.executable, "-c", _TIMED_TRAIN, waits_file, osp.join(ROOT, "tools/train.py"), config,
                           "--work-dir", work_dir, "--cfg-options", f"train_cfg.max_iters={iters}",
                           f"default_hooks.logger.interval={log_interval}",
                           # Each logged time then averages its own interval only, not the
                           # default 10 iterations, which reach back into the skipped start.
                           f"log_processor.window_size={log_interval}",
                           f"default_hooks.checkpoint.interval={iters}", "default_hooks.checkpoint.save_last=False"]
                print(f"  demo run: {name}, {iters} iterations", flush=True)
                completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                           env={**os.environ, "PYTHONPATH": ROOT})
                if completed.returncode != 0:
                    tail = "\n".join(completed.stderr.splitlines()[-15:])
                    results[name] = dict(error=f"demo run failed with exit code {completed.returncode}: {tail}")
                    continue
                share = _scalars_share(_newest_scalars(work_dir))
                with open(waits_file) as f:
                    calls = json.load(f)[skip:]
                if len(calls) > 1:
                    starts = [start for start, _ in calls]
                    periods = [after - before for before, after in zip(starts, starts[1:])]
                    waits = [wait for _, wait in calls[:-1]]
                    share["wait"] = statistics.fmean(waits)
                    share["iteration"] = statistics.fmean(periods)
                    share["wait_share"] = sum(waits) / sum(periods)
                results[name] = share | dict(source=f"fresh demo run, {iters} iters")
        else:
            pattern_dir = osp.join(ROOT, "work_dirs/demo", "pretrain_mae" if name == "MAE" else "pretrain_mimae")
            path = _newest_scalars(pattern_dir)
            if path is None:
                results[name] = dict(error=f"no scalars.json under {pattern_dir}; run tools/demo.sh first")
                continue
            results[name] = _scalars_share(path) | dict(source=osp.relpath(path, ROOT))
    return results


def _newest_scalars(work_dir: str) -> str | None:
    found = []
    for folder, _, files in os.walk(work_dir):
        if "scalars.json" in files:
            path = osp.join(folder, "scalars.json")
            found.append((osp.getmtime(path), path))
    return max(found)[1] if found else None


def _scalars_share(path: str) -> dict:
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    records = [r for r in records if "data_time" in r and "time" in r][1:]
    data_time = sum(r["data_time"] for r in records)
    iter_time = sum(r["time"] for r in records)
    return dict(windows=len(records), data_time=data_time / max(len(records), 1),
                time=iter_time / max(len(records), 1), share=data_time / iter_time if iter_time else None)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def machine_info(device: torch.device) -> dict:
    """Return the CPU (``/proc/cpuinfo`` model name, family and model), thread counts, versions and load."""
    cpu_fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in cpu_fields:
                    cpu_fields[key] = value.strip()
                if not line.strip():
                    break  # the first processor's block is enough
    except OSError:
        pass
    cpu_model = cpu_fields.get("model name", platform.processor() or "unknown")
    if "cpu family" in cpu_fields:
        cpu_model += f" (family {cpu_fields['cpu family']}, model {cpu_fields.get('model', '?')})"
    info = dict(cpu=cpu_model, logical_cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                torch=torch.__version__, python=platform.python_version(),
                cpu_capability=torch.backends.cpu.get_cpu_capability(), load_average_start=os.getloadavg())
    if device.type == "cpu":
        from mimae.models.layers import cpu_vendor, default_linear_kernel

        info["cpu_vendor"] = cpu_vendor()
        info["float32_linear_kernel"] = LINEAR_KERNEL_LABELS[default_linear_kernel()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def evaluate_targets(results: dict, views: int, data_share: dict, precision: str = "fp32") -> list[dict]:
    """Compute the target ratios of one precision's results; a missing figure gives ``None``.

    A timed target's ``value`` is the ratio of the medians. ``per_round`` contains the same
    ratio computed within each timed round, whose workloads ran back to back, so its
    spread shows how far the background load moved the figure during the run.

    The GEMM-fraction target compares the float32 MAE step with float32 GEMMs. In bf16 the
    same fraction is reported against the bf16 GEMMs with ``passed=None`` and
    ``reported_only=True``: on a CPU with AMX the bf16 GEMM ran at 5 times the float32 one,
    while the step's float32 AdamW update and casts did not speed up.
    """
    def rounds(key: str) -> list[float] | None:
        return results[key]["seconds_all"] if key in results else None

    def time_ratio(numerator: str, denominator: str, scale: float = 1.0):
        top, bottom = rounds(numerator), rounds(denominator)
        if top is None or bottom is None:
            return None, None
        median = results[numerator]["seconds_per_step"] / (scale * results[denominator]["seconds_per_step"])
        return median, [t / (scale * b) for t, b in zip(top, bottom)]

    def gemm_fraction():
        gemms = [k for k in ("gemm_mm", "gemm_conv1x1") if k in results]
        if "mae" not in results or not gemms:
            return None, None
        best = max(results[k]["gflops_per_s"] for k in gemms)
        mae_flops = results["mae"]["gflop_per_step"]
        per_round = []
        for index, mae_time in enumerate(results["mae"]["seconds_all"]):
            best_round = max(results[k]["gflop_per_step"] / results[k]["seconds_all"][index] for k in gemms)
            per_round.append(mae_flops / mae_time / best_round)
        return results["mae"]["gflops_per_s"] / best, per_round

    peak = {k: results[k]["peak_mib"] for k in ("mimae", "control") if k in results}
    memory_ratio = peak["mimae"] / peak["control"] if len(peak) == 2 and peak["control"] else None
    waits = [v["wait_share"] for v in data_share.values() if isinstance(v, dict) and v.get("wait_share") is not None]
    targets = [
        ("MI-MAE step / control step", time_ratio("mimae", "control"), "<=", 1.05),
        (f"MI-MAE step / ({views} x MAE step), same images", time_ratio("mimae", "mae", views), "<=", 1.0),
        ("mimae MAE step / mmpretrain MAE step", time_ratio("mae", "mmpretrain_mae"), "<=", 0.9),
        ("mimae encoder fwd+bwd / timm", time_ratio("mimae_encoder", "timm_encoder"), "<=", 1.0),
        ("MAE step FLOP/s / best GEMM FLOP/s", gemm_fraction(), ">=", 0.6),
        ("peak memory MI-MAE / control", (memory_ratio, None), "<=", 1.05),
        ("demo data-loader wait / iteration time (worst config)", (max(waits) if waits else None, None), "<=", 0.05),
    ]
    fp32_only = {"MAE step FLOP/s / best GEMM FLOP/s"}
    evaluated = []
    for name, (value, per_round), relation, limit in targets:
        def holds(x: float) -> bool:
            return x <= limit if relation == "<=" else x >= limit

        reported_only = precision != "fp32" and name in fp32_only
        evaluated.append(dict(
            target=name, value=value, relation=relation, limit=limit,
            passed=None if value is None or reported_only else holds(value),
            per_round=per_round,
            rounds_passing=None if per_round is None else sum(holds(x) for x in per_round),
            reported_only=reported_only,
        ))
    return evaluated


def format_table(results: dict) -> str:
    timm = results.get("timm_encoder")
    header = ("| workload | batch | s/step | img/s | GFLOP/step | GFLOP/s | peak MiB | s ÷ timm | GFLOP/s ÷ timm "
              "| page faults/step |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [header]
    for key, r in results.items():
        time_ratio = r["seconds_per_step"] / timm["seconds_per_step"] if timm else None
        rate_ratio = r["gflops_per_s"] / timm["gflops_per_s"] if timm and timm["gflops_per_s"] else None
        faults = r.get("page_faults_per_step")
        rows.append("| {} | {} | {:.3f} | {} | {:.1f} | {:.1f} | {} | {} | {} | {} |".format(
            r["label"], r["batch"] or "-", r["seconds_per_step"],
            f"{r['images_per_s']:.2f}" if r["images_per_s"] else "-",
            r["gflop_per_step"], r["gflops_per_s"],
            f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-",
            f"{time_ratio:.3f}" if time_ratio is not None else "-",
            f"{rate_ratio:.3f}" if rate_ratio is not None else "-",
            f"{faults:.0f}" if faults is not None else "-"))
    return "\n".join(rows)


# Median minor page faults per timed step above which the report warns. Steps that reuse
# their memory had medians of 0 to 2 in the CPU runs of docs/benchmarks.md, and steps that
# mapped their activations afresh had tens of thousands.
PAGE_FAULT_WARNING = 1000


def format_page_fault_warning(results: dict) -> str | None:
    """Return a warning naming the workloads whose timed steps page-faulted, or None."""
    faulting = [(r["label"], r["page_faults_per_step"]) for r in results.values()
                if (r.get("page_faults_per_step") or 0) > PAGE_FAULT_WARNING]
    if not faulting:
        return None
    page_mib = resource.getpagesize() / 2**20
    named = ", ".join(f"{label} ({faults:.0f}, {faults * page_mib:.0f} MiB)" for label, faults in faulting)
    return (f"warning: timed steps page-faulted (median minor faults per step): {named}. Their times include "
            "mapping and zeroing memory anew. On glibc, check that keep_freed_memory() is in effect "
            "(MIMAE_KEEP_FREED_MEMORY is not 0).")


def format_targets(targets: list[dict]) -> str:
    rows = ["| target | measured | limit | result | per round: min to max | rounds passing |",
            "|---|---:|---:|---|---|---:|"]
    for t in targets:
        value = "not measured" if t["value"] is None else f"{t['value']:.3f}"
        if t.get("reported_only"):
            result = "reported (fp32 target)"
        elif t["passed"] is None:
            result = "not measured"
        elif t["passed"]:
            result = "pass"
        else:
            result = "FAIL"
        spread, passing = "-", "-"
        if t["per_round"]:
            spread = f"{min(t['per_round']):.3f} to {max(t['per_round']):.3f}"
            passing = f"{t['rounds_passing']}/{len(t['per_round'])}"
        rows.append(f"| {t['target']} | {value} | {t['relation']} {t['limit']} | {result} | {spread} | {passing} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda (default: cpu)")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"],
                        help="precisions to measure, each in its own set of rounds; bf16 means bf16 autocast "
                             "around the forward pass (default: fp32 bf16, or fp32 alone on a CPU without "
                             "native bf16 matrix products)")
    parser.add_argument("--batch-size", type=int, help="images per pretraining step (default: 8 on cpu, 128 on cuda)")
    parser.add_argument("--views", type=int, default=4, help="masked views N of the control and MI-MAE (default: 4)")

    parser.add_argument("--det-size", type=int, help="detection input side in pixels "
                        f"(default: 448 on cpu, the recipe's {DET_RECIPE['size']} on cuda)")
    parser.add_argument("--det-batch", type=int,
                        help=f"detection images per step (default: 1 on cpu, {DET_RECIPE['batch']} on cuda)")
    parser.add_argument("--seg-size", type=int, help="segmentation input side in pixels "
                        f"(default: 256 on cpu, the recipe's {SEG_RECIPE['size']} on cuda)")
    parser.add_argument("--seg-batch", type=int,
                        help=f"segmentation images per step (default: 2 on cpu, {SEG_RECIPE['batch']} on cuda)")
    parser.add_argument("--gemm-size", type=int, help="side of the square GEMM references (default: 2048 on cpu, 8192 on cuda)")

    parser.add_argument("--cpu-attention", choices=list(ATTENTION_LABELS), default="compiled",
                        help="Attention.cpu_autocast_kernel of mimae's bf16 workloads on the CPU, as "
                             "tools/train.py --cpu-attention sets it (default: compiled)")

    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing (default: 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; figures are their median (default: 5)")
    parser.add_argument("--data", choices=["run", "scalars", "skip"], default="run",
                        help="data-loading share: run both demo pretraining configs briefly, read existing demo "
                             "scalars.json files, or skip (default: run)")
    parser.add_argument("--data-iters", type=int, default=300, help="iterations of each demo run for --data run")

    parser.add_argument("--only", nargs="+", choices=WORKLOAD_KEYS,
                        help="measure only these workloads (default: all); 'gemm' selects both GEMM references")
    parser.add_argument("--report", metavar="JSON",
                        help="print the tables and targets of a saved run with the current rules, then exit")
    parser.add_argument("--no-mmpretrain", action="store_true", help="skip the mmpretrain comparison")
    parser.add_argument("--no-profile", action="store_true", help="skip the operator breakdowns of the MAE steps (CPU only)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small models (4 blocks, 192-d, 64 px), batch 2, 1 timed round; "
                             "--data run becomes --data scalars")
    parser.add_argument("--out", default="work_dirs/benchmark/benchmark.json", help="JSON output path")
    args = parser.parse_args(argv)

    on_cuda = args.device.startswith("cuda")
    if args.quick:
        defaults = dict(batch_size=2, det_size=64, det_batch=1, seg_size=64, seg_batch=1, gemm_size=256)
        args.warmup, args.repeats = 1, 1
        if args.data == "run":
            args.data = "scalars"
    elif on_cuda:
        defaults = dict(batch_size=128, det_size=DET_RECIPE["size"], det_batch=DET_RECIPE["batch"],
                        seg_size=SEG_RECIPE["size"], seg_batch=SEG_RECIPE["batch"], gemm_size=8192)
    else:
        defaults = dict(batch_size=8, det_size=448, det_batch=1, seg_size=256, seg_batch=2, gemm_size=2048)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


WORKLOAD_KEYS = ("mae", "control", "mimae", "mae_default_adamw", "mae_other_linear_kernels", "mae_checkpointed",
                 "mae_flash_fp32_attention", "mae_flash_attention", "mmpretrain_mae", "timm_encoder",
                 "mimae_encoder", "det_backbone", "seg_backbone", "gemm")


def build_workloads(args, arch: Arch, device: torch.device, precision: str, with_mmpretrain: bool) -> list[Workload]:
    """Build the workloads named by ``args.only`` (all by default) in the order of ``WORKLOAD_KEYS``."""
    batch, views = args.batch_size, args.views
    cpu_bf16 = precision == "bf16" and device.type == "cpu"
    built = {}

    def mae_base() -> Workload:
        if "mae" not in built:
            built["mae"] = build_mimae_pretrain("mae", arch, batch, views, device, precision)
        return built["mae"]

    builders = {
        "mae": lambda: [mae_base()],
        "control": lambda: [build_mimae_pretrain("control", arch, batch, views, device, precision)],
        "mimae": lambda: [build_mimae_pretrain("mimae", arch, batch, views, device, precision)],
        "mae_default_adamw": lambda: [mae_variant(mae_base(), "default_adamw")],
        # Under autocast Linear always takes F.linear, so these variants exist for fp32 only.
        "mae_other_linear_kernels": lambda: [
            mae_variant(mae_base(), f"linear_{kernel}") for kernel in other_linear_kernels()
        ] if precision == "fp32" else [],
        "mae_checkpointed": lambda: [mae_variant(mae_base(), "checkpointed")] if precision == "fp32" else [],
        # Under CPU autocast the run uses the compiled attention, and these variants take the flash kernel.
        "mae_flash_fp32_attention": lambda: [mae_variant(mae_base(), "flash_fp32_attention")] if cpu_bf16 else [],
        "mae_flash_attention": lambda: [mae_variant(mae_base(), "flash_attention")] if cpu_bf16 else [],
        "mmpretrain_mae": lambda: [build_mmpretrain_mae(arch, batch, device, precision)] if with_mmpretrain else [],
        "timm_encoder": lambda: [build_encoder("timm", arch, batch, device, precision)],
        "mimae_encoder": lambda: [build_encoder("mimae", arch, batch, device, precision)],
        "det_backbone": lambda: [build_detection_backbone(arch, args.det_size, args.det_batch, device, precision)],
        "seg_backbone": lambda: [build_segmentation_backbone(arch, args.seg_size, args.seg_batch, device, precision)],
        "gemm": lambda: build_gemm_references(device, precision, args.gemm_size),
    }
    selected = args.only or WORKLOAD_KEYS
    workloads = []
    for key in WORKLOAD_KEYS:
        if key in selected:
            workloads += builders[key]()
    return workloads


def choose_precisions(args: argparse.Namespace, device: torch.device) -> dict[str, str]:
    """Fill in ``args.precision`` when it was not given; return the precisions left out, with the reason.

    bf16 is left out by default on a CPU without native bf16 matrix products, where PyTorch
    runs them in a generic loop. At the 0.18 GFLOP/s measured there, one bf16 MAE step of
    ViT-B would take about 40 minutes (an estimate), and the figures would not show what
    mixed precision gives on a CPU that has such products. A bf16 run requested with
    ``--precision`` still runs, with a warning.
    """
    from mimae.models.layers import NO_NATIVE_BF16, cpu_bf16_products

    native = device.type != "cpu" or cpu_bf16_products()
    if args.precision is None:
        args.precision = ["fp32", "bf16"] if native else ["fp32"]
        return {} if native else {"bf16": NO_NATIVE_BF16}
    if "bf16" in args.precision and not native:
        print(f"warning: {NO_NATIVE_BF16}. The bf16 rounds will take far longer than the fp32 ones", file=sys.stderr)
    return {}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.report:
        with open(args.report) as f:
            report = json.load(f)
        for precision, entry in report["precisions"].items():
            entry["targets"] = evaluate_targets(entry["results"], report["settings"]["views"],
                                                report.get("data_loading", {}), precision)
        print(f"command: {report['command']}")
        print_report(report)
        return report
    device = torch.device(args.device)
    memory_kept = False
    if device.type == "cpu":
        from mimae.engine.cpu_memory import keep_freed_memory

        memory_kept = keep_freed_memory()  # as tools/train.py does on a machine without a GPU
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch.cuda.is_available() is False")
    skipped_precisions = choose_precisions(args, device)
    register_cpu_attention_flops()
    register_onednn_linear_flops()
    arch = QUICK_ARCH if args.quick else Arch()
    mmpretrain_version = None if args.no_mmpretrain else mmpretrain_available()
    report = dict(command=" ".join([osp.relpath(sys.argv[0], ROOT)] + sys.argv[1:]), machine=machine_info(device),
                  settings=vars(args), mmpretrain=mmpretrain_version, precisions={})
    report["machine"]["keep_freed_memory"] = memory_kept
    report["skipped_precisions"] = skipped_precisions
    for precision, reason in skipped_precisions.items():
        print(f"{precision} is left out: {reason}. Pass --precision {precision} to measure it anyway")

    out = osp.join(ROOT, args.out) if not osp.isabs(args.out) else args.out
    os.makedirs(osp.dirname(out), exist_ok=True)
    from mimae.models.layers import Attention

    saved_kernel = Attention.cpu_autocast_kernel
    Attention.cpu_autocast_kernel = args.cpu_attention  # as tools/train.py --amp sets it on the CPU
    try:
        for precision in args.precision:
            report["precisions"][precision] = measure_precision(args, arch, device, precision, mmpretrain_version)
            write_json(report, out)  # keeps the finished precisions if a later stage fails
    finally:
        Attention.cpu_autocast_kernel = saved_kernel

    data_share = {} if args.data == "skip" else data_loading_share(args.data, args.data_iters)
    report["data_loading"] = data_share
    for precision, entry in report["precisions"].items():
        entry["targets"] = evaluate_targets(entry["results"], args.views, data_share, precision)
    report["machine"]["load_average_end"] = os.getloadavg()

    print_report(report)
    write_json(report, out)
    print(f"\nwrote {osp.relpath(out, ROOT)}")
    return report


def measure_precision(args, arch: Arch, device: torch.device, precision: str, mmpretrain_version: str | None) -> dict:
    """Build, count, time, and measure the memory of every workload in one precision."""
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"== {precision} [{time.perf_counter() - started:.0f} s]: {message}", flush=True)

    from mimae.models.layers import compiled_attention_works

    if precision == "bf16" and device.type == "cpu" and args.cpu_attention == "compiled":
        log("compiling the attention" if compiled_attention_works() else
            "the compiled attention failed its trial, so attention runs the float32 flash kernel")
    log("building workloads and counting FLOPs")
    workloads = build_workloads(args, arch, device, precision, mmpretrain_version is not None)
    for workload in workloads:
        count_flops(workload)
    log(f"{args.warmup} warm-up + {args.repeats} timed rounds of {len(workloads)} workloads")
    run_rounds(workloads, device, args.warmup, args.repeats)
    log("measuring peak memory")
    for workload in workloads:
        if workload.images:
            measure_peak_memory(workload, device)
    entry = dict(results={w.key: summarize(w) for w in workloads})
    if not args.no_profile and device.type == "cpu":
        entry["profiles"] = {}
        for workload in workloads:
            if workload.key.startswith("mae"):
                log(f"profiling {workload.label}")
                entry["profiles"][workload.key] = profile_breakdown(workload, workload.flops_by_op)
    log("done")
    return entry


def write_json(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def print_report(report: dict) -> None:
    machine = report["machine"]
    print(f"\nmachine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['torch_threads']} torch "
          f"threads, torch {machine['torch']}" + (f", {machine['gpu']}" if "gpu" in machine else ""))
    if "float32_linear_kernel" in machine:
        print(f"CPU vendor {machine['cpu_vendor'] or 'unknown'}: float32 linear layers run {machine['float32_linear_kernel']}")
    print(f"load average at start {machine['load_average_start']}, at end {machine.get('load_average_end', 'not recorded')}")
    for precision, reason in report.get("skipped_precisions", {}).items():
        print(f"{precision} left out: {reason}")
    for precision, entry in report["precisions"].items():
        print(f"\n### {precision}\n")
        print(format_table(entry["results"]))
        warning = format_page_fault_warning(entry["results"])
        if warning:
            print(f"\n{warning}")
        print()
        print(format_targets(entry["targets"]))
        profiles = entry.get("profiles", {"mae": entry["mae_profile"]} if "mae_profile" in entry else {})
        for key, breakdown in profiles.items():
            label = entry["results"][key]["label"]
            print(f"\n{label} step by operator group (profiled step {breakdown['step_seconds_profiled']:.2f} s):")
            for name, share in breakdown["share_by_group"].items():
                print(f"  {name:36s} {100 * share:5.1f} %")
            print(f"  {'(inside Optimizer.step)':36s} {100 * breakdown['optimizer_step_share']:5.1f} %")
            if breakdown["matrix_product_gflops_per_s"]:
                print(f"  matrix products run at {breakdown['matrix_product_gflops_per_s']:.1f} GFLOP/s inside the "
                      f"step and carry {100 * breakdown['matrix_product_flop_share']:.1f} % of its FLOPs")
    if report["data_loading"]:
        print("\ndemo data loading, per iteration:")
        for name, share in report["data_loading"].items():
            if "error" in share:
                print(f"  {name}: {share['error']}")
                continue
            if "wait" in share:
                print(f"  {name}: waiting in the data loader {share['wait'] * 1e3:.1f} ms of "
                      f"{share['iteration'] * 1e3:.1f} ms = {100 * share['wait_share']:.1f} %", end="; ")
            else:
                print(f"  {name}:", end=" ")
            print(f"MMEngine data_time {share['data_time'] * 1e3:.1f} ms of time {share['time'] * 1e3:.1f} ms "
                  f"= {100 * share['share']:.1f} % ({share['source']})")


if __name__ == "__main__":
    main()
