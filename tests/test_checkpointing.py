"""Activation checkpointing (``with_cp``) in the pretraining encoder and decoder."""
from __future__ import annotations

import pytest
import torch

from mimae.models import MIMAE


def tiny_mimae(with_cp: bool) -> MIMAE:
    torch.manual_seed(0)
    return MIMAE(encoder=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, with_cp=with_cp),
                 decoder=dict(embed_dim=16, depth=2, num_heads=2, with_cp=with_cp), num_views=2, mask_ratio=0.5,
                 mi_max=dict(type="InfoNCE", hidden_dim=32, proj_dim=16), mi_min=dict(type="CLUB", hidden_dim=16))


def loss_and_grads(model: MIMAE, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(1)  # the same masks for both models
    losses = model.loss(images)
    total = sum(value for key, value in losses.items() if "loss" in key)
    total.backward()
    return total.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def saved_bytes(model: MIMAE, images: torch.Tensor) -> int:
    """Return the bytes of the tensors that autograd saves for the backward pass of one loss."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.loss(images)
    return total


def test_checkpointing_keeps_loss_and_gradients() -> None:
    images = torch.randn(2, 3, 32, 32)
    plain_loss, plain_grads = loss_and_grads(tiny_mimae(False), images)
    cp_loss, cp_grads = loss_and_grads(tiny_mimae(True), images)
    assert torch.equal(cp_loss, plain_loss)
    assert set(cp_grads) == set(plain_grads)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(cp_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_checkpointing_saves_fewer_activations(part: str) -> None:
    images = torch.randn(2, 3, 32, 32)
    model = tiny_mimae(False)
    before = saved_bytes(model, images)
    getattr(model, part).with_cp = True
    after = saved_bytes(model, images)
    assert after < 0.8 * before, (part, before, after)


def test_checkpointing_with_compiled_attention(monkeypatch) -> None:
    """Under bf16 autocast with the compiled attention, whose one-time trial then runs inside
    a checkpointed block, checkpointing keeps the loss and the gradients."""
    from mimae.models import layers

    if not layers.compiled_attention_works():
        pytest.skip("torch.compile does not work on this machine")
    monkeypatch.setattr(layers.Attention, "cpu_autocast_kernel", "compiled")
    monkeypatch.setattr(layers, "_compiled_attention_status", None)
    images = torch.randn(2, 3, 32, 32)
    results = []
    for with_cp in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(loss_and_grads(tiny_mimae(with_cp), images))
    (cp_loss, cp_grads), (plain_loss, plain_grads) = results
    assert layers._compiled_attention_status is True
    assert torch.equal(cp_loss, plain_loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(cp_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
