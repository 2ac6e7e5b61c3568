"""Aggregate: the descriptors of an image's flips and scales become its one descriptor."""

from __future__ import annotations

from collections.abc import Sequence

import torch

AGGREGATIONS = ("mean", "stack")


def combine_flips(original: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """The paper averages the descriptors of an image and its horizontal flip."""
    return (original + flipped) / 2


def combine_scales(per_scale: Sequence[torch.Tensor], method: str = "mean") -> torch.Tensor:
    """[N, D] descriptors at each scale: ``mean`` gives [N, D], ``stack`` gives [N, D x scales].

    ``stack`` concatenates in the order the scales were given.
    """
    if method == "mean":
        return torch.stack(list(per_scale)).mean(dim=0)
    if method == "stack":
        return torch.cat(list(per_scale), dim=1)
    raise ValueError(f"unknown aggregation {method!r}; choose one of {', '.join(AGGREGATIONS)}")
