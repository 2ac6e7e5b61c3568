"""Shared fixtures. Networks are built once per session: random VGG16 initialisation takes ~1 s."""

import pytest

from vggfeat import load_network


@pytest.fixture(scope="session")
def random_vgg16():
    """torchvision's VGG16 with seeded random weights, made dense (seed 0)."""
    return load_network("vgg16", "random", seed=0)
