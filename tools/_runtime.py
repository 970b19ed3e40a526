"""Shared setup of tools/train.py and tools/test.py: registry scope and runner construction."""
from __future__ import annotations

from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

SCOPES = ("mimae", "mmdet", "mmseg")


def register_scope(cfg: Config) -> None:
    """Import the modules of the config's ``default_scope`` so its registry is filled."""
    scope = cfg.get("default_scope", "mimae")
    if scope not in SCOPES:
        raise SystemExit(f"unsupported default_scope {scope!r} in the config; expected one of {SCOPES}")
    if scope == "mmdet":
        from mmdet.utils import register_all_modules
    elif scope == "mmseg":
        from mmseg.utils import register_all_modules
    else:
        import mimae.models  # noqa: F401
        import pretrain  # noqa: F401

        return
    register_all_modules(init_default_scope=False)


def build_runner(cfg: Config) -> Runner:
    """Build ``cfg.runner_type`` when set, else the safe runner of mimae.

    Without a GPU the steps run on the CPU, where glibc would map and fault in the large
    activations again every step; ``keep_freed_memory`` stops that.
    """
    import torch

    import mimae.engine  # noqa: F401  (registers SafeRunner)
    from mimae.engine.cpu_memory import keep_freed_memory

    if not torch.cuda.is_available():
        keep_freed_memory()

    if "runner_type" in cfg:
        return RUNNERS.build(cfg)
    from mimae.engine import SafeRunner

    return SafeRunner.from_cfg(cfg)


def finish_distributed() -> None:
    """Let every rank reach the end, then close the process group while all ranks are alive.

    A rank that tears gloo down while its peer still sends or closes sockets can abort with
    "terminate called without an active exception" after a finished run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
