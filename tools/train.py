"""Train a model from an OpenMMLab config: mimae pretraining, mmdet detection or mmseg segmentation.

The runner follows the config's ``default_scope`` ('mimae', 'mmdet' or 'mmseg').
Examples::

    python tools/train.py configs/pretrain/mimae_vit-base-p16_8xb512-amp-coslr-400e_in1k.py
    python tools/train.py CONFIG --work-dir work_dirs/run1 --resume
    bash tools/dist_train.sh CONFIG 8 --amp
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _runtime import build_runner, finish_distributed, register_scope  # noqa: E402

from mimae.models.layers import CPU_AUTOCAST_KERNELS, NO_NATIVE_BF16, Attention, cpu_bf16_products  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train with an OpenMMLab config")
    parser.add_argument("config", help="path of the config file")
    parser.add_argument("--work-dir", help="folder for logs and checkpoints (default: work_dirs/<config name>)")
    parser.add_argument(
        "--resume", nargs="?", const="auto", default=None,
        help="resume training: without a path from the latest complete checkpoint in the work dir, with a "
             "path from that checkpoint of a training run, even when the work dir holds a later one",
    )
    parser.add_argument("--auto-scale-lr", action="store_true",
                        help="scale the config's lr by the total batch over auto_scale_lr.base_batch_size "
                             "(MMEngine's linear scaling rule)")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision: AmpOptimWrapper on a GPU, bf16 autocast (BF16OptimWrapper) on the CPU")
    parser.add_argument("--cpu-attention", choices=CPU_AUTOCAST_KERNELS, default="compiled",
                        help="attention kernel under bf16 autocast with --amp on a machine without a GPU: the "
                             "flash kernel in float32, the flash kernel in bf16, or the explicit attention compiled "
                             "by torch.compile (default: compiled, the fastest in docs/benchmarks.md)")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, default={},
        help="override config keys, e.g. train_cfg.max_iters=10 model.backbone.init_cfg.checkpoint=x.pth",
    )
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher for distributed training")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply the command-line options to ``cfg``."""
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0])
    if args.resume == "auto":
        cfg.resume = True
    elif args.resume is not None:
        # SafeRunner reads resume_from. load_from alone would lose to the work dir's latest
        # checkpoint, which wins there so that a config's pretrained load_from does not undo
        # a resume.
        cfg.resume = True
        cfg.resume_from = args.resume
        cfg.load_from = args.resume  # what MMEngine's own Runner resumes from, under runner_type
    if args.auto_scale_lr:
        if "base_batch_size" not in (cfg.get("auto_scale_lr") or {}):
            raise SystemExit(f"--auto-scale-lr needs auto_scale_lr = dict(base_batch_size=N) in {args.config}, "
                             "the total batch its lr was set for. Add it, or drop --auto-scale-lr")
        cfg.auto_scale_lr.enable = True
    if args.amp:
        import torch

        if torch.cuda.is_available():
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
        else:
            # MMEngine's AmpOptimWrapper needs an accelerator, so the CPU trains under bf16 autocast.
            if cfg.get("default_scope") != "mimae":
                # mmcv 2.1.0's CPU RoIAlign has no bf16 kernel, so Mask R-CNN fails under CPU autocast.
                raise SystemExit(f"--amp on a CPU works for pretraining configs only, and {args.config} has "
                                 f"default_scope={cfg.get('default_scope')!r}. Drop --amp")
            for key in ("loss_scale", "dtype", "use_fsdp"):
                cfg.optim_wrapper.pop(key, None)
            cfg.optim_wrapper.type = "BF16OptimWrapper"
            print("--amp without a GPU: the forward pass runs under bf16 autocast on the CPU (BF16OptimWrapper), "
                  f"attention with the {args.cpu_attention!r} kernel")
            if not cpu_bf16_products():
                print(f"warning: {NO_NATIVE_BF16}. Drop --amp to train in float32", file=sys.stderr)
    return cfg


def select_cpu_attention(args: argparse.Namespace) -> None:
    """Set the attention kernel for bf16 autocast on the CPU from ``--cpu-attention`` when ``--amp`` runs there."""
    import torch

    if args.amp and not torch.cuda.is_available():
        Attention.cpu_autocast_kernel = args.cpu_attention


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    cfg = merge_args(cfg, args)
    select_cpu_attention(args)
    register_scope(cfg)
    runner = build_runner(cfg)
    runner.train()
    finish_distributed()


if __name__ == "__main__":
    main()
