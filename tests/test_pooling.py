"""Retrieval poolings (MAC, SPoC, GeM, R-MAC) against direct reference computations, and masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vggfeat.pooling import gem, global_pool, mac, pool_map, rmac, rmac_by_size, rmac_regions, spoc
from vggfeat.whitening import PCAWhitening


def _map(channels=5, height=7, width=9, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(channels, height, width, generator=generator, dtype=torch.float64))


def test_mac_spoc_gem_match_direct_loops():
    x = _map()
    values = x.numpy()
    for c in range(x.shape[0]):
        cells = [values[c, i, j] for i in range(x.shape[1]) for j in range(x.shape[2])]
        assert mac(x)[c].item() == pytest.approx(max(cells))
        assert spoc(x)[c].item() == pytest.approx(sum(cells) / len(cells))
        powered = [max(v, 1e-6) ** 3 for v in cells]
        assert gem(x, 3.0)[c].item() == pytest.approx((sum(powered) / len(powered)) ** (1 / 3))


def test_gem_spans_spoc_to_mac():
    x = _map() + 0.1  # strictly positive, so the clamp plays no part
    np.testing.assert_allclose(gem(x, 1.0), spoc(x), rtol=1e-12)
    np.testing.assert_allclose(gem(x, 500.0), mac(x), rtol=0.01)
    assert (gem(x, 2.0) <= gem(x, 4.0) + 1e-12).all()  # power means grow with p


def test_rmac_regions_square_map_is_the_classic_grid():
    regions = rmac_regions(10, 10, 3)
    sides = [r[2] for r in regions]
    # Level 1: the whole map; level 2: 2x2 regions of floor(2*10/3) = 6; level 3: 3x3 of 5.
    assert sides == [10] + [6] * 4 + [5] * 9
    assert regions[0] == (0, 0, 10, 10)
    assert {(t, l) for t, l, *_ in regions[1:5]} == {(0, 0), (0, 4), (4, 0), (4, 4)}


@pytest.mark.parametrize("height,width", [(30, 40), (40, 30), (24, 64), (7, 9), (1, 5), (3, 3)])
def test_rmac_regions_cover_the_map_with_about_40_percent_overlap(height, width):
    regions = rmac_regions(height, width, 3)
    short, long_ = min(height, width), max(height, width)
    for top, left, h, w in regions:
        assert h == w and 0 <= top and 0 <= left and top + h <= height and left + w <= width
    level1 = [r for r in regions if r[2] == short]
    assert min(r[0] for r in level1) == 0 and min(r[1] for r in level1) == 0
    assert max(r[0] + r[2] for r in level1) == height and max(r[1] + r[3] for r in level1) == width
    if long_ > short:
        # Along the long side, level 1 has as many regions (2..7) as make neighbours overlap by the
        # fraction of a region closest to 40 % (Tolias et al.).
        def overlap(n):
            return 1 - (long_ - short) / ((n - 1) * short)

        assert len(level1) == min(range(2, 8), key=lambda n: abs(overlap(n) - 0.4))


def test_rmac_is_the_normalised_sum_of_normalised_regional_maxima():
    x = _map(channels=6, height=12, width=17, seed=3)
    total = np.zeros(6)
    for top, left, h, w in rmac_regions(12, 17, 3):
        v = x[:, top : top + h, left : left + w].numpy().reshape(6, -1).max(axis=1)
        total += v / np.linalg.norm(v)
    np.testing.assert_allclose(rmac(x, 3).numpy(), total / np.linalg.norm(total), rtol=1e-10)
    assert rmac(x).norm().item() == pytest.approx(1.0)


def test_rmac_with_regional_whitening_applies_it_before_the_sum():
    x = _map(channels=4, height=6, width=6, seed=5)
    matrix = torch.tensor(np.random.default_rng(0).normal(size=(4, 3)))
    whitened = rmac(x, 3, whiten=lambda r: r @ matrix)
    total = np.zeros(3)
    for top, left, h, w in rmac_regions(6, 6, 3):
        v = x[:, top : top + h, left : left + w].numpy().reshape(4, -1).max(axis=1)
        u = (v / np.linalg.norm(v)) @ matrix.numpy()
        total += u / np.linalg.norm(u)
    assert whitened.shape == (3,)
    np.testing.assert_allclose(whitened.numpy(), total / np.linalg.norm(total), rtol=1e-10)


def test_a_fitted_whitening_whitens_rmac_regions_on_their_device_as_it_whitens_descriptors():
    """PCAWhitening.transform_tensor, R-MAC's regional whitening: the NumPy transform, but for the
    final L2 normalisation (which R-MAC makes after it), on the tensor's device and dtype."""
    descriptors = np.random.default_rng(1).normal(size=(40, 6)).astype(np.float32)
    whitening = PCAWhitening(dim=3).fit(descriptors)
    regions = torch.from_numpy(descriptors[:5])
    whitened = whitening.transform_tensor(regions)
    assert whitened.dtype == torch.float32 and whitened.shape == (5, 3)
    np.testing.assert_allclose(torch.nn.functional.normalize(whitened, dim=1).numpy(), whitening.transform(descriptors[:5]),
                               rtol=1e-5, atol=1e-6)
    pooled = rmac(_map(channels=6, height=8, width=8, seed=2).float(), 2, whiten=whitening.transform_tensor)
    assert pooled.shape == (3,) and pooled.norm().item() == pytest.approx(1.0, rel=1e-6)


def test_rmac_regions_break_overlap_ties_as_matlab_does():
    # On a 9x33 map, 5 and 6 level-1 regions overlap equally far from 40 % (1/3 and 7/15) in
    # floating point too; rmac_regions.m's min takes the first, the smaller count.
    assert [left for _, left, _, _ in rmac_regions(9, 33, 1)] == [0, 6, 12, 18, 24]
    assert [top for top, _, _, _ in rmac_regions(33, 9, 1)] == [0, 6, 12, 18, 24]


# Valid sizes as the network returns them (a tensor) or as the host knows them (array, list).
SIZES = [[5, 8], [9, 6], [9, 8]]


@pytest.mark.parametrize("as_given", [torch.tensor, np.array, list], ids=["tensor", "array", "list"])
@pytest.mark.parametrize("method", ["avg", "max", "mac", "spoc", "gem", "rmac"])
def test_batched_pooling_over_padded_maps_equals_each_map_alone(method, as_given):
    maps = [_map(4, 5, 8, seed=1), _map(4, 9, 6, seed=2), _map(4, 9, 8, seed=4)]
    batch = torch.zeros(3, 4, 9, 8, dtype=torch.float64)
    for slot, x in zip(batch, maps):
        slot[:, : x.shape[1], : x.shape[2]] = x + 0  # padding stays zero
    batch[0, :, 6:, :] = 50.0  # garbage in the padding must not leak into the first map's result
    together = pool_map(batch, as_given(SIZES), method)
    for i, x in enumerate(maps):
        alone = pool_map(x.unsqueeze(0), None, method)[0]
        np.testing.assert_allclose(together[i].numpy(), alone.numpy(), rtol=1e-10, atol=1e-12)


def test_pool_map_agrees_with_global_pool_for_the_paper_poolings():
    batch = torch.stack([_map(seed=s) for s in range(2)])
    for method in ("avg", "max"):
        np.testing.assert_array_equal(pool_map(batch, None, method), global_pool(batch, None, method))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_map(batch, None, "median")


def test_gem_and_rmac_of_zeros_are_finite():
    assert torch.isfinite(gem(torch.zeros(3, 4, 4), 3.0)).all()
    assert torch.equal(rmac(torch.zeros(2, 4, 4)), torch.zeros(2))  # no division by a zero norm


def test_rmac_of_maps_grouped_by_size_equals_each_map_alone():
    """The GPU's R-MAC (maps of one valid size pooled together) gives each map's own R-MAC."""
    maps = [_map(4, 5, 8, seed=1), _map(4, 9, 6, seed=2), _map(4, 5, 8, seed=3), _map(4, 9, 8, seed=4)]
    batch = torch.full((4, 4, 9, 8), 50.0, dtype=torch.float64)  # padding garbage must not leak
    for slot, x in zip(batch, maps):
        slot[:, : x.shape[1], : x.shape[2]] = x
    together = rmac_by_size(batch, [tuple(x.shape[1:]) for x in maps])
    for i, x in enumerate(maps):
        np.testing.assert_allclose(together[i].numpy(), rmac(x).numpy(), rtol=1e-12)
