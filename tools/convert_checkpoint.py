"""Export the encoder of a pretrained checkpoint as a tensor-only weight file.

The input is a checkpoint written by tools/train.py for a pretraining config, or any
weight file whose layout ``mimae.checkpoint`` reads (official MAE, timm, mmpretrain MAE,
prefixed copies of them). Only encoder tensors are exported: the decoder, mask token and
MI heads are left out. Before writing, the encoder is loaded with ``strict=True`` into
mimae's ``VisionTransformer``, built from the run's config or, for a file without one,
from the tensor shapes.

Formats (``--format``):

``mimae`` (default)
    ``{'model': state_dict}`` with timm/MAE key names (``patch_embed.proj.weight``,
    ``blocks.0.attn.qkv.weight``, ``pos_embed``, ...), the layout of the official MAE
    checkpoints. The ViTDet and segmentation backbones of this project load it directly.
``timm``
    The bare state dict. timm's ``VisionTransformer`` built with the arguments that the
    tool prints (``class_token=True``, ``global_pool='token'``, ``num_classes=0``) loads it
    with ``strict=True``; the tool checks that when timm is installed. A model built with
    ``num_classes > 0`` misses exactly ``head.weight`` and ``head.bias``.
``detectron2``
    ``{'model': state_dict, '__author__': 'mimae'}`` under the parameter names of
    detectron2's ViTDet Mask R-CNN (``backbone.net.patch_embed.proj.weight``,
    ``backbone.net.blocks.0.attn.qkv.weight``, ``backbone.net.pos_embed``), without the cls
    token and final norm, which detectron2's ViT lacks. ``pos_embed`` keeps its cls slot,
    as ``pretrain_use_cls_token=True`` expects, and its grid must be square. The layout is
    checked against a module that reproduces the parameter names of detectron2's
    ``modeling/backbone/vit.py``. detectron2 itself was not run. Its DetectionCheckpointer
    matches the keys of a ``.pth`` file by suffix (``matching_heuristics``), and a key that
    equals the model's name is such a match.

Example::

    python tools/convert_checkpoint.py work_dirs/demo/pretrain_mimae/iter_500.pth checkpoints/mimae_encoder.pth
    python tools/convert_checkpoint.py work_dirs/mimae/epoch_400.pth checkpoints/mimae_vit-b_d2.pth --format detectron2
"""
from __future__ import annotations

import argparse
import math
import os
import os.path as osp
import sys
from collections import OrderedDict

import torch

from mimae.checkpoint import encoder_state_dict
from mimae.engine import config_from_checkpoint, load_run_checkpoint
from mimae.key_maps import to_detectron2_names
from mimae.models.vit import VisionTransformer

FORMATS = ("mimae", "timm", "detectron2")


def build_encoder_from_meta(checkpoint: dict):
    """Rebuild the run's encoder from the config stored in the checkpoint, or return None."""
    cfg = config_from_checkpoint(checkpoint)
    if cfg is None:
        return None
    if "encoder" not in cfg.get("model", {}):
        raise ValueError(
            f"the run's config has no model.encoder (its model type is {cfg.get('model', {}).get('type')!r}). "
            "This tool exports the encoder of a pretraining run of MAE or MIMAE; a detection or "
            "segmentation checkpoint holds a fine-tuned backbone, not a pretrained encoder")
    # Built directly, not through the registry, so the caller's default scope does not matter.
    kwargs = {key: value for key, value in cfg.model.encoder.items() if key != "type"}
    return VisionTransformer(**kwargs)


def build_encoder_from_shapes(state: dict[str, torch.Tensor], num_heads: int | None) -> VisionTransformer:
    """Build a ``VisionTransformer`` whose tensor shapes are those of ``state``.

    Weight files do not store the number of attention heads, and no tensor shape depends
    on it, so ``num_heads`` defaults to 1 for this shape check.

    Raises:
        ValueError: when a tensor that fixes the architecture is missing or the position
            table does not hold one cls slot plus a square grid.
    """
    for key in ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise ValueError(f"the encoder has no {key!r}, so its architecture cannot be inferred")
    embed_dim, in_chans, patch_size, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    patches = state["pos_embed"].shape[1] - 1
    side = math.isqrt(max(patches, 0))
    if patches <= 0 or side * side != patches:
        raise ValueError(
            f"pos_embed has {patches + 1} slots, not one cls slot plus a square grid. A non-square "
            "grid is known only from the run's config, which this file does not contain"
        )
    return VisionTransformer(
        img_size=side * patch_size,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads or 1,
        mlp_ratio=hidden / embed_dim,
    )


def timm_model_kwargs(encoder: VisionTransformer, num_heads: int | None) -> dict:
    """Return the arguments of timm's ``VisionTransformer`` that match ``encoder``.

    ``num_heads`` is None when neither the run's config nor the command line gives it.
    """
    grid_h, grid_w = encoder.grid_size
    patch = encoder.patch_size
    img_size = grid_h * patch if grid_h == grid_w else (grid_h * patch, grid_w * patch)
    fc1 = encoder.blocks[0].mlp.fc1
    return dict(
        img_size=img_size,
        patch_size=patch,
        in_chans=encoder.patch_embed.proj.in_channels,
        embed_dim=encoder.embed_dim,
        depth=len(encoder.blocks),
        num_heads=num_heads,
        mlp_ratio=fc1.out_features / encoder.embed_dim,
        qkv_bias=encoder.blocks[0].attn.qkv.bias is not None,
        class_token=True,
        global_pool="token",
        num_classes=0,
    )


def check_timm_load(state: dict[str, torch.Tensor], kwargs: dict) -> bool:
    """Load ``state`` into timm's ``VisionTransformer(**kwargs)`` strictly and return True.

    Returns False when timm is not installed.
    """
    try:
        from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
    except ImportError:
        return False
    model = TimmVisionTransformer(**{**kwargs, "num_heads": kwargs["num_heads"] or 1})
    model.load_state_dict(state, strict=True)
    return True


def export_payload(state: dict[str, torch.Tensor], fmt: str, encoder: VisionTransformer) -> dict:
    """Return the object that ``torch.save`` writes for format ``fmt``."""
    if fmt == "mimae":
        return {"model": dict(state)}
    if fmt == "timm":
        return dict(state)
    if fmt == "detectron2":
        grid_h, grid_w = encoder.grid_size
        if grid_h != grid_w:
            raise ValueError(
                f"the encoder's position table has a {grid_h}x{grid_w} grid; detectron2's ViT "
                "(get_abs_pos) reads only square grids, so this encoder cannot be exported for it"
            )
        return {"model": dict(to_detectron2_names(state)), "__author__": "mimae"}
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def tensors_of(payload: dict) -> dict[str, torch.Tensor]:
    """Return the tensor dict inside an export payload."""
    return payload["model"] if "model" in payload and isinstance(payload["model"], dict) else payload


def convert(src: str, dst: str, fmt: str = "mimae", num_heads: int | None = None) -> dict[str, torch.Tensor]:
    """Write the encoder of ``src`` to ``dst`` in format ``fmt`` and return the written tensors.

    The encoder is checked by a strict load before anything is written, and the written
    file is read back with ``weights_only=True``.

    Raises:
        CheckpointError: when ``src`` contains no tensors. A file that cannot be read with
            ``weights_only=True`` raises the error of ``mimae.engine.load_run_checkpoint``.
        ValueError: for an unknown format, an encoder whose architecture cannot be inferred,
            or a non-square grid with ``fmt='detectron2'``.
        RuntimeError: when the strict load fails or the file reads back with other keys.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    checkpoint = load_run_checkpoint(src)
    state = encoder_state_dict(checkpoint, source=src)
    encoder = build_encoder_from_meta(checkpoint)
    if encoder is not None:
        num_heads = num_heads or encoder.blocks[0].attn.num_heads
    else:
        encoder = build_encoder_from_shapes(state, num_heads)
    # strict=True: every encoder tensor present and nothing extra.
    encoder.load_state_dict(state, strict=True)

    payload = export_payload(state, fmt, encoder)
    if fmt == "timm":
        kwargs = timm_model_kwargs(encoder, num_heads)
        if check_timm_load(state, kwargs):
            print("checked: timm's VisionTransformer loads the file with strict=True")
        print("timm model arguments: " + ", ".join(f"{key}={value!r}" for key, value in kwargs.items()))
    elif fmt == "detectron2":
        print(
            f"detectron2 ViT arguments: embed_dim={encoder.embed_dim}, depth={len(encoder.blocks)}, "
            f"num_heads={num_heads}, patch_size={encoder.patch_size}, "
            f"pretrain_img_size={encoder.grid_size[0] * encoder.patch_size}, pretrain_use_cls_token=True"
        )
    if fmt != "mimae" and num_heads is None:
        print("note: the file does not store num_heads, so set it to the pretraining value (--num-heads)")

    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    partial = f"{dst}.partial"
    torch.save(payload, partial)
    os.replace(partial, dst)
    written = tensors_of(payload)
    reread = tensors_of(torch.load(dst, map_location="cpu", weights_only=True))
    if set(reread) != set(written):
        raise RuntimeError(f"re-reading {dst} gave different keys")
    return OrderedDict(written)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a pretrained encoder as a tensor-only weight file")
    parser.add_argument("src", help="checkpoint written by tools/train.py, or a weight file of a supported layout")
    parser.add_argument("dst", help="output weight file")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="mimae",
        help="layout of the output: mimae writes {'model': tensors} with timm/MAE names, timm a bare "
        "state dict for timm's VisionTransformer, detectron2 {'model': ...} with backbone.net. names",
    )
    parser.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="attention heads of the encoder, printed with the timm and detectron2 model arguments "
        "(default: from the run's config; weight files alone do not store it)",
    )
    args = parser.parse_args(argv)
    if not osp.isfile(args.src):
        raise SystemExit(f"checkpoint not found: {args.src}")
    state = convert(args.src, args.dst, args.format, args.num_heads)
    numel = sum(t.numel() for t in state.values())
    print(f"wrote {args.dst} ({args.format}): {len(state)} tensors, {numel / 1e6:.2f} M values")


if __name__ == "__main__":
    sys.exit(main())
