import json
import os
import pickle
import shutil
import weakref

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

import train as train_tool
from convert_checkpoint import convert
from mimae.checkpoint import CheckpointError, read_weights
from mimae.engine import load_run_checkpoint
from mimae.models import VisionTransformer

MAE_DEMO = "configs/pretrain/mae_vit-base-p16_8xb512-amp-coslr-1600e_in1k_demo.py"
MIMAE_DEMO = "configs/pretrain/mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k_demo.py"
FAST = ["train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
        "randomness.deterministic=True"]


def run_train(config, work_dir, iters, *extra, resume: bool | str = False):
    """Train ``iters`` iterations; ``resume`` is True for ``--resume`` or a path for ``--resume PATH``."""
    argv = [config, "--work-dir", str(work_dir)]
    if resume is True:
        argv.append("--resume")
    elif resume:
        argv += ["--resume", str(resume)]
    argv += ["--cfg-options", f"train_cfg.max_iters={iters}",
             f"default_hooks.checkpoint.interval={iters}", *FAST, *extra]
    train_tool.main(argv)
    with open(work_dir / "loss_trace.json") as f:
        return json.load(f)


@pytest.mark.parametrize("config", [MAE_DEMO, MIMAE_DEMO])
def test_pretrain_smoke_run_and_export(config, tmp_path):
    trace = run_train(config, tmp_path / "run", 3)
    assert [r["iter"] for r in trace] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in trace)
    if config == MIMAE_DEMO:
        assert {"loss_mi_max", "loss_mi_min", "loss_q", "infonce_acc", "club_estimate"} <= set(trace[0])

    encoder_file = tmp_path / "encoder.pth"
    state = convert(str(tmp_path / "run" / "iter_3.pth"), str(encoder_file))
    reread = torch.load(encoder_file, weights_only=True)
    assert set(reread) == {"model"}
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=192, depth=4, num_heads=3)
    vit.load_state_dict(reread["model"], strict=True)
    assert "blocks.0.attn.qkv.weight" in state
    assert "pos_embed" in state
    assert not any(k.startswith(("decoder", "mask_token", "mi_")) for k in state)


def test_resume_matches_uninterrupted_run(tmp_path):
    reference = run_train(MIMAE_DEMO, tmp_path / "full", 4)
    run_train(MIMAE_DEMO, tmp_path / "split", 2, "default_hooks.checkpoint.interval=2")
    assert load_run_checkpoint(str(tmp_path / "split" / "iter_2.pth"))["meta"]["iter"] == 2
    resumed = run_train(MIMAE_DEMO, tmp_path / "split", 4, "default_hooks.checkpoint.interval=2", resume=True)
    assert [r["iter"] for r in resumed] == [1, 2, 3, 4]
    for expected, got in zip(reference, resumed):
        for term in ("loss", "loss_rec", "loss_mi_max", "loss_mi_min", "loss_q"):
            assert got[term] == expected[term], (got["iter"], term)
    final = load_run_checkpoint(str(tmp_path / "split" / "iter_4.pth"))
    # AdamW counts its own steps: 4 means the resumed run continued the saved optimizer state.
    steps = {float(state["step"]) for state in final["optimizer"]["state"].values()}
    assert steps == {4.0}


def test_resume_prefers_latest_checkpoint_over_load_from(tmp_path, capsys):
    work_dir = tmp_path / "run"
    run_train(MAE_DEMO, work_dir, 1)
    pretrained = tmp_path / "pretrained.pth"
    shutil.copy(work_dir / "iter_1.pth", pretrained)
    run_train(MAE_DEMO, work_dir, 2, f"load_from={pretrained}", resume=True)
    log = "".join(p.read_text() for p in work_dir.glob("*/*.log"))
    assert "resuming from" in log
    assert "iter_1.pth, the latest checkpoint in work_dir" in log
    assert load_run_checkpoint(str(work_dir / "iter_2.pth"))["meta"]["iter"] == 2


def logged_lr(work_dir) -> float:
    scalars = next(work_dir.glob("*/vis_data/scalars.json")).read_text().splitlines()
    return json.loads(scalars[0])["lr"]


def test_auto_scale_lr_follows_batch(tmp_path):
    # The demo's lr is set for 16 images per iteration (auto_scale_lr.base_batch_size).
    options = ("train_dataloader.batch_size=8", "default_hooks.logger.interval=1")
    run_train(MAE_DEMO, tmp_path / "fixed", 1, *options)
    train_tool.main([MAE_DEMO, "--work-dir", str(tmp_path / "scaled"), "--auto-scale-lr", "--cfg-options",
                     "train_cfg.max_iters=1", *FAST, *options])
    assert logged_lr(tmp_path / "scaled") == pytest.approx(logged_lr(tmp_path / "fixed") * 8 / 16)


def test_auto_scale_lr_needs_base_batch(tmp_path):
    config = tmp_path / "no_scaling.py"
    config.write_text(f"_base_ = [{os.path.abspath(MAE_DEMO)!r}]\nauto_scale_lr = None\n")
    with pytest.raises(SystemExit, match="--auto-scale-lr needs auto_scale_lr = dict"):
        train_tool.merge_args(Config.fromfile(str(config)), train_tool.parse_args([str(config), "--auto-scale-lr"]))


def test_resume_path_wins_over_latest(tmp_path):
    work_dir = tmp_path / "run"
    every_iteration = ("default_hooks.checkpoint.interval=1", "default_hooks.checkpoint.max_keep_ckpts=2")
    reference = run_train(MAE_DEMO, work_dir, 2, *every_iteration)
    earlier = work_dir / "iter_1.pth"

    resumed = run_train(MAE_DEMO, work_dir, 2, *every_iteration, resume=earlier)

    log = sorted(work_dir.glob("*/*.log"))[-1].read_text()
    assert f"resuming from {earlier} as --resume requests, although work_dir contains {work_dir / 'iter_2.pth'}" in log
    assert [r["iter"] for r in resumed] == [1, 2]
    # Iteration 2 ran again from iteration 1's state, so it repeats the first run's loss.
    assert resumed[1]["loss"] == reference[1]["loss"]
    final = load_run_checkpoint(str(work_dir / "iter_2.pth"))
    assert {float(state["step"]) for state in final["optimizer"]["state"].values()} == {2.0}


def test_resume_path_rejects_weight_file(tmp_path):
    run_train(MAE_DEMO, tmp_path / "run", 1)
    weights = tmp_path / "encoder.pth"
    convert(str(tmp_path / "run" / "iter_1.pth"), str(weights))
    with pytest.raises(ValueError, match=r"not a checkpoint of a training run .* load_from="):
        run_train(MAE_DEMO, tmp_path / "other", 1, resume=weights)


def test_resume_path_partial_file_kept(tmp_path):
    work_dir = tmp_path / "run"
    run_train(MAE_DEMO, work_dir, 1)
    partial = work_dir / "iter_2.pth.partial"
    shutil.copy(work_dir / "iter_1.pth", partial)
    with pytest.raises(ValueError, match=f"--resume {partial}: an incomplete checkpoint"):
        run_train(MAE_DEMO, work_dir, 2, resume=partial)
    assert partial.exists()


def test_resume_path_pointer_file_named(tmp_path):
    work_dir = tmp_path / "run"
    run_train(MAE_DEMO, work_dir, 1)
    with pytest.raises(ValueError, match=r"this text file names the latest checkpoint, '.*iter_1.pth'"):
        run_train(MAE_DEMO, work_dir, 2, resume=work_dir / "last_checkpoint")
    with pytest.raises(IsADirectoryError, match="this is a folder, not a checkpoint file"):
        run_train(MAE_DEMO, work_dir, 2, resume=work_dir)


def test_resume_path_missing_named(tmp_path):
    missing = tmp_path / "iter_7.pth"
    with pytest.raises(FileNotFoundError, match=f"--resume {missing}: file not found"):
        run_train(MAE_DEMO, tmp_path / "run", 1, resume=missing)


class _SideEffect:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mimae_pickle_side_effect",))


def test_pickled_code_rejected(tmp_path):
    marker = "/tmp/mimae_pickle_side_effect"
    if os.path.exists(marker):
        os.remove(marker)
    hostile = tmp_path / "hostile.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _SideEffect()}, hostile)
    with pytest.raises(CheckpointError, match="cannot read .*tensor-only weight file.*GLOBAL posix.system"):
        read_weights(hostile)
    with pytest.raises(pickle.UnpicklingError):
        load_run_checkpoint(str(hostile))
    assert not os.path.exists(marker)


@pytest.mark.parametrize("damage", ["truncated", "not a torch file"])
def test_damaged_weight_file_named(damage, tmp_path):
    path = tmp_path / "encoder.pth"
    torch.save({"model": {"w": torch.zeros(64, 64)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match="cannot read .*encoder.pth.: the file is damaged .* write it again"):
        read_weights(path)


def test_missing_weight_file_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nope.pth"):
        read_weights(tmp_path / "nope.pth")


def test_cpu_amp_run_compiles_attention(tmp_path, monkeypatch):
    """``tools/train.py --amp`` without a GPU trains MI-MAE under bf16 autocast with the
    compiled attention, and the losses stay finite."""
    from mimae.models import layers

    if torch.cuda.is_available():
        pytest.skip("on a GPU --amp selects MMEngine's AmpOptimWrapper")
    if not layers.compiled_attention_works():
        pytest.skip("torch.compile does not work on this machine")
    monkeypatch.setattr(layers.Attention, "cpu_autocast_kernel", "flash_fp32")
    monkeypatch.setattr(layers, "_compiled_explicit_attention", None)
    work_dir = tmp_path / "run"
    train_tool.main([MIMAE_DEMO, "--work-dir", str(work_dir), "--amp", "--cfg-options", "train_cfg.max_iters=2",
                     "default_hooks.checkpoint.interval=2", *FAST])
    assert layers.Attention.cpu_autocast_kernel == "compiled"
    assert layers._compiled_explicit_attention is not None, "the compiled attention did not run"
    with open(work_dir / "loss_trace.json") as f:
        trace = json.load(f)
    assert [r["iter"] for r in trace] == [1, 2]
    for record in trace:
        for term in ("loss", "loss_rec", "loss_mi_max", "loss_mi_min"):
            assert torch.isfinite(torch.tensor(record[term])), (record["iter"], term)


needs_pipe_size = pytest.mark.skipif(not hasattr(__import__("fcntl"), "F_GETPIPE_SZ"),
                                     reason="pipe capacity is Linux only")


def build_demo_runner(work_dir, *options, epochs: int | None = None):
    """Build the MAE demo's runner through tools/train.py's steps, with loader workers."""
    from _runtime import build_runner
    from mmengine.config import Config

    argv = [MAE_DEMO, "--work-dir", str(work_dir), "--cfg-options", "default_hooks.checkpoint.interval=1000",
            *options]
    args = train_tool.parse_args(argv)
    cfg = train_tool.merge_args(Config.fromfile(args.config), args)
    if epochs is not None:
        cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=epochs)
        cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=True, interval=1000)
        cfg.param_scheduler = []
    train_tool.register_scope(cfg)
    return build_runner(cfg)


def pipe_capacity(iterator) -> int:
    import fcntl

    return fcntl.fcntl(iterator._worker_result_queue._reader.fileno(), fcntl.F_GETPIPE_SZ)


class PipeProbe(Hook):
    """Hook that records the result pipe's capacity at every iteration, after ``LoaderPipeHook``."""

    priority = "LOWEST"

    def __init__(self) -> None:
        self.capacities: list[int] = []
        self.iterators = 0  # loader iterators seen, each with its own pipe
        self._last = None  # weak reference to the previous iteration's iterator

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        iterator = getattr(runner.train_dataloader, "_iterator", None)
        if iterator is None:
            iterator = runner.train_loop.dataloader_iterator._iterator
        # A weak reference, not id(): CPython reuses the id of a freed iterator.
        if self._last is None or self._last() is not iterator:
            self.iterators += 1
        self._last = weakref.ref(iterator)
        self.capacities.append(pipe_capacity(iterator))


def register_probe(runner) -> PipeProbe:
    probe = PipeProbe()
    runner.register_hook(probe, priority="LOWEST")
    return probe


@needs_pipe_size
@pytest.mark.parametrize("persistent", [True, False])
def test_demo_loader_pipe_capacity(tmp_path, persistent):
    """The demo configs' ``LoaderPipeHook`` sets the worker's result pipe to 1 MiB, with
    persistent workers (the demo's setting) and with the iteration loop's own iterator."""
    runner = build_demo_runner(tmp_path, "train_cfg.max_iters=2", f"train_dataloader.persistent_workers={persistent}")
    probe = register_probe(runner)
    runner.train()
    assert runner.train_dataloader.num_workers == 1
    assert probe.capacities == [1 << 20, 1 << 20]


@needs_pipe_size
def test_pipe_capacity_new_iterators(tmp_path):
    """Without persistent workers a finite sampler starts a new iterator, with a new pipe,
    every epoch (30 images, batch 16), and each one gets 1 MiB."""
    runner = build_demo_runner(tmp_path, "train_cfg.max_iters=8", "train_dataloader.persistent_workers=False",
                               "train_dataloader.sampler.type=DefaultSampler")
    probe = register_probe(runner)
    runner.train()
    assert probe.iterators >= 3
    assert probe.capacities == [1 << 20] * 8


def test_epoch_loop_pipe_warning(tmp_path):
    """An epoch-based loop without persistent workers hides its iterator, and the hook logs one warning."""
    runner = build_demo_runner(tmp_path, "train_dataloader.persistent_workers=False",
                               "train_dataloader.sampler.type=DefaultSampler", epochs=2)
    runner.train()
    (log_file,) = tmp_path.glob("*/*.log")
    warnings = [line for line in log_file.read_text().splitlines() if "LoaderPipeHook:" in line]
    assert len(warnings) == 1
    assert "persistent_workers=True" in warnings[0]


@pytest.mark.parametrize("size, error", [(1e6, TypeError), (4096, ValueError)])
def test_loader_pipe_hook_rejects_size(size, error):
    from pretrain.hooks import LoaderPipeHook

    with pytest.raises(error, match="integer|at least 65536 bytes"):
        LoaderPipeHook(size=size)
