import math

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from mimae.models import CLUB, MAE, MIMAE, MINE, InfoNCE
from mimae.models.mae import masked_ids

TINY_ENCODER = dict(img_size=(32, 48), patch_size=8, embed_dim=32, depth=2, num_heads=4)
TINY_DECODER = dict(embed_dim=16, depth=1, num_heads=2)


def test_reconstruction_loss_matches_hand_computation():
    torch.manual_seed(0)
    model = MAE(encoder=TINY_ENCODER, decoder=TINY_DECODER, num_views=2, mask_ratio=0.5)
    imgs = torch.randn(2, 3, 32, 48)
    views = model.encode_views(imgs)
    loss, pred = model.reconstruction_loss(imgs, views, full_prediction=True)

    total, count = 0.0, 0
    for b in range(2):
        for v in range(2):
            for row in range(4):
                for col in range(6):
                    index = row * 6 + col
                    if views["mask"][b, v, index] == 0:
                        continue
                    pixels = imgs[b, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8].permute(1, 2, 0).reshape(-1)
                    mean = pixels.mean()
                    var = ((pixels - mean) ** 2).sum() / (pixels.numel() - 1)
                    target = (pixels - mean) / math.sqrt(var.item() + 1e-6)
                    total += ((pred[b, v, index] - target) ** 2).mean().item()
                    count += 1
    assert count == 2 * 2 * 12
    assert math.isclose(loss.item(), total / count, rel_tol=1e-5)


def test_masked_prediction_matches_full():
    models = (
        MAE(encoder=TINY_ENCODER, decoder=dict(TINY_DECODER, depth=2), num_views=2, mask_ratio=0.5),
        MAE(encoder=TINY_ENCODER, decoder=dict(TINY_DECODER, with_cp=True), num_views=1, mask_ratio=0.75),
        MAE(encoder=TINY_ENCODER, decoder=dict(TINY_DECODER, depth=0), num_views=1, mask_ratio=0.75),
        MIMAE(encoder=TINY_ENCODER, decoder=dict(TINY_DECODER, depth=2, with_cp=True), num_views=3,
              mask_ratio=0.75, mask_strategy="independent"),
    )
    for model in models:
        torch.manual_seed(0)
        imgs = torch.randn(2, 3, 32, 48)
        views = model.encode_views(imgs)
        results = []
        for full in (True, False):
            model.zero_grad()
            loss, pred = model.reconstruction_loss(imgs, views, full_prediction=full)
            loss.backward(retain_graph=True)
            grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
            results.append((loss, pred, grads))
        (loss_full, pred_full, grads_full), (loss_masked, pred_masked, grads_masked) = results
        ids = masked_ids(views["mask"], views["ids_keep"].shape[-1])
        assert pred_masked.shape == (2, model.num_views, ids.shape[-1], pred_full.shape[-1])
        index = ids.unsqueeze(-1).expand(-1, -1, -1, pred_full.shape[-1])
        torch.testing.assert_close(pred_masked, pred_full.gather(2, index), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loss_masked, loss_full, rtol=1e-5, atol=1e-7)
        assert grads_masked.keys() == grads_full.keys()
        for name in grads_full:
            torch.testing.assert_close(grads_masked[name], grads_full[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("with_cp", [False, True])
def test_decoder_equals_its_blocks_on_the_full_sequence(with_cp):
    """The first block runs the mask-token rows once for all samples. The prediction and
    every gradient equal those of the blocks applied to the whole (B, 1 + L, D) input."""
    from mimae.models.mae import MAEDecoder

    torch.manual_seed(0)
    decoder = MAEDecoder(encoder_dim=32, embed_dim=16, depth=2, num_heads=2, patch_size=8, grid_size=(4, 6),
                         with_cp=with_cp)
    latent = torch.randn(3, 1 + 5, 32, requires_grad=True)
    ids_keep = torch.stack([torch.randperm(24)[:5] for _ in range(3)])

    def reference() -> torch.Tensor:
        x = decoder.embed(latent)
        slots = torch.cat([ids_keep.new_zeros(3, 1), ids_keep + 1], dim=1)
        full = decoder.mask_token.expand(3, 25, -1).scatter(1, slots[..., None].expand(-1, -1, 16), x)
        full = full + decoder.pos_embed
        for block in decoder.blocks:
            full = block(full)
        return decoder.pred(decoder.norm(full)[:, 1:])

    results = []
    for run in (lambda: decoder(latent, ids_keep, (4, 6)), reference):
        out = run()
        params = [p for p in decoder.parameters() if p.requires_grad]  # not the fixed position table
        grads = torch.autograd.grad(out.square().sum(), [latent, *params], allow_unused=True)
        results.append((out, grads))
    (out, grads), (expected, expected_grads) = results
    assert out.shape == (3, 24, 8 * 8 * 3)
    flops = []
    for run in (lambda: decoder(latent, ids_keep, (4, 6)), reference):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run()
        flops.append(counter.get_total_flops())
    # The first qkv projection (16 -> 48) runs on 25 shared rows and 3 x 6 own rows, not on 3 x 25.
    assert flops[1] - flops[0] == 2 * (3 * 25 - 25 - 3 * 6) * 16 * 48
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ids, message", [
    ([[5, 5, 9]], r"repeat an id in row 0 \(\[5, 5, 9\]\)"),
    ([[5, 24, 9]], r"range from 5 to 24, outside the 4x6 grid's \[0, 24\)"),
    ([[-1, 3, 9]], r"range from -1 to 9"),
])
def test_decoder_rejects_bad_keep_ids(ids, message):
    from mimae.models.mae import MAEDecoder

    decoder = MAEDecoder(encoder_dim=32, embed_dim=16, depth=2, num_heads=2, patch_size=8, grid_size=(4, 6))
    with pytest.raises(ValueError, match=message):
        decoder(torch.randn(1, 4, 32), torch.tensor(ids), (4, 6))


def test_checkpoint_with_frozen_embedding(monkeypatch):
    """With a frozen embedding and a detached latent only the mask token needs a gradient.
    Every block is still checkpointed."""
    from mimae.models import layers
    from mimae.models.mae import MAEDecoder

    calls = []
    original = layers.checkpoint

    def counting(function, *args, **kwargs):
        calls.append(function)
        return original(function, *args, **kwargs)

    monkeypatch.setattr(layers, "checkpoint", counting)
    decoder = MAEDecoder(encoder_dim=32, embed_dim=16, depth=2, num_heads=2, patch_size=8, grid_size=(4, 6),
                         with_cp=True)
    decoder.embed.requires_grad_(False)
    out = decoder(torch.randn(2, 4, 32), torch.tensor([[1, 7, 20], [0, 3, 23]]), (4, 6))
    out.sum().backward()
    assert len(calls) == 2
    assert decoder.mask_token.grad is not None


def test_masked_ids_ascending_per_view():
    mask = torch.tensor([[[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]]])
    assert masked_ids(mask[:, :1], 1).tolist() == [[[0, 2, 3]]]
    assert masked_ids(mask[:, 1:], 2).tolist() == [[[1, 2]]]


def test_infonce_matches_hand_computation():
    nce = InfoNCE(in_dim=2, temperature=0.5)
    nce.head = nn.Identity()
    # Two images, two views each; latents already unit length.
    z = torch.tensor([[[1.0, 0.0], [0.8, 0.6]], [[0.0, 1.0], [0.96, 0.28]]])  # (B, N, C)
    out = nce(z)

    def ce(anchor, candidates, positive):
        logits = [sum(a * c for a, c in zip(anchor, cand)) / 0.5 for cand in candidates]
        return -logits[positive] + math.log(sum(math.exp(x) for x in logits))

    terms = []
    for i, j in [(0, 1), (1, 0)]:
        for b in range(2):
            candidates = [z[c, j].tolist() for c in range(2)]
            terms.append(ce(z[b, i].tolist(), candidates, b))
    assert math.isclose(out["loss"].item(), sum(terms) / len(terms), rel_tol=1e-6)
    # Of the four anchors only (image 0, view 1) scores its own image highest.
    assert math.isclose(out["log"]["infonce_acc"].item(), 0.25)


def _held_out_club_estimate(make_z, steps=300):
    """Fit q on one sample and return the CLUB estimate on a fresh sample."""
    mixing = torch.randn(8, 8)
    club = CLUB(8, 8, hidden_dim=64)
    optimizer = torch.optim.Adam(club.parameters(), lr=3e-3)
    for _ in range(steps):
        x = torch.randn(256, 8)
        optimizer.zero_grad()
        club(x, make_z(x, mixing))["q_nll"].backward()
        optimizer.step()
    x = torch.randn(1024, 8)
    return club(x, make_z(x, mixing))["estimate"].item()


def test_club_larger_on_correlated_data():
    torch.manual_seed(0)
    correlated = _held_out_club_estimate(lambda x, w: x @ w * 0.5 + 0.1 * torch.randn(x.shape[0], 8))
    independent = _held_out_club_estimate(lambda x, w: torch.randn(x.shape[0], 8))
    assert correlated > 1.0
    assert abs(independent) < 0.2
    assert correlated > independent + 1.0


def test_club_gradients_separate():
    torch.manual_seed(0)
    club = CLUB(4, 4, hidden_dim=8)
    x = torch.randn(16, 4)
    z = torch.randn(16, 4, requires_grad=True)
    out = club(x, z)
    out["estimate"].backward(retain_graph=True)
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in club.parameters())
    z.grad = None
    out["q_nll"].backward()
    assert z.grad is None
    assert all(p.grad is not None for p in club.parameters())


def test_mimae_loss_terms_and_gradient_paths():
    torch.manual_seed(0)
    model = MIMAE(encoder=TINY_ENCODER, decoder=TINY_DECODER,
                  mi_max=dict(type="InfoNCE", hidden_dim=16, proj_dim=8),
                  mi_min=dict(type="CLUB", hidden_dim=16))
    losses = model.loss(torch.randn(4, 3, 32, 48))
    assert set(losses) == {"loss_rec", "loss_mi_max", "loss_mi_min", "loss_q",
                           "infonce", "infonce_acc", "club_estimate"}
    assert all(torch.isfinite(v) for v in losses.values())
    # loss_q trains only q: no encoder or InfoNCE gradient.
    losses["loss_q"].backward(retain_graph=True)
    assert model.encoder.blocks[0].attn.qkv.weight.grad is None
    assert model.mi_min.mu[0].weight.grad is not None
    model.zero_grad(set_to_none=True)
    # The CLUB estimate reaches the encoder blocks but neither q nor the patch embedding.
    losses["loss_mi_min"].backward(retain_graph=True)
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.mi_min.mu[0].weight.grad is None
    assert model.decoder.pred.weight.grad is None
    model.zero_grad(set_to_none=True)
    losses["loss_mi_max"].backward()
    assert model.mi_max.head.fc1.weight.grad is not None
    assert model.mi_min.mu[0].weight.grad is None


def test_control_has_no_mi_terms():
    model = MIMAE(encoder=TINY_ENCODER, decoder=TINY_DECODER, mi_max=None, mi_min=None)
    losses = model.loss(torch.randn(2, 3, 32, 48))
    assert set(losses) == {"loss_rec"}


def test_infonce_one_way_pairs():
    nce = InfoNCE(in_dim=2, temperature=0.5, symmetric=False)
    nce.head = nn.Identity()
    z = torch.nn.functional.normalize(torch.randn(4, 2, 2), dim=-1)
    # With two views one-way keeps only the pair (0, 1): view-0 anchors against view-1 images.
    logits = z[:, 0] @ z[:, 1].t() / 0.5
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    assert torch.isclose(nce(z)["loss"], expected)


def test_mine_separates_dependent_views():
    torch.manual_seed(0)
    shared = torch.randn(64, 1, 8)
    dependent = shared + 0.05 * torch.randn(64, 2, 8)
    independent = torch.randn(64, 2, 8)
    estimates = {}
    for name, data in (("dependent", dependent), ("independent", independent)):
        mine = MINE(in_dim=8, hidden_dim=32, proj_dim=16, critic_dim=32)
        optimizer = torch.optim.Adam(mine.parameters(), lr=1e-3)
        for _ in range(300):
            optimizer.zero_grad()
            mine(data)["loss"].backward()
            optimizer.step()
        mine.eval()
        estimates[name] = mine(data)["log"]["mine_estimate"].item()
    assert estimates["dependent"] > 1.0
    assert estimates["dependent"] > estimates["independent"] + 0.5


def test_mimae_with_mine_logs_estimate():
    model = MIMAE(encoder=TINY_ENCODER, decoder=TINY_DECODER,
                  mi_max=dict(type="MINE", hidden_dim=16, proj_dim=8, critic_dim=8), mi_min=None)
    losses = model.loss(torch.randn(4, 3, 32, 48))
    assert set(losses) == {"loss_rec", "loss_mi_max", "mine_estimate"}
    losses["loss_mi_max"].backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_mask_ratio_without_masked_patches_raises():
    from mimae.registry import MODELS

    model = MODELS.build(dict(type="MAE", mask_ratio=0.0,
                              encoder=dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2),
                              decoder=dict(embed_dim=16, depth=1, num_heads=2)))
    with pytest.raises(ValueError, match="mask_ratio 0.0 masks none of the 16 patches"):
        model.loss(torch.randn(2, 3, 32, 32))
