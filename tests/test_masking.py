import pytest
import torch

from mimae.models.masking import check_mask_config, make_masks


@pytest.mark.parametrize("num_views", [2, 4])
def test_orthogonal_views_disjoint_and_cover(num_views):
    ratio = 1.0 - 1.0 / num_views
    ids_keep, mask = make_masks(3, 64, num_views, ratio, "orthogonal")
    assert ids_keep.shape == (3, num_views, 64 // num_views)
    for b in range(3):
        seen = torch.cat(list(ids_keep[b]))
        assert seen.numel() == 64
        assert torch.equal(seen.sort().values, torch.arange(64))
    # Every patch is visible in exactly one view.
    assert torch.equal((1 - mask).sum(dim=1), torch.ones(3, 64))


def test_mask_matches_ids_keep():
    ids_keep, mask = make_masks(2, 49, 4, 0.75, "orthogonal")
    for b in range(2):
        for v in range(4):
            visible = (mask[b, v] == 0).nonzero().flatten()
            assert torch.equal(visible, ids_keep[b, v])


def test_independent_views_may_overlap():
    torch.manual_seed(0)
    ids_keep, mask = make_masks(8, 16, 4, 0.5, "independent")
    assert ids_keep.shape == (8, 4, 8)
    assert torch.equal(mask.sum(dim=-1), torch.full((8, 4), 8.0))
    overlaps = (1 - mask).sum(dim=1).max()
    assert overlaps > 1  # with 4 views of half the grid some patch repeats


def test_non_square_grid_counts():
    # A 224 x 320 image with patch 16 has a 14 x 20 grid: 280 patches, 70 kept at 0.75.
    ids_keep, mask = make_masks(1, 14 * 20, 1, 0.75)
    assert ids_keep.shape == (1, 1, 70)
    assert mask.sum().item() == 210


def test_cls_token_never_counted():
    # 256 patch tokens (the cls token is not part of the mask): 64 kept, 192 masked.
    ids_keep, mask = make_masks(2, 256, 1, 0.75)
    assert ids_keep.shape[-1] == 64
    assert mask.shape[-1] == 256
    assert mask.sum(dim=-1).tolist() == [[192.0], [192.0]]
    assert ids_keep.max() < 256


def test_orthogonal_views_that_do_not_fit_rejected():
    with pytest.raises(ValueError, match="mask_ratio >= 0.7500"):
        check_mask_config(196, 4, 0.6, "orthogonal")
    with pytest.raises(ValueError, match="unknown mask strategy"):
        check_mask_config(196, 4, 0.75, "blocks")
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        check_mask_config(196, 1, 1.0, "orthogonal")
