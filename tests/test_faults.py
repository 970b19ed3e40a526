"""Interruption, hostile files, bad data and numerical faults, on the real training paths.

* Exact resume under SIGKILL: ``tools/train.py`` runs as a subprocess. It is killed with
  SIGKILL after a checkpoint exists (during a later iteration) and while it writes a
  checkpoint. ``--resume`` must then reproduce the per-iteration losses of an
  uninterrupted run exactly.
* Safe loading: a checkpoint that carries a pickled object with a side effect is rejected
  by every entry point that reads weights, and the side effect never happens.
* Bad data: broken copies of the bundled demo data are rejected before the first
  iteration with the file named, or handled and logged.
* Numerical faults: a NaN input, a NaN loss term or NaN weights stop the run without
  replacing the last good checkpoint.

The helpers below (:class:`PauseHook`, :class:`FaultHook`, :class:`SlowLocalBackend`) are
imported by the training subprocesses through ``custom_imports = ['test_faults']``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope
from PIL import Image

from mimae.registry import HOOKS

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MAE_DEMO = REPO_ROOT / "configs/pretrain/mae_vit-base-p16_8xb512-amp-coslr-1600e_in1k_demo.py"
MIMAE_DEMO = REPO_ROOT / "configs/pretrain/mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k_demo.py"
DET_DEMO = REPO_ROOT / "configs/coco/mask-rcnn_vit-b-p16-simplefpn_8xb8-lsj-amp-100e_coco_demo.py"
SEG_DEMO = REPO_ROOT / "configs/ade20k/upernet_vit-b-p16_8xb2-160k_ade20k-512x512_demo.py"
COCO_ROOT = REPO_ROOT / "data/demo/coco"
ADE_ROOT = REPO_ROOT / "data/demo/ade20k/ADEChallengeData2016"
PAUSE_SECONDS = 600
NO_VALIDATION = ["val_cfg=None", "val_dataloader=None", "val_evaluator=None"]


# ---------------------------------------------------------------------------------------
# fault-injection helpers, loaded by the training subprocesses


@HOOKS.register_module(force=True)
class PauseHook(Hook):
    """Write ``marker`` and sleep after iteration ``iteration`` has been trained and traced.

    Priority 80 runs it after ``LossTraceHook`` (LOW, 70) and before the checkpoint hook
    (VERY_LOW, 90), so the test can SIGKILL the run when the iteration's optimizer step is
    done and its checkpoint, if one is due, is not yet written.
    """

    priority = 80

    def __init__(self, iteration: int, marker: str) -> None:
        self.iteration = iteration
        self.marker = marker

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.iteration:
            Path(self.marker).touch()
            time.sleep(PAUSE_SECONDS)


class SlowLocalBackend(LocalBackend):
    """Local file backend that stops half-way through writing the file named ``pause_on``.

    It writes the first half of the bytes, flushes them to disk, writes ``marker`` and
    sleeps, so the test can SIGKILL the run while a checkpoint file is incomplete.
    """

    def __init__(self, pause_on: str = "", marker: str = "") -> None:
        super().__init__()
        self.pause_on = pause_on
        self.marker = marker

    def put(self, obj: bytes, filepath) -> None:
        if os.path.basename(str(filepath)) != self.pause_on:
            return super().put(obj, filepath)
        with open(filepath, "wb") as f:
            f.write(obj[: len(obj) // 2])
            f.flush()
            os.fsync(f.fileno())
            Path(self.marker).touch()
            time.sleep(PAUSE_SECONDS)
            f.write(obj[len(obj) // 2:])


register_backend("slow_local_for_tests", SlowLocalBackend, force=True)


@HOOKS.register_module(force=True)
class FaultHook(Hook):
    """Inject one numerical fault at iteration ``iteration`` (1-based) of a pretraining run.

    ``input``: the image batch reaching the patch embedding becomes NaN.
    ``term``: only CLUB's estimate (``loss_mi_min``) becomes NaN.
    ``weights``: after the optimizer step, one encoder weight becomes NaN while the loss
    of the iteration stays finite.
    ``rank`` limits the fault to one process of a distributed run.
    """

    priority = "NORMAL"

    def __init__(self, fault: str, iteration: int, rank: int | None = None) -> None:
        if fault not in ("input", "term", "weights"):
            raise ValueError(f"unknown fault {fault!r}")
        self.fault = fault
        self.iteration = iteration
        self.rank = rank
        self._handle = None

    def _active(self, runner) -> bool:
        return runner.iter + 1 == self.iteration and self.rank in (None, runner.rank)

    @staticmethod
    def _model(runner):
        return runner.model.module if hasattr(runner.model, "module") else runner.model

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if not self._active(runner):
            return
        model = self._model(runner)
        if self.fault == "input":
            self._handle = model.encoder.patch_embed.register_forward_pre_hook(
                lambda module, args: (torch.full_like(args[0], float("nan")),))
        elif self.fault == "term":
            self._handle = model.mi_min.register_forward_hook(
                lambda module, args, out: {**out, "estimate": out["estimate"] * float("nan")})

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._active(runner) and self.fault == "weights":
            with torch.no_grad():
                self._model(runner).encoder.patch_embed.proj.weight[0, 0, 0, 0] = float("nan")


# ---------------------------------------------------------------------------------------
# running tools/train.py


def write_config(path: Path, base: Path, hooks: list, imports: list, extra: str = "") -> Path:
    """Write a config that inherits ``base`` and sets ``custom_hooks`` and ``custom_imports``."""
    path.write_text(
        f"_base_ = [{str(base)!r}]\n"
        f"custom_imports = dict(imports={imports!r}, allow_failed_imports=False)\n"
        f"custom_hooks = {hooks!r}\n{extra}\n"
    )
    return path


PRETRAIN_IMPORTS = ["mimae.models", "pretrain", "test_faults"]
DOWNSTREAM_IMPORTS = ["mimae.downstream", "test_faults"]
_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _isolate_test():
    """Restore the default registry scope and stop trainers a failed test left running."""
    # A Runner makes its config's scope (mmdet, mmseg) the process-wide default. Later tests
    # in this process expect the previous default back, so it is restored here the way
    # MMEngine's DefaultScope.overwrite_default_scope restores it.
    scopes = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict = scopes
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            kill_tree(proc)


def start_train(config: Path, work_dir: Path, options: list, log: Path, resume: bool = False) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{REPO_ROOT}:{REPO_ROOT / 'tests'}", OMP_NUM_THREADS="1")
    command = [PYTHON, "tools/train.py", str(config), "--work-dir", str(work_dir)]
    command += ["--resume"] if resume else []
    command += ["--cfg-options", *options]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    _started.append(proc)
    return proc


def finish(proc: subprocess.Popen, log: Path, timeout: float = 400) -> str:
    proc.wait(timeout=timeout)
    text = log.read_text()
    assert proc.returncode == 0, text[-6000:]
    return text


def wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended (rc {proc.returncode}) before {path.name}:\n" + \
            log.read_text()[-6000:]
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.05)


def child_pids(pid: int) -> list[int]:
    """Return the pids of all descendants of ``pid`` (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the trainer, then its data-loader workers, each by pid."""
    children = child_pids(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def read_trace(work_dir: Path) -> list[dict]:
    with open(work_dir / "loss_trace.json") as f:
        return json.load(f)


def assert_same_trace(got: list[dict], expected: list[dict]) -> None:
    assert [r["iter"] for r in got] == [r["iter"] for r in expected]
    for got_record, expected_record in zip(got, expected):
        assert set(got_record) == set(expected_record), got_record["iter"]
        for term, value in expected_record.items():
            assert got_record[term] == value, (got_record["iter"], term, got_record[term], value)


def assert_latest_is(work_dir: Path, name: str) -> None:
    from mimae.engine.runner import is_complete_checkpoint, latest_complete_checkpoint

    pointer = (work_dir / "last_checkpoint").read_text()
    assert pointer == str(work_dir / name)
    assert is_complete_checkpoint(pointer)
    assert latest_complete_checkpoint(str(work_dir)) == pointer


# ---------------------------------------------------------------------------------------
# exact resume under SIGKILL: pretraining


def pretrain_options(num_workers: int, max_iters: int = 5) -> list:
    return [f"train_cfg.max_iters={max_iters}", "default_hooks.checkpoint.interval=2",
            "randomness.deterministic=True", f"train_dataloader.num_workers={num_workers}",
            f"train_dataloader.persistent_workers={num_workers > 0}"]


PRETRAIN_HOOKS = [dict(type="NonFiniteLossHook"), dict(type="LossTraceHook")]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("num_workers", [0, 1])
def test_pretrain_sigkill_resume_exact(num_workers, tmp_path):
    """Kill once during iteration 3 and once while iter_4.pth is half written, then finish."""
    options = pretrain_options(num_workers)
    plain = write_config(tmp_path / "plain.py", MIMAE_DEMO, PRETRAIN_HOOKS, PRETRAIN_IMPORTS)
    reference = start_train(plain, tmp_path / "reference", options, tmp_path / "reference.log")

    work_dir = tmp_path / "run"
    marker = tmp_path / "paused_iter_3"
    pause = write_config(tmp_path / "pause.py", MIMAE_DEMO,
                         PRETRAIN_HOOKS + [dict(type="PauseHook", iteration=3, marker=str(marker))],
                         PRETRAIN_IMPORTS)
    first = start_train(pause, work_dir, options, tmp_path / "first.log")
    wait_for(marker, first, tmp_path / "first.log")
    kill_tree(first)
    # Killed after iteration 3: iter_2.pth is the latest, and the trace was flushed when it was saved.
    assert_latest_is(work_dir, "iter_2.pth")
    assert [r["iter"] for r in read_trace(work_dir)] == [1, 2]

    saving_marker = tmp_path / "writing_iter_4"
    slow_save = write_config(
        tmp_path / "slow_save.py", MIMAE_DEMO, PRETRAIN_HOOKS, PRETRAIN_IMPORTS,
        extra=f"default_hooks = dict(checkpoint=dict(backend_args=dict(backend='slow_local_for_tests', "
              f"pause_on='iter_4.pth.partial', marker={str(saving_marker)!r})))")
    second = start_train(slow_save, work_dir, options, tmp_path / "second.log", resume=True)
    wait_for(saving_marker, second, tmp_path / "second.log")
    kill_tree(second)
    # Killed while writing iter_4: the half file keeps its temporary name, and iter_2.pth
    # survives although max_keep_ckpts=1 (MMEngine's hook would have deleted it first).
    assert (work_dir / "iter_4.pth.partial").is_file()
    assert not (work_dir / "iter_4.pth").exists()
    assert_latest_is(work_dir, "iter_2.pth")
    second_trace = read_trace(work_dir)

    log = finish(start_train(plain, work_dir, options, tmp_path / "third.log", resume=True),
                 tmp_path / "third.log")
    assert "removed iter_4.pth.partial" in log
    assert f"resuming from {work_dir / 'iter_2.pth'}" in log
    assert "Weights only load failed" not in log
    finish(reference, tmp_path / "reference.log")

    expected = read_trace(tmp_path / "reference")
    assert [r["iter"] for r in expected] == [1, 2, 3, 4, 5]
    assert_same_trace(read_trace(work_dir), expected)
    # The second run's iterations 3 and 4, trained after the first resume, match as well.
    assert_same_trace(second_trace, expected[:4])
    assert_latest_is(work_dir, "iter_5.pth")
    assert sorted(p.name for p in work_dir.glob("*.pth*")) == ["iter_5.pth"]


# The published pretraining recipes are epoch-based: 3 epochs of 3 iterations (30 demo
# images, batch 8, last partial batch dropped), a checkpoint after each epoch, and a
# data-loader worker that persists across epochs as in the recipes.
EPOCH_CONFIG = """
train_dataloader = dict(batch_size=8, drop_last=True, num_workers=1, persistent_workers=True,
                        sampler=dict(_delete_=True, type={sampler!r}, shuffle=True))
train_cfg = dict(_delete_=True, type="EpochBasedTrainLoop", max_epochs=3)
default_hooks = dict(checkpoint=dict(by_epoch=True, interval=1, max_keep_ckpts=1, save_last=True{backend}))
log_processor = dict(by_epoch=True)
"""
EPOCH_OPTIONS = ["randomness.deterministic=True"]


def epoch_config(path: Path, sampler: str, hooks: list, backend: str = "") -> Path:
    return write_config(path, MIMAE_DEMO, PRETRAIN_HOOKS + hooks, PRETRAIN_IMPORTS,
                        extra=EPOCH_CONFIG.format(sampler=sampler, backend=backend))


def start_reference_and_kill(tmp_path: Path, sampler: str, iteration: int):
    """Start the uninterrupted reference run, and a run that is SIGKILLed after ``iteration``.

    Returns the plain config, the still running reference process and the killed run's work dir.
    """
    plain = epoch_config(tmp_path / "plain.py", sampler, [])
    reference = start_train(plain, tmp_path / "reference", EPOCH_OPTIONS, tmp_path / "reference.log")
    work_dir = tmp_path / "run"
    marker = tmp_path / f"paused_iter_{iteration}"
    pause = epoch_config(tmp_path / "pause.py", sampler,
                         [dict(type="PauseHook", iteration=iteration, marker=str(marker))])
    first = start_train(pause, work_dir, EPOCH_OPTIONS, tmp_path / "first.log")
    wait_for(marker, first, tmp_path / "first.log")
    kill_tree(first)
    return plain, reference, work_dir


@pytest.mark.timeout(900)
def test_epoch_sigkill_resume_exact(tmp_path):
    """Kill in the middle of epoch 2 and while epoch_2.pth is half written, then finish."""
    plain, reference, work_dir = start_reference_and_kill(tmp_path, "SeededSampler", iteration=5)
    assert_latest_is(work_dir, "epoch_1.pth")
    assert [r["iter"] for r in read_trace(work_dir)] == [1, 2, 3]

    saving_marker = tmp_path / "writing_epoch_2"
    backend = (f", backend_args=dict(backend='slow_local_for_tests', pause_on='epoch_2.pth.partial', "
               f"marker={str(saving_marker)!r})")
    slow_save = epoch_config(tmp_path / "slow_save.py", "SeededSampler", [], backend)
    second = start_train(slow_save, work_dir, EPOCH_OPTIONS, tmp_path / "second.log", resume=True)
    wait_for(saving_marker, second, tmp_path / "second.log")
    kill_tree(second)
    assert not (work_dir / "epoch_2.pth").exists()
    assert_latest_is(work_dir, "epoch_1.pth")
    second_trace = read_trace(work_dir)

    log = finish(start_train(plain, work_dir, EPOCH_OPTIONS, tmp_path / "third.log", resume=True),
                 tmp_path / "third.log")
    assert "removed epoch_2.pth.partial" in log
    assert f"resuming from {work_dir / 'epoch_1.pth'}" in log
    finish(reference, tmp_path / "reference.log")

    expected = read_trace(tmp_path / "reference")
    assert [r["iter"] for r in expected] == list(range(1, 10))
    assert_same_trace(read_trace(work_dir), expected)
    assert_same_trace(second_trace, expected[:6])
    assert_latest_is(work_dir, "epoch_3.pth")


@pytest.mark.timeout(900)
def test_default_sampler_epoch_resume_differs(tmp_path):
    """Why the recipes use SeededSampler: with MMEngine's DefaultSampler and a persistent
    worker, a resumed epoch starts a fresh worker whose crops differ from the uninterrupted run."""
    plain, reference, work_dir = start_reference_and_kill(tmp_path, "DefaultSampler", iteration=4)
    finish(start_train(plain, work_dir, EPOCH_OPTIONS, tmp_path / "second.log", resume=True),
           tmp_path / "second.log")
    finish(reference, tmp_path / "reference.log")

    expected, got = read_trace(tmp_path / "reference"), read_trace(work_dir)
    assert_same_trace(got[:3], expected[:3])
    assert [r["loss_rec"] for r in got[3:]] != [r["loss_rec"] for r in expected[3:]]


# ---------------------------------------------------------------------------------------
# exact resume under SIGKILL: detection and segmentation


DOWNSTREAM_OPTIONS = ["train_cfg.max_iters=4", "default_hooks.checkpoint.interval=2", "randomness.seed=0",
                      "randomness.deterministic=True", "model.backbone.init_cfg=None", *NO_VALIDATION]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("config", [DET_DEMO, SEG_DEMO], ids=["detection", "segmentation"])
def test_downstream_sigkill_resume_exact(config, tmp_path):
    """Kill after iteration 4 (checkpoint iter_2 on disk), resume, and compare iterations 3 and 4.

    The killed process trained iterations 1 to 4 without interruption, so its own trace is
    the uninterrupted reference. The resumed run recomputes 3 and 4 from iter_2.pth.
    """
    hooks = [dict(type="mimae.NonFiniteLossHook"), dict(type="mimae.LossTraceHook", flush_interval=1)]
    marker = tmp_path / "paused_iter_4"
    pause = write_config(tmp_path / "pause.py", config,
                         hooks + [dict(type="mimae.PauseHook", iteration=4, marker=str(marker))],
                         DOWNSTREAM_IMPORTS)
    work_dir = tmp_path / "run"
    first = start_train(pause, work_dir, DOWNSTREAM_OPTIONS, tmp_path / "first.log")
    wait_for(marker, first, tmp_path / "first.log")
    reference = read_trace(work_dir)
    kill_tree(first)
    assert [r["iter"] for r in reference] == [1, 2, 3, 4]
    assert_latest_is(work_dir, "iter_2.pth")

    plain = write_config(tmp_path / "plain.py", config, hooks, DOWNSTREAM_IMPORTS)
    log = finish(start_train(plain, work_dir, DOWNSTREAM_OPTIONS, tmp_path / "second.log", resume=True),
                 tmp_path / "second.log")
    assert f"resuming from {work_dir / 'iter_2.pth'}" in log
    resumed = read_trace(work_dir)
    assert_same_trace(resumed, reference)
    assert all(math.isfinite(r["loss"]) for r in resumed)
    assert_latest_is(work_dir, "iter_4.pth")


# ---------------------------------------------------------------------------------------
# resume on torch >= 2.6, and resume preferred over load_from


def run_in_process(config: Path, work_dir: Path, iters: int, *extra, resume: bool = False) -> None:
    import train as train_tool

    argv = [str(config), "--work-dir", str(work_dir)]
    argv += ["--resume"] if resume else []
    # A unique experiment name: runners started within one second would otherwise share
    # MMEngine's logger instance, and with it the first run's log file.
    argv += ["--cfg-options", f"experiment_name={work_dir.parent.name}_{time.monotonic_ns()}",
             f"train_cfg.max_iters={iters}", "default_hooks.checkpoint.interval=1",
             "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
             "randomness.deterministic=True", *extra]
    train_tool.main(argv)


def run_log(work_dir: Path) -> str:
    return "".join(path.read_text() for path in sorted(work_dir.glob("*/*.log")))


def test_resume_after_one_iteration(tmp_path):
    from mimae.engine.runner import load_run_checkpoint

    work_dir = tmp_path / "run"
    run_in_process(MAE_DEMO, work_dir, 1)
    first = work_dir / "iter_1.pth"
    # torch >= 2.6 defaults to weights_only=True, and the file contains numpy values
    # (random state, message hub) that only the runner's allow-list admits.
    assert torch.__version__ >= "2.6"
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(first, weights_only=True)
    saved = load_run_checkpoint(str(first))
    assert saved["meta"]["iter"] == 1
    assert isinstance(saved["meta"]["random_state"]["numpy"][1], np.ndarray)
    assert saved["message_hub"]["log_scalars"]["train/loss"]["__history_buffer__"]

    run_in_process(MAE_DEMO, work_dir, 2, "resume=True")

    log = run_log(work_dir)
    assert f"resuming from {first}" in log
    assert "Weights only load failed" not in log
    final = load_run_checkpoint(str(work_dir / "iter_2.pth"))
    assert final["meta"]["iter"] == 2
    # AdamW counted 2 steps and the warm-up scheduler 2 iterations: both continued from iteration 1.
    assert {float(state["step"]) for state in final["optimizer"]["state"].values()} == {2.0}
    assert final["param_schedulers"][0]["last_step"] == 2


def test_resume_wins_over_load_from(tmp_path):
    from convert_checkpoint import convert

    from mimae.engine.runner import load_run_checkpoint

    work_dir = tmp_path / "run"
    run_in_process(MAE_DEMO, work_dir, 1)
    pretrained = tmp_path / "pretrained.pth"
    convert(str(work_dir / "iter_1.pth"), str(pretrained))

    # Both set in the config, as a user would write them, not through --resume.
    run_in_process(MAE_DEMO, work_dir, 2, f"load_from={pretrained}", "resume=True")

    log = run_log(work_dir)
    assert (f"resuming from {work_dir / 'iter_1.pth'}, the latest checkpoint in work_dir; "
            f"load_from={pretrained} is ignored") in log
    final = load_run_checkpoint(str(work_dir / "iter_2.pth"))
    assert final["meta"]["iter"] == 2
    assert {float(state["step"]) for state in final["optimizer"]["state"].values()} == {2.0}


# ---------------------------------------------------------------------------------------
# safe loading


class SideEffect:
    """Pickled payload that runs ``touch MARKER`` when fully unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile(tmp_path):
    """Return a checkpoint that looks like a Runner checkpoint plus a code-running object, and its marker."""
    from mimae.models import VisionTransformer

    marker = tmp_path / "side_effect_ran"
    encoder = VisionTransformer(img_size=64, embed_dim=192, depth=4, num_heads=3)
    path = tmp_path / "hostile.pth"
    torch.save({"model": encoder.state_dict(), "state_dict": encoder.state_dict(),
                "meta": {"iter": 1, "epoch": 0}, "payload": SideEffect(marker)}, path)
    return path, marker


def test_hostile_file_runs_code_when_unpickled(hostile):
    """Control: full unpickling of the hostile file does run its payload."""
    path, marker = hostile
    torch.load(path, weights_only=False)
    assert marker.exists()


# Every entry point names the disallowed global of the hostile payload.
REJECTED = r"(rejected checkpoint|cannot read .* as a tensor-only weight file).*posix\.system"


def test_hostile_file_rejected_by_backbones(hostile):
    from mmengine.registry import DefaultScope

    from mimae.checkpoint import CheckpointError
    from mimae.downstream import ViTDet, ViTSeg

    path, marker = hostile
    init_cfg = dict(type="Pretrained", checkpoint=str(path))
    with DefaultScope.overwrite_default_scope("mmdet"):
        detector_backbone = ViTDet(img_size=(64, 64), embed_dim=192, depth=4, num_heads=3, window_size=2,
                                   global_block_indexes=(1, 3), pretrain_img_size=64, init_cfg=init_cfg)
        with pytest.raises(CheckpointError, match=REJECTED):
            detector_backbone.init_weights()
    with DefaultScope.overwrite_default_scope("mmseg"):
        segmentation_backbone = ViTSeg(img_size=(64, 64), embed_dim=192, depth=4, num_heads=3, out_indices=(0, 1, 2, 3),
                                       init_cfg=init_cfg)
        with pytest.raises(CheckpointError, match=REJECTED):
            segmentation_backbone.init_weights()
    assert not marker.exists()


def test_hostile_file_rejected_by_tools(hostile, tmp_path):
    import convert_checkpoint
    import readout
    import visualize_reconstruction

    from mimae.checkpoint import CheckpointError
    from mimae.engine.runner import UnsafeCheckpointError

    path, marker = hostile
    out = tmp_path / "encoder.pth"
    with pytest.raises(UnsafeCheckpointError, match="nothing in it ran"):
        convert_checkpoint.main([str(path), str(out)])
    assert not out.exists()
    with pytest.raises(CheckpointError, match=REJECTED):
        readout.main([str(path), str(tmp_path)])
    with pytest.raises(UnsafeCheckpointError, match="unsupported GLOBAL posix.system"):
        visualize_reconstruction.main([str(path), str(COCO_ROOT / "images"), "--out", str(tmp_path / "r.png")])
    assert not marker.exists()


@pytest.mark.parametrize("how", ["--resume FILE", "load_from", "in work_dir"])
def test_hostile_file_rejected_by_runner(how, hostile, tmp_path):
    from mimae.engine.runner import UnsafeCheckpointError

    path, marker = hostile
    work_dir = tmp_path / "run"
    work_dir.mkdir()
    if how == "--resume FILE":
        import train as train_tool

        argv = [str(MAE_DEMO), "--work-dir", str(work_dir), "--resume", str(path),
                "--cfg-options", "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False"]
        with pytest.raises(UnsafeCheckpointError, match=REJECTED):
            train_tool.main(argv)
    elif how == "load_from":
        with pytest.raises(UnsafeCheckpointError, match=REJECTED):
            run_in_process(MAE_DEMO, work_dir, 1, f"load_from={path}")
    else:
        # A checkpoint in the work dir replaced by the hostile file: the run's own files are not trusted either.
        shutil.copy(path, work_dir / "iter_9.pth")
        (work_dir / "last_checkpoint").write_text(str(work_dir / "iter_9.pth"))
        with pytest.raises(UnsafeCheckpointError, match=REJECTED):
            run_in_process(MAE_DEMO, work_dir, 10, resume=True)
    assert not marker.exists()
    assert not list(work_dir.glob("iter_1*.pth"))


# ---------------------------------------------------------------------------------------
# numerical faults


@pytest.mark.parametrize("fault,expected", [
    ("input", r"non-finite loss at iteration 2: .*loss_rec=nan"),
    ("term", r"non-finite loss at iteration 2: club_estimate=nan, loss_mi_min=nan, loss=nan\."),
    ("weights", r"parameter\(s\) hold NaN or infinity at iteration 2 \(first: encoder\.patch_embed\.proj\.weight\)"),
], ids=["input", "term", "weights"])
def test_nan_stops_before_checkpoint(fault, expected, tmp_path):
    """A fault at iteration 2, which is due a checkpoint (interval 1): iter_1.pth must stay the latest."""
    from mimae.engine.runner import load_run_checkpoint

    config = write_config(tmp_path / "fault.py", MIMAE_DEMO,
                          PRETRAIN_HOOKS + [dict(type="FaultHook", fault=fault, iteration=2)], PRETRAIN_IMPORTS)
    work_dir = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=expected) as error:
        run_in_process(config, work_dir, 3)

    message = str(error.value)
    assert str(work_dir / "iter_1.pth") in message
    if fault == "term":
        assert "loss_rec" not in message
    assert not (work_dir / "iter_2.pth").exists()
    assert not list(work_dir.glob("*.partial"))
    assert_latest_is(work_dir, "iter_1.pth")
    good = load_run_checkpoint(str(work_dir / "iter_1.pth"))
    assert good["meta"]["iter"] == 1
    assert all(torch.isfinite(value).all() for value in good["state_dict"].values())


def test_resume_after_nan_stop(tmp_path):
    config = write_config(tmp_path / "fault.py", MIMAE_DEMO,
                          PRETRAIN_HOOKS + [dict(type="FaultHook", fault="input", iteration=2)], PRETRAIN_IMPORTS)
    work_dir = tmp_path / "run"
    with pytest.raises(FloatingPointError):
        run_in_process(config, work_dir, 2)

    run_in_process(MIMAE_DEMO, work_dir, 2, resume=True)

    trace = read_trace(work_dir)
    assert [r["iter"] for r in trace] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in trace)
    assert_latest_is(work_dir, "iter_2.pth")


# ---------------------------------------------------------------------------------------
# bad data: pretraining folder


def _pretrain_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data" / "images"
    folder.mkdir(parents=True)
    good = sorted((COCO_ROOT / "images").glob("*.jpg"))[:3]
    for path in good:
        shutil.copy(path, folder / path.name)
    data = good[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def _folder_options(folder: Path) -> list:
    return [f"train_dataloader.dataset.data_root={folder.parent}", "train_dataloader.dataset.ann_file=",
            "train_dataloader.dataset.data_prefix.img_path=images", "train_dataloader.dataset.verify=header"]


def test_bad_pretraining_images_named(tmp_path):
    folder = _pretrain_folder(tmp_path)
    work_dir = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        run_in_process(MAE_DEMO, work_dir, 1, *_folder_options(folder))

    message = str(error.value)
    assert "2 of 5 images cannot be used" in message
    assert f"{folder / 'truncated.jpg'}: cannot decode" in message
    assert f"{folder / 'empty.jpg'}: empty file (0 bytes)" in message
    assert "on_bad_image='skip'" in message
    assert not (work_dir / "loss_trace.json").exists()


def test_bad_pretraining_images_skipped(tmp_path):
    folder = _pretrain_folder(tmp_path)
    work_dir = tmp_path / "run"
    run_in_process(MAE_DEMO, work_dir, 1, *_folder_options(folder), "train_dataloader.dataset.on_bad_image=skip")

    assert "skipping 2 of 5 unreadable images" in run_log(work_dir)
    assert [r["iter"] for r in read_trace(work_dir)] == [1]


# ---------------------------------------------------------------------------------------
# bad data: COCO


def copy_coco(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    shutil.copytree(COCO_ROOT, root)
    return root


def train_json(root: Path) -> Path:
    return root / "annotations/instances_train.json"


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def first_image(root: Path) -> tuple[Path, dict]:
    data = json.loads(train_json(root).read_text())
    image = data["images"][0]
    return root / "images" / image["file_name"], image


def check_coco_copy(root: Path, verify: str = "header"):
    """Run the data check on the detection demo's training set rooted at ``root``."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    import mimae.downstream  # noqa: F401
    from mimae.data_checks import check_dataset_config

    cfg = Config.fromfile(str(DET_DEMO))
    dataset = cfg.train_dataloader.dataset
    dataset.data_root = str(root) + "/"
    with DefaultScope.overwrite_default_scope("mmdet"):
        return check_dataset_config(dataset.to_dict(), verify)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _unknown_category(data: dict) -> None:
    data["annotations"][0]["category_id"] = 999


def _empty_segmentation(data: dict) -> None:
    next(a for a in data["annotations"] if not a["iscrowd"])["segmentation"] = []


def _drop_annotations(data: dict) -> None:
    data["annotations"] = []


def _drop_images_key(data: dict) -> None:
    del data["images"]


def _image_of_annotation(data: dict, ann: dict) -> dict:
    return next(image for image in data["images"] if image["id"] == ann["image_id"])


COCO_FATAL_CASES = {
    "truncated image": (lambda root: _truncate(first_image(root)[0]), r"\.jpg: cannot decode"),
    "zero-byte image": (lambda root: first_image(root)[0].write_bytes(b""), r"\.jpg: empty file \(0 bytes\)"),
    "corrupt image": (lambda root: first_image(root)[0].write_bytes(b"\xff\xd8\xff\xe0 not a jpeg"),
                      r"\.jpg: cannot decode"),
    "missing annotation file": (lambda root: train_json(root).unlink(), r"annotation file not found"),
    "malformed json": (lambda root: train_json(root).write_text('{"images": [1, 2'), r"not valid JSON"),
    "json without images": (lambda root: edit_json(train_json(root), _drop_images_key),
                            r"'images' is missing or not a list"),
    "unknown category id": (lambda root: edit_json(train_json(root), _unknown_category),
                            r"category_id 999 is not defined in 'categories'"),
    "empty segmentation": (lambda root: edit_json(train_json(root), _empty_segmentation),
                           r"segmentation is empty or missing.*KeyError 'mask'"),
    "no annotations left": (lambda root: edit_json(train_json(root), _drop_annotations),
                            r"filter_cfg \(filter_empty_gt=True, min_size=32\) leaves no image of 30"),
    "empty image folder": (lambda root: [p.unlink() for p in (root / "images").iterdir()],
                           r"30 problem\(s\)(.|\n)*file not found(.|\n)*and 10 more"),
}


@pytest.mark.parametrize("case", list(COCO_FATAL_CASES))
def test_coco_fault_rejected_before_training(case, tmp_path):
    from mimae.data_checks import DataCheckError

    root = copy_coco(tmp_path)
    breaking, expected = COCO_FATAL_CASES[case]
    breaking(root)
    with pytest.raises(DataCheckError, match=expected) as error:
        check_coco_copy(root)
    assert str(root) in str(error.value)


def test_coco_rotated_image_rejected(tmp_path):
    from mimae.data_checks import DataCheckError

    root = copy_coco(tmp_path)
    path, image = first_image(root)
    with Image.open(path) as img:
        exif = img.getexif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
        img.save(path, exif=exif, quality=95)
    with pytest.raises(DataCheckError, match=f"{path.name}: the json says {image['width']} x {image['height']} "
                                             f"but EXIF orientation rotates it"):
        check_coco_copy(root)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record) -> None:
        self.messages.append(record.getMessage())


def test_coco_handled_faults_logged(tmp_path):
    from mmengine.logging import MMLogger

    root = copy_coco(tmp_path)
    path, image = first_image(root)
    with Image.open(path) as img:
        img.convert("L").save(path)
    second = root / "images" / json.loads(train_json(root).read_text())["images"][1]["file_name"]
    with Image.open(second) as img:
        img.convert("CMYK").save(second)

    def boxes_out_of_image(data):
        anns = [a for a in data["annotations"] if not a["iscrowd"]]
        width = _image_of_annotation(data, anns[0])["width"]
        anns[0]["bbox"] = [width + 10.0, 5.0, 20.0, 20.0]  # entirely right of the image
        anns[1]["bbox"][2] += _image_of_annotation(data, anns[1])["width"]  # runs past the right border
        anns[2]["bbox"][2] = 0.5  # narrower than 1 px

    edit_json(train_json(root), boxes_out_of_image)
    collect = _Collect()
    logger = MMLogger.get_current_instance()
    logger.addHandler(collect)
    try:
        (report,) = check_coco_copy(root)
    finally:
        logger.removeHandler(collect)

    assert report.problems == []
    notes = dict(report.notes)
    # The demo set already contains one grayscale photo (000000000086.jpg).
    assert notes["images in PIL mode L, decoded to 3-channel color by the loader"] == 2
    assert notes["images in PIL mode CMYK, decoded to 3-channel color by the loader"] == 1
    assert notes["boxes entirely outside their image, dropped by mmdet"] == 1
    assert notes["boxes narrower or lower than 1 px or with area <= 0, dropped by mmdet"] == 1
    assert sum(v for k, v in notes.items() if k.startswith("boxes extending")) == 1
    logged = "\n".join(collect.messages)
    assert "1 x boxes entirely outside their image, dropped by mmdet (first:" in logged
    assert "30 images checked, 6 handled faults, 0 problems" in logged

    # mmdet's own loader turns the grayscale and the CMYK file into 3-channel images of the json's size.
    from mmdet.registry import TRANSFORMS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    load_image = TRANSFORMS.build(dict(type="LoadImageFromFile"))
    for file_path in (path, second):
        with Image.open(file_path) as img:
            width, height = img.size
        loaded = load_image(dict(img_path=str(file_path)))["img"]
        assert loaded.shape == (height, width, 3)


def test_coco_empty_segmentation_breaks_mmdet_loader(tmp_path):
    """Without the check, mmdet 3.3 accepts the file and fails only when the image is loaded."""
    from mmdet.datasets import CocoDataset

    root = copy_coco(tmp_path)
    edit_json(train_json(root), _empty_segmentation)
    data = json.loads(train_json(root).read_text())
    image_id = next(a for a in data["annotations"] if not a["iscrowd"] and not a["segmentation"])["image_id"]
    dataset = CocoDataset(data_root=str(root), ann_file="annotations/instances_train.json",
                          data_prefix=dict(img="images/"),
                          pipeline=[dict(type="mmdet.LoadImageFromFile"),
                                    dict(type="mmdet.LoadAnnotations", with_bbox=True, with_mask=True)])
    index = next(i for i in range(len(dataset)) if dataset.get_data_info(i)["img_id"] == image_id)
    with pytest.raises(KeyError, match="mask"):
        dataset.prepare_data(index)


def test_coco_fault_stops_runner_before_first_iteration(tmp_path):
    """The real training path: tools/train.py on the detection demo config with a broken copy."""
    from mimae.data_checks import DataCheckError

    root = copy_coco(tmp_path)
    edit_json(train_json(root), _unknown_category)
    work_dir = tmp_path / "run"
    import train as train_tool

    argv = [str(DET_DEMO), "--work-dir", str(work_dir), "--cfg-options", "model.backbone.init_cfg=None",
            f"train_dataloader.dataset.data_root={root}/", *NO_VALIDATION]
    with pytest.raises(DataCheckError, match="category_id 999"):
        train_tool.main(argv)
    assert not list(work_dir.glob("*.pth"))


# ---------------------------------------------------------------------------------------
# bad data: ADE20K


def copy_ade(tmp_path: Path) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    shutil.copytree(ADE_ROOT, root)
    return root


def check_ade_copy(root: Path, verify: str = "header"):
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    import mimae.downstream  # noqa: F401
    from mimae.data_checks import check_dataset_config

    cfg = Config.fromfile(str(SEG_DEMO))
    dataset = cfg.train_dataloader.dataset
    dataset.data_root = str(root)
    with DefaultScope.overwrite_default_scope("mmseg"):
        return check_dataset_config(dataset.to_dict(), verify)


LABEL = "annotations/validation/ADE_val_00000001.png"
IMAGE = "images/validation/ADE_val_00000001.jpg"


def _resize_label(root: Path) -> None:
    with Image.open(root / LABEL) as label:
        label.resize((label.width // 2, label.height // 2), Image.NEAREST).save(root / LABEL)


def _label_value(root: Path, value: int) -> None:
    with Image.open(root / LABEL) as label:
        pixels = np.asarray(label).copy()
    pixels[0, :5] = value
    Image.fromarray(pixels).save(root / LABEL)


def _rgb_label(root: Path) -> None:
    with Image.open(root / LABEL) as label:
        label.convert("RGB").save(root / LABEL)


ADE_FATAL_CASES = {
    "label map of wrong size": (_resize_label, r"ADE_val_00000001\.png: label map is 341 x 256 but its image is "
                                               r"683 x 512"),
    "label value 151": (lambda root: _label_value(root, 151), r"ADE_val_00000001\.png: label values \[151\] are "
                                                              r"outside 0\.\.150"),
    "label value 200": (lambda root: _label_value(root, 200), r"label values \[200\]"),
    "RGB label map": (_rgb_label, r"label map in PIL mode RGB has more than one channel"),
    "missing label map": (lambda root: (root / LABEL).unlink(), r"label map of ADE_val_00000001\.jpg not found"),
    "truncated image": (lambda root: _truncate(root / IMAGE), r"ADE_val_00000001\.jpg: cannot decode"),
    "zero-byte image": (lambda root: (root / IMAGE).write_bytes(b""), r"empty file \(0 bytes\)"),
    "empty image folder": (lambda root: [p.unlink() for p in (root / "images/validation").iterdir()],
                           r"no images with suffix '\.jpg'"),
    "missing label folder": (lambda root: shutil.rmtree(root / "annotations"), r"label map folder not found"),
}


@pytest.mark.parametrize("case", list(ADE_FATAL_CASES))
def test_ade20k_fault_rejected_before_training(case, tmp_path):
    from mimae.data_checks import DataCheckError

    root = copy_ade(tmp_path)
    breaking, expected = ADE_FATAL_CASES[case]
    breaking(root)
    with pytest.raises(DataCheckError, match=expected) as error:
        check_ade_copy(root)
    assert str(root) in str(error.value)


def test_ade20k_ignore_value_and_grayscale_accepted(tmp_path):
    root = copy_ade(tmp_path)
    _label_value(root, 255)  # the ignore index stays valid with reduce_zero_label
    with Image.open(root / IMAGE) as img:
        img.convert("L").save(root / IMAGE)
    (report,) = check_ade_copy(root)
    assert report.problems == []
    assert report.notes["images in PIL mode L, decoded to 3-channel color by the loader"] == 1
    assert report.num_images == 3


def test_ade20k_fault_stops_runner_before_first_iteration(tmp_path):
    from mimae.data_checks import DataCheckError

    root = copy_ade(tmp_path)
    _label_value(root, 151)
    work_dir = tmp_path / "run"
    import train as train_tool

    argv = [str(SEG_DEMO), "--work-dir", str(work_dir), "--cfg-options", "model.backbone.init_cfg=None",
            f"train_dataloader.dataset.data_root={root}", *NO_VALIDATION]
    with pytest.raises(DataCheckError, match=r"label values \[151\]"):
        train_tool.main(argv)
    assert not list(work_dir.glob("*.pth"))


def test_data_check_command(tmp_path, capsys):
    from mimae.data_checks import DataCheckError, main

    main([str(DET_DEMO)])
    assert capsys.readouterr().out.strip().endswith("data check passed")

    root = copy_coco(tmp_path)
    edit_json(train_json(root), _unknown_category)
    config = tmp_path / "broken.py"
    config.write_text(f"_base_ = [{str(DET_DEMO)!r}]\ntrain_dataloader = dict(dataset=dict(data_root={str(root) + '/'!r}))\n")
    with pytest.raises(DataCheckError, match="category_id 999"):
        main([str(config)])
