"""Mutual-information estimators used by MI-MAE.

* :class:`InfoNCE` is a lower bound on I(Z_i; Z_j) between the latents of two masked
  views of one image (maximized).
* :class:`CLUB` is the contrastive log-ratio upper bound of Cheng et al. (ICML 2020)
  on I(X; Z) between a view's input and its latent (minimized), with a Gaussian
  approximation network q(z | x).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS


class ProjectionHead(nn.Module):
    """Two-layer MLP that maps a pooled latent to the space the InfoNCE critic compares."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


@MODELS.register_module()
class InfoNCE(nn.Module):
    """InfoNCE between every pair of views; the other images of the batch are negatives.

    Args:
        in_dim: width of the pooled latent.
        hidden_dim, proj_dim: projection head widths.
        temperature: softmax temperature on cosine similarities.
        symmetric: use both directions (i, j) and (j, i) of each pair, else only i < j.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        proj_dim: int = 256,
        temperature: float = 0.2,
        symmetric: bool = True,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.head = ProjectionHead(in_dim, hidden_dim, proj_dim)
        self.temperature = temperature
        self.symmetric = symmetric

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute the loss from pooled latents ``(B, N, C)`` with N >= 2 views.

        Returns ``loss`` (mean cross-entropy over view pairs) and ``accuracy`` (share of
        anchors whose positive has the highest score).
        """
        batch, num_views, _ = pooled.shape
        if num_views < 2:
            raise ValueError("InfoNCE needs at least 2 views per image")
        z = F.normalize(self.head(pooled).float(), dim=-1).transpose(0, 1)  # (N, B, d)
        logits = torch.einsum("ibd,jcd->ijbc", z, z) / self.temperature  # (N, N, B, B)
        pairs = torch.ones(num_views, num_views, dtype=torch.bool, device=z.device)
        pairs = pairs.triu(1) if not self.symmetric else pairs & ~torch.eye(num_views, dtype=torch.bool, device=z.device)
        logits = logits[pairs].reshape(-1, batch)  # (P * B, B): anchor b of view i vs images of view j
        target = torch.arange(batch, device=z.device).repeat(int(pairs.sum()))
        loss = F.cross_entropy(logits, target)
        accuracy = (logits.argmax(dim=1) == target).float().mean()
        return dict(loss=loss, accuracy=accuracy.detach())


@MODELS.register_module()
class CLUB(nn.Module):
    """CLUB upper bound on I(X; Z) with a diagonal Gaussian q(z | x) from a small MLP.

    The estimate is ``E[log q(z_i | x_i)] - E_{i,j}[log q(z_j | x_i)]``, averaged over
    latent dimensions so that its scale does not grow with the width.

    ``forward`` returns two terms with separate gradient paths:
    ``estimate`` reaches only ``z`` (the encoder), because q's outputs are detached
    there; ``q_nll``, the negative log-likelihood that fits q, reaches only q, because
    ``z`` is detached there. The caller passes ``x`` already detached.

    Args:
        x_dim, z_dim: widths of the input representation and of the latent.
        hidden_dim: width of q's hidden layer.
    """

    def __init__(self, x_dim: int, z_dim: int, hidden_dim: int = 512) -> None:
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, z_dim))
        self.logvar = nn.Sequential(
            nn.Linear(x_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, z_dim), nn.Tanh()
        )

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute the CLUB terms for ``x`` ``(M, Dx)`` and ``z`` ``(M, Dz)``."""
        x, z = x.float(), z.float()
        mu, logvar = self.mu(x), self.logvar(x)
        # Fit q on detached latents: only q's parameters receive this gradient.
        q_nll = 0.5 * (((z.detach() - mu) ** 2) / logvar.exp() + logvar).mean()
        # Score the encoder with q frozen: only z receives this gradient.
        mu, inv_var = mu.detach(), (-logvar.detach()).exp()
        positive = -0.5 * (z - mu) ** 2 * inv_var
        # E_j[(z_j - mu_i)^2] = E[z^2] - 2 mu_i E[z] + mu_i^2, computed per dimension in O(M).
        z_mean, z_sq_mean = z.mean(dim=0, keepdim=True), (z**2).mean(dim=0, keepdim=True)
        negative = -0.5 * (z_sq_mean - 2 * mu * z_mean + mu**2) * inv_var
        estimate = (positive - negative).mean()
        return dict(estimate=estimate, q_nll=q_nll)
