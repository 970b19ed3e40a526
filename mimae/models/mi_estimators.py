"""Mutual-information estimators used by MI-MAE.

* :class:`InfoNCE` is a lower bound on I(Z_i; Z_j) between the latents of two masked
  views of one image (maximized).
* :class:`MINE` is the Donsker-Varadhan lower bound on the same quantity with a learned
  critic (Belghazi et al., ICML 2018), the alternative MI-max estimator.
* :class:`CLUB` is the contrastive log-ratio upper bound of Cheng et al. (ICML 2020)
  on I(X; Z) between a view's input and its latent (minimized), with a Gaussian
  approximation network q(z | x).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..registry import MODELS
from .layers import Linear


class _GatherWithGradient(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns each rank the gradient of its own slice.

    The gradient of the gathered tensor is summed over ranks first, because every rank's
    loss depends on every slice.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.batch = tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.batch
        return grad[start:start + ctx.batch]


def gather_across_ranks(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Return ``tensor`` concatenated over all ranks and the offset of this rank's rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, 0
    return _GatherWithGradient.apply(tensor), dist.get_rank() * tensor.shape[0]


def global_moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``E[z]`` and ``E[z^2]`` ``(1, D)`` over the rows of every rank, with gradients."""
    sums = torch.cat([z.sum(dim=0, keepdim=True), (z**2).sum(dim=0, keepdim=True)], dim=0)  # (2, D)
    count = z.new_tensor(float(z.shape[0]))
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce

        sums = all_reduce(sums)
        count = all_reduce(count)
    moments = sums / count
    return moments[:1], moments[1:]


class ProjectionHead(nn.Module):
    """Two-layer MLP that maps a pooled latent to the space the InfoNCE critic compares."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 256) -> None:
        super().__init__()
        self.fc1 = Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_dim, out_dim)

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
        gather_negatives: in distributed training, score each anchor against the images of
            every rank, not only its own batch.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        proj_dim: int = 256,
        temperature: float = 0.2,
        symmetric: bool = True,
        gather_negatives: bool = True,
    ) -> None:
        super().__init__()
        self.gather_negatives = gather_negatives
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.head = ProjectionHead(in_dim, hidden_dim, proj_dim)
        self.temperature = temperature
        self.symmetric = symmetric

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute the loss from pooled latents ``(B, N, C)`` with N >= 2 views.

        Returns ``loss`` (mean cross-entropy over view pairs) and ``log`` with the raw loss
        ``infonce`` and ``infonce_acc``, the share of anchors whose positive scores highest.
        """
        batch, num_views, _ = pooled.shape
        if num_views < 2:
            raise ValueError("InfoNCE needs at least 2 views per image")
        projected = self.head(pooled)
        # Autocast is off here because it would run the einsum below as a bfloat16 batched
        # matmul and round the similarities. The logits and the loss stay in float32.
        with torch.autocast(device_type=projected.device.type, enabled=False):
            z = F.normalize(projected.float(), dim=-1)  # (B, N, d)
            candidates, offset = gather_across_ranks(z) if self.gather_negatives else (z, 0)
            z, candidates = z.transpose(0, 1), candidates.transpose(0, 1)  # (N, B, d), (N, B_all, d)
            pairs = view_pairs(num_views, self.symmetric, z.device)
            # (P, B, B_all): row b scores anchor b of view i against every image of view j.
            logits = torch.einsum("pbd,pcd->pbc", z[pairs[:, 0]], candidates[pairs[:, 1]]) / self.temperature
            logits = logits.reshape(-1, candidates.shape[1])
            target = (torch.arange(batch, device=z.device) + offset).repeat(pairs.shape[0])
            loss = F.cross_entropy(logits, target)
        accuracy = (logits.argmax(dim=1) == target).float().mean()
        return dict(loss=loss, log=dict(infonce=loss.detach(), infonce_acc=accuracy.detach()))


def view_pairs(num_views: int, symmetric: bool, device=None) -> torch.Tensor:
    """Return the ``(P, 2)`` index pairs (i, j), i != j, of the views (only i < j when one-way)."""
    pairs = [(i, j) for i in range(num_views) for j in range(num_views) if i != j and (symmetric or i < j)]
    return torch.tensor(pairs, device=device)


class _EMAGradient(torch.autograd.Function):
    """``log E[exp T]`` whose gradient divides by a moving average of ``E[exp T]`` instead of the batch mean.

    The batch estimate in the denominator biases MINE's gradient; the moving average is
    the correction proposed with MINE (Belghazi et al., 2018, section 3.2).
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, running_mean: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scores, running_mean)
        return torch.logsumexp(scores, dim=0) - math.log(scores.shape[0])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        scores, running_mean = ctx.saved_tensors
        grad = scores.exp() / (running_mean * scores.shape[0])
        return grad_output * grad, None


@MODELS.register_module()
class MINE(nn.Module):
    """Donsker-Varadhan bound ``E_joint[T] - log E_marginal[exp T]`` between pairs of views.

    The critic ``T`` is an MLP on the concatenated projected latents of two views. The
    marginal pairs take view ``j`` from another image of the batch (a fixed rotation by
    one). The loss is the negative bound, so minimizing it maximizes the estimate.

    Args:
        in_dim: width of the pooled latent.
        hidden_dim, proj_dim: projection head widths (shared by both views).
        critic_dim: hidden width of the critic.
        ema_decay: decay of the moving average of ``E[exp T]`` used in the gradient.
        symmetric: use both directions of each view pair.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, proj_dim: int = 256, critic_dim: int = 512,
                 ema_decay: float = 0.99, symmetric: bool = True) -> None:
        super().__init__()
        self.head = ProjectionHead(in_dim, hidden_dim, proj_dim)
        self.critic = nn.Sequential(Linear(2 * proj_dim, critic_dim), nn.GELU(), Linear(critic_dim, 1))
        self.ema_decay = ema_decay
        self.symmetric = symmetric
        self.register_buffer("running_exp_mean", torch.ones(()))

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute the loss from pooled latents ``(B, N, C)`` with B >= 2 and N >= 2."""
        batch, num_views, _ = pooled.shape
        if num_views < 2 or batch < 2:
            raise ValueError(f"MINE needs at least 2 views and 2 images, got {num_views} views of {batch} images")
        z = self.head(pooled).float()  # (B, N, d)
        pairs = view_pairs(num_views, self.symmetric, z.device)
        first, second = z[:, pairs[:, 0]], z[:, pairs[:, 1]]  # (B, P, d)
        # The critic may run in bfloat16 under autocast; its scores enter the bound in float32.
        joint = self.critic(torch.cat([first, second], dim=-1)).flatten().float()
        shuffled = second.roll(shifts=1, dims=0)
        marginal = self.critic(torch.cat([first, shuffled], dim=-1)).flatten().float()
        with torch.no_grad():
            batch_mean = marginal.exp().mean()
            if self.training:
                self.running_exp_mean.mul_(self.ema_decay).add_((1 - self.ema_decay) * batch_mean)
        log_mean_exp = _EMAGradient.apply(marginal, self.running_exp_mean.clamp_min(1e-6))
        estimate = joint.mean() - log_mean_exp
        return dict(loss=-estimate, log=dict(mine_estimate=estimate.detach()))


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
        self.mu = nn.Sequential(Linear(x_dim, hidden_dim), nn.GELU(), Linear(hidden_dim, z_dim))
        self.logvar = nn.Sequential(
            Linear(x_dim, hidden_dim), nn.GELU(), Linear(hidden_dim, z_dim), nn.Tanh()
        )

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute the CLUB terms for ``x`` ``(M, Dx)`` and ``z`` ``(M, Dz)``."""
        x, z = x.float(), z.float()
        # q's layers may run in bfloat16 under autocast; the likelihood terms use float32.
        mu, logvar = self.mu(x).float(), self.logvar(x).float()
        # Fit q on detached latents: only q's parameters receive this gradient.
        q_nll = 0.5 * (((z.detach() - mu) ** 2) / logvar.exp() + logvar).mean()
        # Score the encoder with q frozen: only z receives this gradient.
        mu, inv_var = mu.detach(), (-logvar.detach()).exp()
        positive = -0.5 * (z - mu) ** 2 * inv_var
        # E_j[(z_j - mu_i)^2] = E[z^2] - 2 mu_i E[z] + mu_i^2, computed per dimension in O(M).
        # Under DDP the moments cover the global batch, so j runs over the images of every rank.
        z_mean, z_sq_mean = global_moments(z)
        negative = -0.5 * (z_sq_mean - 2 * mu * z_mean + mu**2) * inv_var
        estimate = (positive - negative).mean()
        return dict(estimate=estimate, q_nll=q_nll)
