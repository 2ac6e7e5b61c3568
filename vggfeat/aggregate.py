"""Aggregate: the descriptors of an image's flips and scales become its one descriptor."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .pooling import GEM_P

AGGREGATIONS = ("mean", "stack", "gem")


def combine_flips(original: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """The paper averages the descriptors of an image and its horizontal flip."""
    return (original + flipped) / 2


def combine_scales(per_scale: Sequence[torch.Tensor], method: str = "mean", p: float = GEM_P) -> torch.Tensor:
    """[N, D] descriptors at each scale: ``mean`` gives [N, D], ``stack`` gives [N, D x scales].

    ``stack`` concatenates in the order the scales were given. ``gem`` is the power mean
    (mean of x^p)^(1/p) over scales, as Radenović et al. combine multi-scale GeM descriptors; it
    is meant for non-negative descriptors (pooled post-ReLU maps), negatives count as zero.
    """
    if method == "mean":
        return torch.stack(list(per_scale)).mean(dim=0)
    if method == "gem":
        return torch.stack(list(per_scale)).clamp(min=0).pow(p).mean(dim=0).pow(1.0 / p)
    if method == "stack":
        return torch.cat(list(per_scale), dim=1)
    raise ValueError(f"unknown aggregation {method!r}; choose one of {', '.join(AGGREGATIONS)}")
