"""Evaluate a checkpoint with an mmdet or mmseg config (CocoMetric or IoUMetric).

Example::

    python tools/test.py configs/coco/CONFIG.py work_dirs/run/iter_60.pth --work-dir work_dirs/eval
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

from mmengine.config import Config, DictAction

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _runtime import build_runner, finish_distributed, register_scope  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint on the config's test set")
    parser.add_argument("config", help="path of the config file")
    parser.add_argument("checkpoint", help="checkpoint written by tools/train.py")
    parser.add_argument("--work-dir", help="folder for the evaluation logs")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config keys")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or osp.join("work_dirs", osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f"checkpoint not found: {args.checkpoint}")
    register_scope(cfg)
    runner = build_runner(cfg)
    metrics = runner.test()
    finish_distributed()
    return metrics


if __name__ == "__main__":
    main()
