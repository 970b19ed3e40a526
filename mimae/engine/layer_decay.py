"""Layer-wise learning-rate decay for ViT backbones in mmdet and mmseg.

The backbone reports the depth of each parameter (``get_layer_depth``); no class names or
parameter-name patterns decide it here. A parameter at layer ``i`` of ``n`` layers gets
``lr * decay_rate ** (n - 1 - i)``: the top layer (neck and heads) keeps the base rate,
block ``N`` of a ``D``-block ViT gets ``decay_rate ** (D - N)``, and the embeddings get
``decay_rate ** (D + 1)`` (the ViTDet and BEiT/MAE fine-tuning formula).
"""
from __future__ import annotations

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

# Parameters that take no weight decay whatever their shape.
NO_DECAY_NAMES = ("pos_embed", "cls_token", "rel_pos_h", "rel_pos_w", "mask_token")


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Group parameters by backbone depth and by whether they take weight decay.

    ``paramwise_cfg`` keys:
        layer_decay_rate: the decay factor per layer (ViTDet 0.7, UperNet 0.65).
        backbone: attribute name of the backbone in the model (default ``'backbone'``).

    Norm weights, biases (every 1-D parameter) and ``NO_DECAY_NAMES`` get no weight decay.
    """

    def add_params(self, params: list[dict], module: nn.Module, **kwargs) -> None:
        unknown = set(self.paramwise_cfg) - {"layer_decay_rate", "backbone"}
        if unknown:
            raise ValueError(
                f"LayerDecayOptimWrapperConstructor does not use paramwise_cfg keys {sorted(unknown)}; "
                "it sets weight decay itself (none on 1-D parameters and position tables)"
            )
        decay_rate = self.paramwise_cfg.get("layer_decay_rate")
        if decay_rate is None:
            raise ValueError("LayerDecayOptimWrapperConstructor needs paramwise_cfg.layer_decay_rate")
        backbone_name = self.paramwise_cfg.get("backbone", "backbone")
        backbone = getattr(module, backbone_name, None)
        if backbone is None or not hasattr(backbone, "get_layer_depth"):
            raise TypeError(
                f"model.{backbone_name} ({type(backbone).__name__}) has no get_layer_depth(); "
                "layer-wise decay needs a backbone that reports the depth of its parameters"
            )
        base_lr = self.base_lr
        base_wd = self.base_wd or 0.0
        groups: dict[tuple[int, bool], dict] = {}
        prefix = f"{backbone_name}."
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer_id, num_layers = backbone.get_layer_depth(name, prefix=prefix)
            no_decay = param.ndim == 1 or name.split(".")[-1] in NO_DECAY_NAMES
            key = (layer_id, no_decay)
            if key not in groups:
                scale = decay_rate ** (num_layers - 1 - layer_id)
                groups[key] = dict(params=[], names=[], lr=base_lr * scale, lr_scale=scale,
                                   weight_decay=0.0 if no_decay else base_wd, layer_id=layer_id)
            groups[key]["params"].append(param)
            groups[key]["names"].append(name)
        ordered = [groups[key] for key in sorted(groups)]
        print_log(format_group_table(ordered, decay_rate), logger="current")
        for group in ordered:
            group.pop("names")
            params.append(group)


def format_group_table(groups: list[dict], decay_rate: float) -> str:
    """Return the parameter-group table logged when the optimizer is built."""
    lines = [f"layer-wise lr decay {decay_rate}: {len(groups)} parameter groups",
             f"{'layer':>5} {'lr scale':>10} {'lr':>10} {'wd':>6} {'tensors':>7}  first parameters"]
    for group in groups:
        names = ", ".join(group["names"][:3]) + (", ..." if len(group["names"]) > 3 else "")
        lines.append(f"{group['layer_id']:>5} {group['lr_scale']:>10.4g} {group['lr']:>10.3g} "
                     f"{group['weight_decay']:>6.3g} {len(group['params']):>7}  {names}")
    return "\n".join(lines)
