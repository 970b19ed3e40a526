"""Export the encoder of a pretraining checkpoint as a tensor-only weight file.

The output is ``{'model': state_dict}`` with timm/MAE key names (``patch_embed.proj.weight``,
``blocks.0.attn.qkv.weight``, ``pos_embed``, ...), the layout of the official MAE
checkpoints, which the ViTDet and segmentation backbones load directly.

Example::

    python tools/convert_checkpoint.py work_dirs/mimae_demo/iter_300.pth checkpoints/mimae_encoder.pth
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

import torch

from mimae.checkpoint import encoder_state_dict
from mimae.engine import config_from_checkpoint, load_run_checkpoint


def build_encoder_from_meta(checkpoint: dict):
    """Rebuild the run's encoder from the config stored in the checkpoint, or return None."""
    cfg = config_from_checkpoint(checkpoint)
    if cfg is None:
        return None
    import mimae.models  # noqa: F401  (registers MAEViT)
    from mimae.registry import MODELS

    return MODELS.build({"type": "MAEViT", **cfg.model.encoder})


def convert(src: str, dst: str) -> dict[str, torch.Tensor]:
    """Write the encoder of ``src`` to ``dst`` and verify it by a strict load."""
    checkpoint = load_run_checkpoint(src)
    state = encoder_state_dict(checkpoint)
    encoder = build_encoder_from_meta(checkpoint)
    if encoder is not None:
        # strict=True: every encoder tensor present and nothing extra.
        encoder.load_state_dict(state, strict=True)
    else:
        print(f"note: {src} stores no config, so the export was not checked against the encoder")
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    partial = f"{dst}.partial"
    torch.save({"model": dict(state)}, partial)
    os.replace(partial, dst)
    reread = torch.load(dst, map_location="cpu", weights_only=True)["model"]
    if set(reread) != set(state):
        raise RuntimeError(f"re-reading {dst} gave different keys")
    return state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a pretrained encoder as {'model': tensors}")
    parser.add_argument("src", help="checkpoint written by tools/train.py for a pretraining config")
    parser.add_argument("dst", help="output weight file")
    args = parser.parse_args(argv)
    if not osp.isfile(args.src):
        raise SystemExit(f"checkpoint not found: {args.src}")
    state = convert(args.src, args.dst)
    numel = sum(t.numel() for t in state.values())
    print(f"wrote {args.dst}: {len(state)} tensors, {numel / 1e6:.2f} M values")


if __name__ == "__main__":
    sys.exit(main())
