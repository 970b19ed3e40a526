"""MAE: masked autoencoder pretraining, with one or several masked views per image."""
from __future__ import annotations

import torch
import torch.nn as nn
from mmengine.model import BaseModel

from ..registry import MODELS, build_model
from .layers import Block, LayerNorm, Linear, check_patch_ids, checkpointed, run_blocks, scatter_rows
from .masking import make_masks
from .pos_embed import sincos_2d
from .vit import VisionTransformer, gather_tokens

MODELS.register_module(name="MAEViT", module=VisionTransformer)


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut ``(B, C, H, W)`` into ``(B, L, p * p * C)`` with pixels ordered (row, col, channel)."""
    batch, chans, height, width = imgs.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    x = imgs.reshape(batch, chans, grid_h, patch_size, grid_w, patch_size)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, p, C)
    return x.reshape(batch, grid_h * grid_w, patch_size * patch_size * chans)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Invert :func:`patchify`: ``(B, L, p * p * C)`` to ``(B, C, H, W)``."""
    batch, _, dim = patches.shape
    chans = dim // (patch_size * patch_size)
    grid_h, grid_w = grid_hw
    x = patches.reshape(batch, grid_h, grid_w, patch_size, patch_size, chans)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
    return x.reshape(batch, chans, grid_h * patch_size, grid_w * patch_size)


def masked_ids(mask: torch.Tensor, num_visible: int) -> torch.Tensor:
    """Return the indices ``(B, N, L - K)`` of the masked patches of ``mask`` ``(B, N, L)``, ascending.

    Every view masks ``L - num_visible`` patches, as :func:`make_masks` draws them.
    """
    # A stable descending sort puts the masked patches (1) first, each group in index order.
    order = mask.argsort(dim=-1, descending=True, stable=True)
    return order[..., : mask.shape[-1] - num_visible]


@MODELS.register_module()
class MAEDecoder(nn.Module):
    """Lightweight transformer that predicts the pixels of every patch from the visible latent.

    ``with_cp=True`` checkpoints the activations of each block and recomputes them in the
    backward pass. The decoder runs on all ``1 + L`` tokens, so at the MAE recipe sizes its
    activations are larger than the encoder's. Its first block normalizes and projects
    the mask-token rows, which are the same in every sample, once per batch. In the
    training loss its last block computes queries, projection and MLP for the masked
    patches only.
    """

    def __init__(
        self,
        encoder_dim: int = 768,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        in_chans: int = 3,
        grid_size: tuple[int, int] = (14, 14),
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.with_cp = with_cp
        self.grid_size = tuple(grid_size)
        self.embed = Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, self.grid_size, 1), requires_grad=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = LayerNorm(embed_dim)
        self.pred = Linear(embed_dim, patch_size * patch_size * in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(
        self,
        latent: torch.Tensor,
        ids_keep: torch.Tensor,
        grid_hw: tuple[int, int],
        ids_predict: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict ``(B, L, p * p * C)`` from ``latent`` ``(B, 1 + K, D)`` and ``ids_keep`` ``(B, K)``.

        With ``ids_predict`` ``(B, M)``, return the predictions ``(B, M, p * p * C)`` of
        those patches only. They equal the full prediction at ``ids_predict``. The last
        block then computes queries, projection and MLP for M tokens instead of 1 + L (its
        keys and values still come from all tokens), and the norm and prediction head run
        on M tokens.
        """
        x = self.embed(latent)
        batch, num_patches = x.shape[0], grid_hw[0] * grid_hw[1]
        # Each visible token fills the slot of its id, so a repeated id would overwrite another.
        check_patch_ids(ids_keep, batch, grid_hw, distinct=True)
        if tuple(grid_hw) == self.grid_size:
            pos_embed = self.pos_embed
        else:
            pos_embed = sincos_2d(self.embed_dim, grid_hw, 1).to(x.device)
        # The decoder input has 1 + L slots: the cls token in slot 0, each visible token in
        # slot 1 + its grid index, and the mask token in the others, each plus its position
        # embedding. It has the dtype of `x + pos_embed`, so under autocast the stream stays float32.
        dtype = torch.promote_types(x.dtype, pos_embed.dtype)
        slots = torch.cat([ids_keep.new_zeros(batch, 1), ids_keep + 1], dim=1)  # (B, 1 + K)
        masked = self.mask_token.to(dtype) + pos_embed  # (1, 1 + L, D): the same in every sample
        visible = x.to(dtype) + gather_tokens(pos_embed.expand(batch, -1, -1), slots)
        rows = None if ids_predict is None else ids_predict + 1  # slot 0 is the cls token
        blocks = self.blocks if rows is None else self.blocks[:-1]
        if len(blocks) == 0:
            x = scatter_rows(masked, slots, visible)
        else:
            # The mask-token slots are the same in every sample, so the first block's norm and
            # qkv projection run on them once instead of once per sample.
            first = blocks[0]
            if self.with_cp and torch.is_grad_enabled() and (visible.requires_grad or masked.requires_grad):
                x = checkpointed(first.forward_scattered, masked, slots, visible)
            else:
                x = first.forward_scattered(masked, slots, visible)
            x = run_blocks(blocks[1:], x, self.with_cp)
        if rows is None:
            return self.pred(self.norm(x)[:, 1:])
        if len(self.blocks) == 0:
            return self.pred(self.norm(gather_tokens(x, rows)))
        last = self.blocks[-1]
        if self.with_cp and x.requires_grad:
            x = checkpointed(last.forward_rows, x, rows)
        else:
            x = last.forward_rows(x, rows)
        return self.pred(self.norm(x))


@MODELS.register_module()
class MAE(BaseModel):
    """Masked autoencoder with ``num_views`` masked views of each image (1 for plain MAE).

    With ``num_views > 1`` and no mutual-information terms this is the "MAE with N
    orthogonal masks" control. All views go through the encoder and decoder as one
    batch of ``B * N``.

    Args:
        encoder: config of the ViT encoder (``MAEViT``).
        decoder: config of :class:`MAEDecoder`; encoder width, patch size and grid are filled in.
        mask_ratio: fraction of patches hidden in each view.
        num_views: masked views per image.
        mask_strategy: ``'orthogonal'`` (disjoint visible sets) or ``'independent'``.
        norm_pix_loss: normalize each target patch by its own mean and variance.
    """

    def __init__(
        self,
        encoder: dict,
        decoder: dict,
        mask_ratio: float = 0.75,
        num_views: int = 1,
        mask_strategy: str = "orthogonal",
        norm_pix_loss: bool = True,
        data_preprocessor: dict | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.encoder: VisionTransformer = build_model({"type": "MAEViT", **encoder})
        decoder = {"type": "MAEDecoder", **decoder}
        decoder.setdefault("encoder_dim", self.encoder.embed_dim)
        decoder.setdefault("patch_size", self.encoder.patch_size)
        decoder.setdefault("grid_size", self.encoder.grid_size)
        self.decoder: MAEDecoder = build_model(decoder)
        self.mask_ratio = mask_ratio
        self.num_views = num_views
        self.mask_strategy = mask_strategy
        self.norm_pix_loss = norm_pix_loss
        num_patches = self.encoder.grid_size[0] * self.encoder.grid_size[1]
        make_masks(1, num_patches, num_views, mask_ratio, mask_strategy)  # validates the settings

    def reconstruction_target(self, imgs: torch.Tensor) -> torch.Tensor:
        """Return the per-patch pixel target ``(B, L, p * p * C)``."""
        target = patchify(imgs, self.encoder.patch_size)
        if self.norm_pix_loss:
            var, mean = torch.var_mean(target, dim=-1, keepdim=True)  # unbiased variance, one pass
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def encode_views(self, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mask ``imgs`` into ``num_views`` views and encode them as one batch.

        Returns a dict with ``latent`` ``(B * N, 1 + K, C)``, ``visible_tokens``
        ``(B * N, K, C)`` (patch embeddings with position, before the blocks),
        ``ids_keep`` ``(B, N, K)``, ``mask`` ``(B, N, L)`` and ``grid``.
        """
        batch, patch = imgs.shape[0], self.encoder.patch_size
        num_patches = (imgs.shape[-2] // patch) * (imgs.shape[-1] // patch)
        ids_keep, mask = make_masks(
            batch, num_patches, self.num_views, self.mask_ratio, self.mask_strategy, imgs.device
        )
        keep = ids_keep.shape[-1]
        ids = ids_keep.reshape(batch, -1)
        if ids.shape[1] < num_patches:
            # Fewer visible ids, over all views, than patches (plain MAE: a quarter): embed those only.
            visible, grid = self.encoder.embed_patches(imgs, ids)
        else:
            tokens, grid = self.encoder.embed_patches(imgs)
            visible = gather_tokens(tokens, ids)
        visible = visible.reshape(batch * self.num_views, keep, visible.shape[-1])
        latent = self.encoder.forward_tokens(visible)
        return dict(latent=latent, visible_tokens=visible, ids_keep=ids_keep, mask=mask, grid=grid)

    def reconstruction_loss(
        self, imgs: torch.Tensor, views: dict, full_prediction: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the masked-patch MSE over all views and the prediction.

        The loss only reads the masked patches, so by default the decoder predicts those
        only, and the prediction is ``(B, N, M, P)`` in the order of
        :func:`masked_ids` ``(B, N, M)``. ``full_prediction=True`` returns ``(B, N, L, P)``
        for every patch, with the same loss.

        NOTE: the default path assumes that every view masks ``L - K`` patches, as
        :func:`make_masks` draws them. A hand-built ``mask`` with other counts needs
        ``full_prediction=True``.
        """
        batch = imgs.shape[0]
        ids_keep = views["ids_keep"].reshape(batch * self.num_views, -1)
        target = self.reconstruction_target(imgs).unsqueeze(1)  # broadcast over views, no copy
        mask = views["mask"]
        num_masked = mask.shape[-1] - ids_keep.shape[-1]
        if num_masked == 0:
            raise ValueError(f"mask_ratio {self.mask_ratio} masks none of the {mask.shape[-1]} patches, so there "
                             "is nothing to reconstruct; use a ratio that hides at least one patch")
        if full_prediction:
            pred = self.decoder(views["latent"], ids_keep, views["grid"])
            pred = pred.reshape(batch, self.num_views, *pred.shape[1:])
            per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, N, L)
            return (per_patch * mask).sum() / mask.sum(), pred
        ids_masked = masked_ids(mask, ids_keep.shape[-1])
        pred = self.decoder(views["latent"], ids_keep, views["grid"], ids_masked.reshape(ids_keep.shape[0], -1))
        pred = pred.reshape(batch, self.num_views, *pred.shape[1:])
        index = ids_masked.unsqueeze(-1).expand(-1, -1, -1, target.shape[-1])
        target = target.expand(-1, self.num_views, -1, -1).gather(2, index)  # (B, N, M, P)
        # Every view has the same number of masked patches, so the mean over all of them is
        # the masked-patch mean of the full prediction.
        return (pred.float() - target.float()).pow(2).mean(), pred

    def loss(self, inputs: torch.Tensor, data_samples=None) -> dict[str, torch.Tensor]:
        views = self.encode_views(inputs)
        loss_rec, _ = self.reconstruction_loss(inputs, views)
        return dict(loss_rec=loss_rec)

    @torch.no_grad()
    def reconstruct(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return predicted patches, masks and targets for visualization."""
        views = self.encode_views(inputs)
        _, pred = self.reconstruction_loss(inputs, views, full_prediction=True)
        return dict(pred=pred, mask=views["mask"], target=self.reconstruction_target(inputs))

    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = "tensor"):
        if mode == "loss":
            return self.loss(inputs, data_samples)
        if mode == "tensor":
            return self.encoder(inputs)
        if mode == "predict":
            return self.reconstruct(inputs)
        raise ValueError(f"invalid mode {mode!r}; expected 'loss', 'tensor' or 'predict'")
