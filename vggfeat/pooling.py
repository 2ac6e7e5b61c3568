"""Pool: a feature map becomes one vector per image, over each image's valid area only."""

from __future__ import annotations

import torch

from .network import valid_mask

POOLINGS = ("avg", "max")


def global_pool(feature_map: torch.Tensor, sizes: torch.Tensor | None, method: str = "avg") -> torch.Tensor:
    """Pool [B, C, H, W] to [B, C] over the top-left (height, width) of each map given by ``sizes``.

    ``avg`` is the paper's spatial average of the dense fc7 map; ``max`` takes the largest response.
    ``sizes`` None means the whole map is valid for every image.
    """
    if method not in POOLINGS:
        raise ValueError(f"unknown pooling {method!r}; choose one of {', '.join(POOLINGS)}")
    if sizes is None:
        return feature_map.mean(dim=(2, 3)) if method == "avg" else feature_map.amax(dim=(2, 3))
    mask = valid_mask(sizes, feature_map.shape[-2:], torch.bool)
    if method == "avg":
        total = feature_map.masked_fill(~mask, 0).sum(dim=(2, 3))
        return total / (sizes[:, 0] * sizes[:, 1]).unsqueeze(1).to(total.dtype)
    return feature_map.masked_fill(~mask, float("-inf")).amax(dim=(2, 3))
