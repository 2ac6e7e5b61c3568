"""Pool: a feature map becomes one vector per image, over each image's valid area only."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .network import valid_mask
from .resize import to_device

POOLINGS = ("avg", "max")

# Each image's valid (height, width) in a padded batch of maps, [B, 2]: a tensor on the maps' device
# (as the network returns it) or host-side values. R-MAC needs them on the host to lay out its
# regions; host-side sizes spare the GPU synchronisation that reading a device tensor costs.
Sizes = torch.Tensor | np.ndarray | Sequence[Sequence[int]]


def global_pool(feature_map: torch.Tensor, sizes: Sizes | None, method: str = "avg") -> torch.Tensor:
    """Pool [B, C, H, W] to [B, C] over the top-left (height, width) of each map given by ``sizes``.

    ``avg`` is the paper's spatial average of the dense fc7 map; ``max`` takes the largest response.
    ``sizes`` None means the whole map is valid for every image.
    """
    if method not in POOLINGS:
        raise ValueError(f"unknown pooling {method!r}; choose one of {', '.join(POOLINGS)}")
    if method == "avg":
        return _masked_mean(feature_map, sizes)
    if sizes is None:
        return feature_map.amax(dim=(2, 3))
    mask = _valid(feature_map, _on_device(sizes, feature_map.device))
    return feature_map.masked_fill(~mask, float("-inf")).amax(dim=(2, 3))


def _masked_mean(feature_map: torch.Tensor, sizes: Sizes | None) -> torch.Tensor:
    """Mean of [B, C, H, W] over each map's valid area: [B, C]."""
    if sizes is None:
        return feature_map.mean(dim=(2, 3))
    sizes = _on_device(sizes, feature_map.device)
    total = feature_map.masked_fill(~_valid(feature_map, sizes), 0).sum(dim=(2, 3))
    return total / (sizes[:, 0] * sizes[:, 1]).unsqueeze(1).to(total.dtype)


def _valid(feature_map: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] boolean mask of each map's valid area."""
    return valid_mask(sizes, feature_map.shape[-2:], torch.bool)


def _on_device(sizes: Sizes, device: torch.device) -> torch.Tensor:
    if isinstance(sizes, torch.Tensor):
        return sizes
    # A pinned, non-blocking copy: the host does not wait for the GPU.
    return to_device(np.asarray(sizes, dtype=np.int64).reshape(-1, 2), device)


def _on_host(sizes: Sizes) -> list[tuple[int, int]]:
    if isinstance(sizes, torch.Tensor):
        sizes = sizes.tolist()  # from a GPU: waits until the batch's maps are computed
    return [(int(height), int(width)) for height, width in sizes]


# --------------------------------------------------------------------------- retrieval poolings
#
# The off-the-shelf retrieval recipes for VGG16's post-ReLU conv5_3 (Razavian et al. 2016; Babenko &
# Lempitsky 2015; Tolias et al. 2016; Radenović et al. 2018). Each is a function of one map
# [C, H, W] -> [C]; :func:`pool_map` applies one to each image of a padded batch over its valid area.
# MAC is ``max`` above and SPoC is ``avg``: the same numbers, so they keep those names in files.

RETRIEVAL_POOLINGS = ("gem", "rmac")
ALIASES = {"mac": "max", "spoc": "avg"}  # the retrieval literature's names for the same poolings
GEM_P = 3.0  # Radenović et al.'s initial (and common off-the-shelf) power
RMAC_LEVELS = 3
RMAC_OVERLAP = 0.4
_EPS = 1e-6


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of each channel of a map [C, H, W]."""
    return x.amax(dim=(-2, -1))


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooled (here: averaged) channels of a map [C, H, W]; averaging keeps sizes comparable."""
    return x.mean(dim=(-2, -1))


def gem(x: torch.Tensor, p: float = GEM_P) -> torch.Tensor:
    """Generalised mean (mean of x^p)^(1/p) of each channel of a map [C, H, W].

    p = 1 is SPoC, p -> inf tends to MAC. Activations are clamped to a small positive value first,
    as Radenović et al. do, so that a fractional power of a zero (after ReLU) stays finite.
    """
    return x.clamp(min=_EPS).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def rmac_regions(height: int, width: int, levels: int = RMAC_LEVELS) -> list[tuple[int, int, int, int]]:
    """Square regions (top, left, side, side) of Tolias et al.'s R-MAC on a ``height`` x ``width`` map.

    A port of their ``rmac_regions.m``: at level l = 1..L the side is floor(2 min(H, W) / (l + 1)),
    l regions along the short dimension and l + extra along the long one, the extra number (0..6)
    chosen so that neighbouring regions overlap as close to 40 % as possible. Level 1 of a square
    map is the whole map; a square gives 1 + 4 + 9 = 14 regions at L = 3.
    """
    if height < 1 or width < 1:
        raise ValueError(f"an empty {height}x{width} map has no regions")
    side = min(height, width)
    extra_h = extra_w = 0
    if height != width:
        extra = _level1_long_regions(side, max(height, width)) - 1
        extra_h, extra_w = (0, extra) if height < width else (extra, 0)
    regions = []
    for level in range(1, levels + 1):
        size = 2 * side // (level + 1)
        if size == 0:
            continue
        half = size // 2 - 1  # Tolias et al. place starts at floor(wl2 + k b) - wl2 with this offset
        tops = _starts(height, size, level + extra_h, half)
        lefts = _starts(width, size, level + extra_w, half)
        regions += [(top, left, size, size) for top in tops for left in lefts]
    return regions


def _level1_long_regions(side: int, long_side: int) -> int:
    """How many side x side regions (2..7) along the long side overlap closest to RMAC_OVERLAP.

    rmac_regions.m's overlap of neighbours (side^2 - side x step) / side^2 for each count; ties go
    to the smaller count, as MATLAB's ``min`` gives the first.
    """

    def overlap_error(count: int) -> float:
        step = (long_side - side) / (count - 1)
        return abs((side**2 - side * step) / side**2 - RMAC_OVERLAP)

    return min(range(2, 8), key=overlap_error)


def _starts(extent: int, size: int, count: int, half: int) -> list[int]:
    step = (extent - size) / (count - 1) if count > 1 else 0.0
    return [int(math.floor(half + k * step)) - half for k in range(count)]


def rmac(
    x: torch.Tensor,
    levels: int = RMAC_LEVELS,
    whiten: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """R-MAC of a map [C, H, W] (Tolias et al. 2016): the sum of its regions' L2-normalised MACs, L2-normalised.

    ``whiten`` (optional) maps regional vectors [R, C] to whitened ones [R, D] (e.g. a fitted
    :class:`vggfeat.whitening.PCAWhitening`'s ``transform_tensor``); they are L2-normalised again
    before the sum, as in the paper. Without it the result has C dimensions.
    """
    return rmac_batch(x.unsqueeze(0), levels, whiten)[0]


def rmac_batch(
    maps: torch.Tensor,
    levels: int = RMAC_LEVELS,
    whiten: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """:func:`rmac` of each of ``maps`` [B, C, H, W], maps of one size.

    Maps of one size share their regions, so each region's MAC is taken over the whole batch at
    once: one small kernel per region, not one per region and image.
    """
    batch, channels, height, width = maps.shape
    regional = torch.stack([maps[:, :, top : top + h, left : left + w].amax(dim=(-2, -1))
                            for top, left, h, w in rmac_regions(height, width, levels)], dim=1)  # [B, R, C]
    regional = F.normalize(regional, dim=2, eps=_EPS)
    if whiten is not None:
        whitened = whiten(regional.reshape(-1, channels))  # [B * R, D]
        regional = F.normalize(whitened, dim=1, eps=_EPS).view(batch, regional.shape[1], -1)
    return F.normalize(regional.sum(dim=1), dim=1, eps=_EPS)


def rmac_by_size(feature_map: torch.Tensor, valid: Sequence[tuple[int, int]], levels: int = RMAC_LEVELS) -> torch.Tensor:
    """R-MAC of each map [B, C, H, W] over its ``valid`` (height, width), the maps of one valid
    size pooled together (:func:`rmac_batch`)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(valid):
        groups.setdefault(tuple(size), []).append(i)
    pooled = feature_map.new_empty(feature_map.shape[:2])
    for (height, width), members in groups.items():
        rows = to_device(np.array(members), feature_map.device)
        pooled[rows] = rmac_batch(feature_map[rows, :, :height, :width], levels)
    return pooled


def pool_map(
    feature_map: torch.Tensor, sizes: Sizes | None, method: str, p: float = GEM_P, levels: int = RMAC_LEVELS
) -> torch.Tensor:
    """Pool [B, C, H, W] to [B, C] with any pooling (``avg``, ``max``, ``gem``, ``rmac``) over valid areas.

    ``sizes`` [B, 2] is each map's valid (height, width), None when every map fills the batch.
    ``gem`` is computed on the whole batch with the padding masked out. ``rmac`` plans each valid
    size's region grid on the host (on a GPU the maps of one size are pooled together); given
    ``sizes`` as a device tensor, the host first waits for the batch (host-side sizes avoid that).
    """
    method = ALIASES.get(method, method)
    if method in POOLINGS:
        return global_pool(feature_map, sizes, method)
    if method == "gem":
        return _masked_mean(feature_map.clamp(min=_EPS).pow(p), sizes).pow(1.0 / p)
    if method == "rmac":
        valid = [tuple(feature_map.shape[-2:])] * len(feature_map) if sizes is None else _on_host(sizes)
        if feature_map.is_cuda:  # a kernel per region, not per region and image
            return rmac_by_size(feature_map, valid, levels)
        # On the CPU one map at a time is faster (1.1-1.6x on 2 cores, benchmarks/bench_pooling.py).
        return torch.stack([rmac(x[:, :h, :w], levels) for x, (h, w) in zip(feature_map, valid)])
    raise ValueError(f"unknown pooling {method!r}; choose one of {', '.join(POOLINGS + RETRIEVAL_POOLINGS)}")
