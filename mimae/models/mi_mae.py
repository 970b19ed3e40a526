"""MI-MAE: MAE on N masked views plus mutual-information terms on the latent.

Loss: ``L = L_rec + lambda1 * L_max + lambda2 * L_min + lambda3 * L_q`` where
``L_max`` is the InfoNCE loss between the views of each image (maximizes their MI),
``L_min`` the CLUB estimate of I(X; Z) (minimized) and ``L_q`` the likelihood loss that
fits CLUB's approximation network. Which latent each term receives is configurable. The
defaults are inferred, because Huang et al. (ICLR 2025) do not publish them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import MODELS, build_model
from .mae import MAE

POOLINGS = ("cls", "mean")


@MODELS.register_module()
class MIMAE(MAE):
    """MI-MAE pretraining model.

    Args:
        num_views: masked views per image (N, default 4).
        pooling: latent summary fed to both estimators: ``'cls'`` token or ``'mean'``
            of the visible patch tokens.
        mi_max: config of the MI-max estimator, ``InfoNCE`` or ``MINE`` (``in_dim`` is
            filled in), or None to drop the term.
        mi_min: config of the CLUB estimator (``x_dim``/``z_dim`` filled in), or None.
        lambda_max, lambda_min, lambda_q: weights lambda1..lambda3.
        club_standardize: give CLUB the pooled latent after a parameter-free layer
            norm, so q receives unit-scale targets whatever the encoder's output scale.
        **kwargs: the arguments of :class:`MAE`.
    """

    def __init__(
        self,
        *,
        num_views: int = 4,
        pooling: str = "mean",
        mi_max: dict | None = None,
        mi_min: dict | None = None,
        lambda_max: float = 0.05,
        lambda_min: float = 0.01,
        lambda_q: float = 1.0,
        club_standardize: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(num_views=num_views, **kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
        if mi_max is not None and num_views < 2:
            raise ValueError("the MI-max term needs num_views >= 2; set num_views or mi_max=None")
        dim = self.encoder.embed_dim
        self.pooling = pooling
        self.lambda_max, self.lambda_min, self.lambda_q = lambda_max, lambda_min, lambda_q
        self.club_standardize = club_standardize
        self.mi_max = build_model({**mi_max, "in_dim": dim}) if mi_max is not None else None
        self.mi_min = build_model({**mi_min, "x_dim": dim, "z_dim": dim}) if mi_min is not None else None

    def pool(self, latent: torch.Tensor) -> torch.Tensor:
        """Summarize ``(M, 1 + K, C)`` into ``(M, C)``."""
        return latent[:, 0] if self.pooling == "cls" else latent[:, 1:].mean(dim=1)

    def loss(self, inputs: torch.Tensor, data_samples=None) -> dict[str, torch.Tensor]:
        views = self.encode_views(inputs)
        loss_rec, _ = self.reconstruction_loss(inputs, views)
        losses = dict(loss_rec=loss_rec)
        batch = inputs.shape[0]
        pooled = self.pool(views["latent"])  # (B * N, C)

        if self.mi_max is not None:
            mi_max = self.mi_max(pooled.reshape(batch, self.num_views, -1))
            losses["loss_mi_max"] = self.lambda_max * mi_max["loss"]
            losses.update(mi_max["log"])

        if self.mi_min is not None:
            # X is the view's input: the mean of its visible patch embeddings, detached so
            # that the upper bound cannot be lowered by collapsing the patch embedding.
            x = views["visible_tokens"].mean(dim=1).detach()
            z = F.layer_norm(pooled, pooled.shape[-1:]) if self.club_standardize else pooled
            club = self.mi_min(x, z)
            losses["loss_mi_min"] = self.lambda_min * club["estimate"]
            losses["loss_q"] = self.lambda_q * club["q_nll"]
            losses["club_estimate"] = club["estimate"].detach()
        return losses
