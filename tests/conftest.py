"""Shared fixtures. Networks are built once per session: random VGG16 initialisation takes ~1 s."""

import pytest

from imagefiles import write_rgb
from runhelpers import reusing_network
from vggfeat import load_network
from vggfeat.weights import load_vgg


@pytest.fixture(scope="session")
def random_vgg16():
    """torchvision's VGG16 with seeded random weights, made dense (seed 0)."""
    return load_network("vgg16", "random", seed=0)


@pytest.fixture
def cached_network(random_vgg16):
    """The CLI's ``--weights random --seed 0`` VGG16 is ``random_vgg16``, in this process (a module
    uses it with ``pytestmark = pytest.mark.usefixtures("cached_network")``)."""
    with reusing_network(random_vgg16):
        yield


@pytest.fixture(scope="session")
def reference_vgg16():
    """torchvision's VGG16 (nn.Linear classifier) with the same seeded weights as ``random_vgg16``."""
    vgg, _ = load_vgg("vgg16", "random", 0)
    return vgg


@pytest.fixture(scope="session")
def image_224(tmp_path_factory):
    """A 224x224 PNG: at Q=224 it is one window of the dense network, no resize."""
    path = tmp_path_factory.mktemp("net") / "square.png"
    write_rgb(path, 224, 224, seed=11)
    return path
