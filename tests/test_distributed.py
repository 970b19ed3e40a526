"""Distributed training on CPU: 2 gloo processes through tools/dist_train.sh, and an exact
comparison of DDP with a single process on the same global batch and masks.

The launcher tests start torchrun with 2 processes for the pretraining, detection and
segmentation demo configs. The comparison harness calls the MI-MAE model directly in 2
spawned gloo processes, each with half of a fixed global batch, and in this process on
the whole batch. The masks of every step are drawn once for the global batch from a
seeded generator. The test compares the losses and the DDP-averaged gradients.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mimae.engine.runner import is_complete_checkpoint, load_run_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MIMAE_DEMO = "configs/pretrain/mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k_demo.py"
DET_DEMO = "configs/coco/mask-rcnn_vit-b-p16-simplefpn_8xb8-lsj-amp-100e_coco_demo.py"
SEG_DEMO = "configs/ade20k/upernet_vit-b-p16_8xb2-160k_ade20k-512x512_demo.py"
WORLD_SIZE = 2
GLOBAL_BATCH = 8
STEPS = 2
NO_VALIDATION = ["val_cfg=None", "val_dataloader=None", "val_evaluator=None"]
DOWNSTREAM = ["model.backbone.init_cfg=None", "randomness.seed=0", *NO_VALIDATION]


def without_warnings(output: str, limit: int = 6000) -> str:
    """Return the end of a launcher's output without the lines of Python warnings."""
    lines = [line for line in output.splitlines() if "Warning" not in line and "warnings.warn" not in line]
    return "\n".join(lines)[-limit:]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------
# tools/dist_train.sh with 2 processes


def test_launch_scripts_parse():
    for script in ("tools/dist_train.sh", "tools/slurm_train.sh"):
        result = subprocess.run(["bash", "-n", script], cwd=REPO_ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


LAUNCH_CASES = {
    "pretrain": (MIMAE_DEMO, ["train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False"]),
    # A zero loss weight: the CLUB estimate stays in the graph with weight 0.
    "pretrain-lambda_min-0": (MIMAE_DEMO, ["train_dataloader.num_workers=0",
                                           "train_dataloader.persistent_workers=False", "model.lambda_min=0"]),
    "detection": (DET_DEMO, DOWNSTREAM),
    "segmentation": (SEG_DEMO, DOWNSTREAM),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(LAUNCH_CASES))
def test_dist_train_two_processes(case, tmp_path):
    config, options = LAUNCH_CASES[case]
    work_dir = tmp_path / "work"
    env = dict(os.environ, PYTHON=PYTHON, PORT=str(free_port()), OMP_NUM_THREADS="1")
    command = ["bash", "tools/dist_train.sh", config, str(WORLD_SIZE), "--work-dir", str(work_dir),
               "--cfg-options", f"train_cfg.max_iters={STEPS}", "default_hooks.logger.interval=1", *options]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=280)
    output = result.stdout + result.stderr

    assert result.returncode == 0, without_warnings(output)
    assert "Expected to have finished reduction" not in output
    assert f"Iter(train) [{STEPS}/{STEPS}]" in output
    checkpoint_path = work_dir / f"iter_{STEPS}.pth"
    assert is_complete_checkpoint(str(checkpoint_path))
    assert (work_dir / "last_checkpoint").read_text() == str(checkpoint_path)
    assert not list(work_dir.glob("*.partial"))
    meta = load_run_checkpoint(str(checkpoint_path))["meta"]
    assert meta["iter"] == STEPS
    states = meta["rank_random_states"]
    assert len(states) == WORLD_SIZE
    if case.startswith("pretrain"):
        # The pretraining configs seed each rank differently (diff_rank_seed=True).
        assert not torch.equal(states[0]["torch"], states[1]["torch"])


@pytest.mark.timeout(300)
def test_dist_train_nan_on_one_rank(tmp_path):
    """Rank 1 alone gets a NaN CLUB estimate at iteration 2; both ranks must stop there, before its checkpoint.

    CLUB uses only the local batch, so rank 0's logged terms stay finite (a NaN input would
    reach rank 0 through the InfoNCE negatives gathered across ranks).
    """
    from test_faults import write_config

    config = write_config(
        tmp_path / "fault.py", REPO_ROOT / MIMAE_DEMO,
        [dict(type="NonFiniteLossHook"), dict(type="LossTraceHook"),
         dict(type="FaultHook", fault="term", iteration=2, rank=1)],
        ["mimae.models", "pretrain", "test_faults"])
    work_dir = tmp_path / "work"
    env = dict(os.environ, PYTHON=PYTHON, PORT=str(free_port()), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO_ROOT / "tests"))
    command = ["bash", "tools/dist_train.sh", str(config), str(WORLD_SIZE), "--work-dir", str(work_dir),
               "--cfg-options", "train_cfg.max_iters=3", "default_hooks.checkpoint.interval=1",
               *LAUNCH_CASES["pretrain"][1]]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=280)
    output = result.stdout + result.stderr

    assert result.returncode != 0
    assert "FloatingPointError: non-finite loss at iteration 2: club_estimate=nan, loss_mi_min=nan" in output, \
        without_warnings(output)
    assert ("FloatingPointError: another rank reported a non-finite loss at iteration 2 (this is rank 0"
            in output), without_warnings(output)
    assert not (work_dir / "iter_2.pth").exists()
    assert (work_dir / "last_checkpoint").read_text() == str(work_dir / "iter_1.pth")
    assert is_complete_checkpoint(str(work_dir / "iter_1.pth"))


def data_check_worker(rank: int, port: int, out_dir: str) -> None:
    """Run the runner's data check with an invalid ``verify`` and write the error each rank raised."""
    import datetime
    from types import SimpleNamespace

    from mmengine.config import Config

    from mimae.engine import SafeRunner

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=60))
    try:
        runner = SimpleNamespace(cfg=Config(dict(data_check=dict(verify="everything"))), world_size=WORLD_SIZE)
        try:
            SafeRunner._check_data(runner, dict(type="ImageFolder"))
            outcome = "no error"
        except Exception as err:
            outcome = f"{type(err).__name__}: {err}"
        Path(out_dir, f"rank{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(200)
def test_data_check_failure_reaches_every_rank(tmp_path):
    """Rank 0 fails its data check with an error other than DataCheckError; rank 1 must not wait for it."""
    mp.spawn(data_check_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    rank0 = (tmp_path / "rank0.txt").read_text()
    rank1 = (tmp_path / "rank1.txt").read_text()
    assert rank0.startswith("ValueError: data_check.verify must be one of"), rank0
    assert rank1.startswith("DataCheckError: the data check failed on rank 0: ValueError: data_check.verify"), rank1


# ---------------------------------------------------------------------------------------
# DDP against one process on the same global batch and masks


class GlobalBatchMasks:
    """Stand-in for ``make_masks`` that draws the masks of the global batch and returns this rank's rows.

    Every process draws the same sequence from its own seeded generator, so rank r gets
    rows ``[r * B, (r + 1) * B)`` of exactly the masks a single process draws for the
    whole batch.
    """

    def __init__(self, draw, rank: int, global_batch: int, seed: int = 0) -> None:
        self.draw = draw
        self.rank = rank
        self.global_batch = global_batch
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch_size, num_patches, num_views, mask_ratio, strategy="orthogonal", device=None,
                 generator=None):
        ids_keep, mask = self.draw(self.global_batch, num_patches, num_views, mask_ratio, strategy, device,
                                   generator=self.generator)
        start = self.rank * batch_size
        return ids_keep[start:start + batch_size], mask[start:start + batch_size]


def build_demo_mimae(**weights: float):
    """Build the MI-MAE demo model with the loss weights ``weights`` (e.g. ``lambda_min=0.0``)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    import mimae.models  # noqa: F401  (registers the models)
    from mimae.registry import MODELS

    cfg = Config.fromfile(str(REPO_ROOT / MIMAE_DEMO))
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope("mimae"):
        return MODELS.build({**cfg.model, **weights})


def fixed_global_batch() -> torch.Tensor:
    return torch.randn(GLOBAL_BATCH, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def run_steps(model, forward, inputs, rank: int, global_batch: int) -> list[dict]:
    """Train ``STEPS`` SGD steps and return per step the logged terms and the gradients."""
    import mimae.models.mae as mae_module
    from mimae.models.masking import make_masks

    mae_module.make_masks = GlobalBatchMasks(make_masks, rank, global_batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    try:
        for _ in range(STEPS):
            losses = forward(inputs, mode="loss")
            total, log_vars = model.parse_losses(losses)
            optimizer.zero_grad()
            total.backward()
            grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
            steps.append(dict(log={k: float(v.detach()) for k, v in log_vars.items()}, grads=grads))
            optimizer.step()
    finally:
        mae_module.make_masks = make_masks
    return steps


def ddp_worker(rank: int, port: int, out_dir: str, settings: dict[str, dict]) -> None:
    from mmengine.model import MMDistributedDataParallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        local = GLOBAL_BATCH // WORLD_SIZE
        inputs = fixed_global_batch()[rank * local:(rank + 1) * local]
        results = {}
        for name, weights in settings.items():
            model = build_demo_mimae(**weights)
            # find_unused_parameters=False, as the runner's default: an unused parameter would
            # raise "Expected to have finished reduction" in the second step.
            wrapped = MMDistributedDataParallel(model, device_ids=None, broadcast_buffers=False,
                                                find_unused_parameters=False)
            results[name] = run_steps(model, wrapped, inputs, rank, GLOBAL_BATCH)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


# Each zero weight keeps its term in the graph, multiplied by 0, so DDP still gets a
# gradient for every parameter.
WEIGHT_SETTINGS = {
    "lambda_min=0": dict(lambda_min=0.0),
    "lambda_min=0.01": dict(lambda_min=0.01),
    "lambda_max=0": dict(lambda_max=0.0),
    "lambda_q=0": dict(lambda_q=0.0),
}


@pytest.fixture(scope="module")
def ddp_and_single(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(ddp_worker, args=(free_port(), str(out_dir), WEIGHT_SETTINGS), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    single = {}
    for name, weights in WEIGHT_SETTINGS.items():
        model = build_demo_mimae(**weights)
        single[name] = run_steps(model, model, fixed_global_batch(), 0, GLOBAL_BATCH)
    return ranks, single


def compare(ranks, single, key: str):
    """Return the largest differences of the rank-averaged losses and gradients from one process."""
    loss_gap, grad_gap = {}, {}
    for step in range(STEPS):
        reference = single[key][step]
        for term, value in reference["log"].items():
            averaged = sum(rank[key][step]["log"][term] for rank in ranks) / len(ranks)
            loss_gap[term] = max(loss_gap.get(term, 0.0), abs(averaged - value))
        for name, grad in reference["grads"].items():
            # DDP averages the gradients of the ranks, so every rank stores that average.
            ddp_grad = ranks[0][key][step]["grads"][name]
            assert torch.equal(ddp_grad, ranks[1][key][step]["grads"][name]), name
            scale = grad.abs().max().item() + 1e-12
            grad_gap[name] = max(grad_gap.get(name, 0.0), (ddp_grad - grad).abs().max().item() / scale)
    return loss_gap, grad_gap


LOSS_TERMS = ("loss", "loss_rec", "loss_mi_max", "loss_mi_min", "loss_q")


@pytest.mark.timeout(300)
def test_ddp_zero_weight_matches_single_process(ddp_and_single):
    ranks, single = ddp_and_single
    loss_gap, grad_gap = compare(ranks, single, "lambda_min=0")
    worst = max(grad_gap, key=grad_gap.get)
    worst_term = max(LOSS_TERMS + ("infonce",), key=loss_gap.get)
    print(f"lambda_min=0: largest loss gap {loss_gap[worst_term]:.2e} ({worst_term}), largest relative "
          f"gradient gap {grad_gap[worst]:.2e} ({worst}), club_estimate gap {loss_gap['club_estimate']:.2e}")

    for term in LOSS_TERMS:
        assert loss_gap[term] <= 1e-5, (term, loss_gap[term])
    # InfoNCE scores every anchor against every image of the global batch on every rank.
    assert loss_gap["infonce"] <= 1e-5
    assert grad_gap[worst] <= 1e-4, (worst, grad_gap[worst])
    assert len(grad_gap) == sum(1 for _ in build_demo_mimae(lambda_min=0.0).parameters() if _.requires_grad)


@pytest.mark.timeout(300)
def test_ddp_club_term_matches_single_process(ddp_and_single):
    ranks, single = ddp_and_single
    loss_gap, grad_gap = compare(ranks, single, "lambda_min=0.01")
    print(f"lambda_min=0.01: club_estimate gap {loss_gap['club_estimate']:.2e}, largest relative gradient gap "
          f"{max(grad_gap.values()):.2e}")

    assert loss_gap["club_estimate"] <= 1e-5, loss_gap["club_estimate"]
    assert max(grad_gap.values()) <= 1e-4


@pytest.mark.timeout(300)
@pytest.mark.parametrize("setting", ["lambda_max=0", "lambda_q=0"])
def test_ddp_other_zero_weights_match(setting, ddp_and_single):
    ranks, single = ddp_and_single
    loss_gap, grad_gap = compare(ranks, single, setting)
    for term in LOSS_TERMS:
        assert loss_gap[term] <= 1e-5, (term, loss_gap[term])
    assert max(grad_gap.values()) <= 1e-4
    weights = WEIGHT_SETTINGS[setting]
    assert len(grad_gap) == sum(1 for _ in build_demo_mimae(**weights).parameters() if _.requires_grad)
