from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

import mimae.downstream  # noqa: F401  (registers backbones and the constructor)

DEMOS = [
    ("mmdet", "configs/coco/mask-rcnn_vit-l-p16-simplefpn_8xb8-lsj-amp-100e_coco_demo.py", 0.4, 0.8),
    ("mmseg", "configs/ade20k/upernet_vit-l-p16_8xb2-160k_ade20k-512x512_demo.py", 0.2, 0.95),
]


@pytest.mark.parametrize("scope,path,drop_path,decay", DEMOS, ids=["coco", "ade20k"])
def test_vit_l_demo_builds_with_recipe_settings(scope, path, drop_path, decay):
    from mmengine.optim import build_optim_wrapper

    if scope == "mmdet":
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    assert Path(path).is_file()
    cfg = Config.fromfile(path)
    assert cfg.model.backbone.drop_path_rate == drop_path
    assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == decay
    cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base = cfg.optim_wrapper.optimizer.lr
    depth = cfg.model.backbone.depth
    lr = {id(p): g["lr"] for g in wrapper.optimizer.param_groups for p in g["params"]}
    block0 = model.backbone.blocks[0].attn.qkv.weight
    assert lr[id(block0)] == pytest.approx(base * decay**depth)
    assert torch.isfinite(block0).all()
