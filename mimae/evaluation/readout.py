"""k-NN and linear-probe accuracy of a frozen encoder's features."""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.vit import VisionTransformer


def build_encoder_from_state(state: Mapping[str, torch.Tensor], num_heads: int | None = None) -> VisionTransformer:
    """Build a :class:`VisionTransformer` whose shape matches ``state`` and load it strictly.

    Width, depth, patch size and grid come from the tensors. The head count is not
    stored in the weights: it defaults to ``embed_dim // 64`` (ViT-S/B/L all use 64-d
    heads); pass ``num_heads`` for other encoders.
    """
    embed_dim = state["cls_token"].shape[-1]
    patch_size = state["patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
    num_patches = state["pos_embed"].shape[1] - 1
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"cannot infer a square pretraining grid from {num_patches} position slots")
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    heads = num_heads or max(1, embed_dim // 64)
    encoder = VisionTransformer(img_size=side * patch_size, patch_size=patch_size, embed_dim=embed_dim,
                                depth=depth, num_heads=heads, mlp_ratio=mlp_ratio)
    encoder.load_state_dict(state, strict=True)
    return encoder


@torch.no_grad()
def extract_features(encoder: nn.Module, loader, pooling: str = "cls") -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(features (N, C), labels (N,))`` of every batch ``(images, labels)`` in ``loader``."""
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
    encoder.eval()
    features, labels = [], []
    for images, targets in loader:
        latent = encoder(images)
        features.append(latent[:, 0] if pooling == "cls" else latent[:, 1:].mean(dim=1))
        labels.append(targets)
    return torch.cat(features), torch.cat(labels)


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 k: int = 20, temperature: float = 0.07) -> float:
    """Return the top-1 accuracy of a weighted k-NN vote on cosine similarity.

    Each of the ``k`` nearest training samples votes for its label with weight
    ``exp(similarity / temperature)`` (the classifier of Wu et al., 2018, used by DINO).
    """
    train_x, test_x = F.normalize(train_x.float(), dim=1), F.normalize(test_x.float(), dim=1)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, train_x.shape[0])
    correct = 0
    for start in range(0, test_x.shape[0], 1024):
        similarity = test_x[start:start + 1024] @ train_x.t()
        top_sim, top_idx = similarity.topk(k, dim=1)
        votes = torch.zeros(top_sim.shape[0], num_classes)
        votes.scatter_add_(1, train_y[top_idx], (top_sim / temperature).exp())
        correct += (votes.argmax(dim=1) == test_y[start:start + 1024]).sum().item()
    return correct / test_x.shape[0]


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                          test_y: torch.Tensor, epochs: int = 100, lr: float = 0.1, batch_size: int = 256,
                          seed: int = 0) -> float:
    """Train BatchNorm (no affine) + a linear layer on frozen features; return test top-1.

    The parameter-free BatchNorm before the head follows MAE's linear probe. Features are
    computed once without augmentation, and the head is trained with SGD (momentum 0.9)
    and a cosine schedule.
    """
    generator = torch.Generator().manual_seed(seed)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    head = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False), nn.Linear(train_x.shape[1], num_classes))
    nn.init.normal_(head[1].weight, std=0.01, generator=generator)
    nn.init.zeros_(head[1].bias)
    steps_per_epoch = math.ceil(train_x.shape[0] / batch_size)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    head.train()
    for _ in range(epochs):
        order = torch.randperm(train_x.shape[0], generator=generator)
        for start in range(0, train_x.shape[0], batch_size):
            idx = order[start:start + batch_size]
            if idx.numel() < 2:
                continue  # BatchNorm needs two samples
            loss = F.cross_entropy(head(train_x[idx].float()), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    head.eval()
    with torch.no_grad():
        predictions = head(test_x.float()).argmax(dim=1)
    return (predictions == test_y).float().mean().item()
