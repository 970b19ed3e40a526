import math

import pytest
import torch

from mimae.models import VisionTransformer, patchify, unpatchify
from mimae.models.pos_embed import resize_abs_pos_embed, resize_rel_pos, sincos_2d


def test_sincos_hand_values_non_square():
    table = sincos_2d(8, (2, 3), num_prefix_tokens=1)
    assert table.shape == (1, 1 + 6, 8)
    assert torch.count_nonzero(table[0, 0]) == 0
    # Token at row 1, column 2 (index 1 + 1 * 3 + 2). Columns use channels 0-3, rows 4-7;
    # with 4 channels per axis the frequencies are 1 and 1/100.
    token = table[0, 1 + 5]
    expected = [math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02),
                math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]
    assert torch.allclose(token, torch.tensor(expected), atol=1e-6)


def test_encoder_regenerates_table_for_new_grid():
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    assert vit.pos_embed.shape == (1, 1 + 16, 16)
    table = vit.pos_embed_for((3, 5))
    assert torch.equal(table, sincos_2d(16, (3, 5), 1))
    out = vit(torch.randn(2, 3, 24, 40))
    assert out.shape == (2, 1 + 15, 16)


def test_patchify_round_trip_non_square():
    imgs = torch.randn(2, 3, 224, 320)
    patches = patchify(imgs, 16)
    assert patches.shape == (2, 14 * 20, 16 * 16 * 3)
    assert torch.equal(unpatchify(patches, 16, (14, 20)), imgs)
    # Patch (row 1, col 2) holds pixel block [16:32, 32:48] in (row, col, channel) order.
    block = imgs[0, :, 16:32, 32:48].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, 1 * 20 + 2], block)


def test_resize_abs_pos_embed_keeps_prefix():
    table = torch.randn(1, 1 + 14 * 14, 8)
    same = resize_abs_pos_embed(table, (14, 14), (14, 14), 1)
    assert torch.equal(same, table)
    out = resize_abs_pos_embed(table, (14, 14), (4, 6), 1)
    assert out.shape == (1, 1 + 24, 8)
    assert torch.equal(out[:, 0], table[:, 0])
    dropped = resize_abs_pos_embed(table, (14, 14), (4, 6), 1, keep_prefix=False)
    assert dropped.shape == (1, 24, 8)
    with pytest.raises(ValueError, match="expected 1 prefix"):
        resize_abs_pos_embed(table, (13, 14), (4, 6), 1)


def test_resize_rel_pos_linear():
    table = torch.arange(27, dtype=torch.float32).reshape(27, 1)
    resized = resize_rel_pos(table, 63)
    assert resized.shape == (63, 1)
    assert torch.all(resized[1:] >= resized[:-1])  # a monotone ramp stays monotone
