"""``tools/benchmark.py --quick`` runs every workload kind and reports its figures and targets."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_benchmark_quick_run_reports_figures_and_targets(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "tools/benchmark.py", "--quick", "--data", "skip", "--no-mmpretrain",
               "--precision", "fp32", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=580)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    entry = report["precisions"]["fp32"]
    results = entry["results"]
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import benchmark

    kernel_keys = {f"mae_linear_{kernel}" for kernel in benchmark.other_linear_kernels()}
    assert len(kernel_keys) == 2
    expected = {"mae", "control", "mimae", "mae_default_adamw", "mae_checkpointed", "timm_encoder",
                "mimae_encoder", "det_backbone", "seg_backbone", "gemm_mm", "gemm_conv1x1"} | kernel_keys
    assert expected <= set(results)
    for key in expected:
        assert results[key]["seconds_per_step"] > 0, key
        assert results[key]["gflop_per_step"] > 0, key
    # Linear's default kernel and the other ones count the same products.
    for key in kernel_keys:
        assert results["mae"]["gflop_per_step"] == pytest.approx(results[key]["gflop_per_step"])
    # Checkpointing recomputes the forward pass of the blocks in the backward pass. At this
    # size the optimizer state, not the activations, sets the peak.
    assert results["mae_checkpointed"]["gflop_per_step"] > results["mae"]["gflop_per_step"]
    assert results["mae_checkpointed"]["peak_mib"] <= results["mae"]["peak_mib"]
    # Four views per image: about four times the MAE step's products (fewer at the quick size).
    mae_gflop = results["mae"]["gflop_per_step"]
    assert 3 * mae_gflop < results["mimae"]["gflop_per_step"] < 4.2 * mae_gflop
    targets = {t["target"]: t for t in entry["targets"]}
    assert targets["peak memory MI-MAE / control"]["value"] > 0
    assert targets["MI-MAE step / control step"]["value"] > 0
    assert "MAE step" in result.stdout


@pytest.mark.timeout(600)
def test_demo_loader_wait_share():
    """Short real runs of both demo pretraining configs: the wait inside the data loader is
    measured per batch and is part of, and smaller than, MMEngine's ``data_time``."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import benchmark

    shares = benchmark.data_loading_share("run", iters=20, log_interval=5, skip=5)
    assert set(shares) == {"MAE", "MI-MAE"}
    for name, share in shares.items():
        assert "error" not in share, share
        assert share["windows"] == 4, name  # iterations 1, 5, 10, 15 and 20 are logged, and the first is left out
        assert 0 < share["wait"] < share["iteration"], name
        # 15 timed fetches, 14 whole iterations between them.
        assert share["wait_share"] == pytest.approx(share["wait"] / share["iteration"])
        # The iteration measured between fetches agrees with MMEngine's time.
        assert share["iteration"] == pytest.approx(share["time"], rel=0.5), name
        assert 0 < share["share"] < 1, name
    targets = {t["target"]: t for t in benchmark.evaluate_targets({}, 4, shares)}
    loading = targets["demo data-loader wait / iteration time (worst config)"]
    assert loading["value"] == max(share["wait_share"] for share in shares.values())


def test_benchmark_quick_bf16_attention_kernels(tmp_path):
    """In bf16 on the CPU the MAE step runs the compiled attention, and the two flash
    variants are measured beside it."""
    out = tmp_path / "bench.json"
    command = [sys.executable, "tools/benchmark.py", "--quick", "--data", "skip", "--no-mmpretrain",
               "--precision", "bf16", "--only", "mae", "mae_flash_fp32_attention", "mae_flash_attention", "gemm",
               "--out", str(out)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=580)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "failed its trial" not in result.stdout + result.stderr
    entry = json.loads(out.read_text())["precisions"]["bf16"]
    results = entry["results"]
    assert {"mae", "mae_flash_fp32_attention", "mae_flash_attention"} <= set(results)
    assert results["mae_flash_fp32_attention"]["label"].endswith("float32 flash attention")
    # The counter counts the flash kernel's recomputed scores in its backward pass. The
    # compiled attention keeps the weights, so only its products count.
    assert results["mae"]["gflop_per_step"] < results["mae_flash_fp32_attention"]["gflop_per_step"]
    assert results["mae_flash_attention"]["gflop_per_step"] == results["mae_flash_fp32_attention"]["gflop_per_step"]
    attention = "attention kernels, or compiled attention outside its products"
    assert entry["profiles"]["mae"]["share_by_group"][attention] > 0
    compiled_ops = {op["op"] for op in entry["profiles"]["mae"]["top_ops"]}
    assert not any(op.startswith("aten::_scaled_dot_product") for op in compiled_ops)


def test_gemm_fraction_target_fp32_only():
    """The MAE step's share of the GEMM ceiling passes or fails in fp32. In bf16 it is only reported."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import benchmark

    def figure(gflop: float, seconds: list[float]) -> dict:
        median = sorted(seconds)[len(seconds) // 2]
        return dict(gflop_per_step=gflop, seconds_all=seconds, seconds_per_step=median, gflops_per_s=gflop / median)

    results = {"mae": figure(470.0, [2.0, 2.1, 1.9]), "gemm_mm": figure(17.0, [0.05, 0.05, 0.05]),
               "gemm_conv1x1": figure(17.0, [0.06, 0.06, 0.06])}
    fraction = (470.0 / 2.0) / (17.0 / 0.05)
    for precision, passed in (("fp32", True), ("bf16", None)):
        targets = {t["target"]: t for t in benchmark.evaluate_targets(results, 4, {}, precision)}
        gemm = targets["MAE step FLOP/s / best GEMM FLOP/s"]
        assert gemm["value"] == pytest.approx(fraction)
        assert gemm["passed"] is passed
        assert gemm["reported_only"] is (precision == "bf16")
        assert gemm["rounds_passing"] == 3
    slow = dict(results, mae=figure(470.0, [4.0, 4.0, 4.0]))
    targets = {t["target"]: t for t in benchmark.evaluate_targets(slow, 4, {}, "fp32")}
    assert targets["MAE step FLOP/s / best GEMM FLOP/s"]["passed"] is False
    assert "reported (fp32 target)" in benchmark.format_targets(benchmark.evaluate_targets(results, 4, {}, "bf16"))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")
def test_every_linear_kernel_counts_the_same_flops():
    """The FLOP counter counts the convolution and oneDNN's linear operator as it counts
    F.linear, and the profile groups their operators as matrix products."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import benchmark
    from mimae.models.layers import LINEAR_KERNELS, Linear

    benchmark.register_onednn_linear_flops()
    torch.manual_seed(0)
    layer = Linear(256, 768)
    x = torch.randn(2, 200, 256, requires_grad=True)
    counts, product_ops = {}, {}
    prefixes = dict(benchmark.OP_GROUPS)[benchmark.MATRIX_PRODUCTS]
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # oneDNN runs with more than one thread only
    try:
        for kernel in LINEAR_KERNELS:
            layer.kernel = kernel
            workload = benchmark.Workload(kernel, kernel, 2, lambda: layer(x).sum().backward())
            benchmark.count_flops(workload)
            counts[kernel] = workload.flops
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                workload.step()
            ops = {event.key for event in prof.key_averages()}
            product_ops[kernel] = {op for op in ops if op.startswith(prefixes)}
    finally:
        torch.set_num_threads(saved)
    # forward, input gradient and weight gradient: 3 products of 400 x 256 x 768
    assert counts == {kernel: 3 * 2 * 400 * 256 * 768 for kernel in LINEAR_KERNELS}
    # Each kernel's own operators fall in the matrix-product group of the profile breakdown.
    assert {"aten::mkldnn_convolution", "aten::convolution_backward"} <= product_ops["onednn"]
    assert {"mkldnn::_linear_pointwise", "aten::mm"} <= product_ops["onednn_linear"]
    assert "aten::mm" in product_ops["linear"] or "aten::addmm" in product_ops["linear"]


def test_page_fault_warning_names_workloads():
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import benchmark

    results = {
        "control": dict(label="mimae control", page_faults_per_step=466710.0),
        "mae": dict(label="mimae MAE", page_faults_per_step=0.0),
        "gemm": dict(label="torch.mm", page_faults_per_step=None),
    }
    warning = benchmark.format_page_fault_warning(results)
    assert warning is not None
    assert "mimae control (466710," in warning
    assert "mimae MAE" not in warning
    results["control"]["page_faults_per_step"] = 2.0
    assert benchmark.format_page_fault_warning(results) is None


def test_gpu_script_arguments_parse():
    """tools/benchmark_gpu.sh has not run on a GPU yet, so its options are checked against the CLI here."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import benchmark

    script = REPO_ROOT / "tools" / "benchmark_gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    command = script.read_text().split('exec "$PYTHON" tools/benchmark.py', 1)[1].split('"$@"', 1)[0]
    args = benchmark.parse_args(shlex.split(command.replace("\\\n", " ")))
    assert args.device == "cuda"
    assert args.batch_size == 128
    assert args.precision == ["fp32", "bf16"]
    assert (args.det_size, args.det_batch) == (1024, 2)
    assert (args.seg_size, args.seg_batch) == (512, 2)
    assert args.out == "work_dirs/benchmark/cuda.json"


@pytest.mark.parametrize("native", [True, False])
def test_precisions_follow_cpu_bf16(monkeypatch, capsys, native):
    """Without native bf16 products the CPU run measures fp32 alone and reports the reason.
    An explicit --precision bf16 still runs, with a warning."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import benchmark

    from mimae.models import layers

    monkeypatch.setattr(layers, "cpu_bf16_products", lambda: native)
    args = benchmark.parse_args([])
    skipped = benchmark.choose_precisions(args, torch.device("cpu"))
    assert args.precision == (["fp32", "bf16"] if native else ["fp32"])
    assert (set(skipped) == {"bf16"}) is not native

    args = benchmark.parse_args(["--precision", "fp32", "bf16"])
    assert benchmark.choose_precisions(args, torch.device("cpu")) == {}
    assert args.precision == ["fp32", "bf16"]
    assert ("generic loop" in capsys.readouterr().err) is not native
