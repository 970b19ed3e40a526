from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import mimae.models  # noqa: F401
from mimae.registry import build_model

ABLATIONS = sorted(Path("configs/pretrain/ablations").glob("*.py"))
TINY = {
    "model.encoder.img_size": 32, "model.encoder.patch_size": 8, "model.encoder.embed_dim": 32,
    "model.encoder.depth": 1, "model.encoder.num_heads": 2, "model.decoder.embed_dim": 16,
    "model.decoder.depth": 1, "model.decoder.num_heads": 2,
}


def test_ablation_set_complete():
    names = {path.name.split("_")[0] for path in ABLATIONS}
    assert {"mimae-control-4mask", "mimae-mimax-only", "mimae-mimin-only", "mimae-n2",
            "mimae-independent-masks", "mimae-mine"} <= names
    assert sum(name.startswith(("mimae-lmax", "mimae-lmin")) for name in names) >= 4


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name.split("_")[0])
def test_ablation_builds_and_steps(path):
    cfg = Config.fromfile(str(path))
    cfg.merge_from_dict(TINY)
    if cfg.model.get("mi_max"):
        cfg.model.mi_max.update(hidden_dim=16, proj_dim=8)
    if cfg.model.get("mi_min"):
        cfg.model.mi_min.update(hidden_dim=16)
    model = build_model(cfg.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = model.data_preprocessor(dict(inputs=[torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
                                                for _ in range(4)]), training=True)
    losses = model(**data, mode="loss")
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    expects_max = cfg.model.get("mi_max") is not None
    expects_min = cfg.model.get("mi_min") is not None
    assert ("loss_mi_max" in losses) == expects_max
    assert ("loss_mi_min" in losses) == expects_min
