"""Comparing against torchvision, the reference implementation: a tolerance and an input pipeline."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from vggfeat.resize import IMAGENET_MEAN, IMAGENET_STD


def assert_close(actual, expected, rel: float, what: str = "") -> None:
    """|actual - expected| <= rel * (largest |expected|): a tolerance relative to the values' scale."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = float(np.abs(expected).max())
    assert scale > 0, f"{what}: reference is all zeros, the comparison would prove nothing"
    error = float(np.abs(actual - expected).max())
    assert error <= rel * scale, f"{what}: max abs difference {error:.3g} > {rel} x scale {scale:.3g}"


def reference_input(path) -> torch.Tensor:
    """An image file as a [1, 3, H, W] input, by an independent torchvision pipeline (no resize)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    transform = v2.Compose(
        [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    return transform(image).unsqueeze(0)
